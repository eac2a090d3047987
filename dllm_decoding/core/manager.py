"""Plugin discovery: a factory for plugin managers and the registries built from them.

Built-in plugins are ordinary plugin modules listed in ``BUILTIN_PLUGINS`` and
registered exactly like third-party ones; third-party modules come from the entry-point group
``dllm_decoding`` unless automatic loading is switched off (``load_entrypoints=False`` or the
environment variable ``DLLM_DECODING_DISABLE_PLUGIN_AUTOLOAD=1``).

An installed plugin that fails (its import raises, it implements an unknown hook, its
registration raises or registers something invalid, a preset file it names is missing) is
isolated, as pip isolates a broken distribution: a :class:`PluginWarning` names it and the
error, ``dllm-decode plugins`` lists it, and everything else keeps working. One plugin is
switched off by its entry-point name: ``DLLM_DECODING_DISABLE_PLUGINS=name1,name2`` or
``make_plugin_manager(disable=[...])``. Built-in plugins and plugins passed explicitly
(``plugins=[...]``) are not isolated: their failures raise :class:`PluginError`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import pluggy

from . import hookspecs
from .components import HOOK_POINTS, Component
from .errors import ConfigError, PluginError, PluginWarning, did_you_mean

ENTRY_POINT_GROUP = "dllm_decoding"
AUTOLOAD_ENV = "DLLM_DECODING_DISABLE_PLUGIN_AUTOLOAD"
DISABLE_ENV = "DLLM_DECODING_DISABLE_PLUGINS"


class PluginFailure(NamedTuple):
    """An installed plugin that was skipped, and why."""

    plugin: str
    error: str


class DecodingPluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers which plugins came from entry points (those are
    isolated when they fail) and which of them failed to load."""

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        self.installed: set[str] = set()
        self.failures: list[PluginFailure] = []
        self.disabled: set[str] = set()


def _skip_message(failure: PluginFailure) -> str:
    return (f"dllm-decoding: plugin {failure.plugin!r} is broken and was skipped: {failure.error}. "
            f"Everything else still works; fix or uninstall its package, or switch it off with "
            f"{DISABLE_ENV}={failure.plugin}")


class PluginRegistry:
    """Components and strategy presets contributed by the plugins of one plugin manager."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.plugin_manager = pm
        self.components: dict[str, type[Component]] = {}
        self.component_origin: dict[str, str] = {}
        self.presets: dict[str, Path | Mapping[str, Any]] = {}
        self.preset_origin: dict[str, str] = {}
        #: installed plugins skipped because they failed (loading, registering), in order
        self.failures: list[PluginFailure] = list(getattr(pm, "failures", ()))
        installed = getattr(pm, "installed", set())
        skipped: set[str] = set()
        for hook, add in ((pm.hook.dllm_decoding_register_components, self._add_component),
                          (pm.hook.dllm_decoding_register_strategies, self._add_preset)):
            for impl in hook.get_hookimpls():  # one by one, so a failure names its plugin
                if impl.plugin_name in skipped:
                    continue
                try:
                    try:
                        impl.function(register=functools.partial(add, impl.plugin_name))
                    except PluginError:
                        raise
                    except Exception as exc:
                        raise PluginError(f"plugin {impl.plugin_name!r} raised in hook {hook.name!r}: "
                                          f"{type(exc).__name__}: {exc}") from exc
                except PluginError as exc:
                    if impl.plugin_name not in installed:
                        raise
                    skipped.add(impl.plugin_name)
                    self._drop(impl.plugin_name)
                    self.failures.append(PluginFailure(impl.plugin_name, str(exc)))
        for failure in self.failures:
            warnings.warn(_skip_message(failure), PluginWarning, stacklevel=3)

    def _drop(self, origin: str) -> None:
        """Forget everything a (failed) plugin registered."""
        for table, origins in ((self.components, self.component_origin), (self.presets, self.preset_origin)):
            for name in [n for n, o in origins.items() if o == origin]:
                del table[name], origins[name]

    def _add_component(self, origin: str, cls: type[Component]) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Component)):
            raise PluginError(f"plugin {origin!r} registered {cls!r}, which is not a Component subclass")
        name = getattr(cls, "name", None)
        point = getattr(cls, "hook_point", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {origin!r}: component {cls.__qualname__} has no `name`")
        if point not in HOOK_POINTS:
            raise PluginError(
                f"plugin {origin!r}: component {name!r} has hook_point={point!r}; "
                f"expected one of {', '.join(HOOK_POINTS)}"
            )
        if point != "observer" and not callable(getattr(cls, point, None)):
            raise PluginError(f"plugin {origin!r}: component {name!r} declares hook_point "
                              f"{point!r} but defines no `{point}` method")
        if name in self.components and self.components[name] is not cls:
            raise PluginError(f"component name {name!r} is registered twice: by plugin "
                              f"{self.component_origin[name]!r} and by plugin {origin!r}")
        self.components[name] = cls
        self.component_origin[name] = origin

    def _add_preset(self, origin: str, name: str, source: Path | str | Mapping[str, Any]) -> None:
        if name in self.presets:
            raise PluginError(f"strategy preset {name!r} is registered twice: by plugin "
                              f"{self.preset_origin[name]!r} and by plugin {origin!r}")
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {origin!r} registered a strategy preset named {name!r}; names are "
                              f"non-empty strings")
        source = source if isinstance(source, Mapping) or hasattr(source, "read_bytes") else Path(source)
        if not isinstance(source, Mapping) and hasattr(source, "is_file") and not source.is_file():
            raise PluginError(f"plugin {origin!r}: strategy preset {name!r} names the file {str(source)!r}, "
                              f"which does not exist: the plugin's package does not ship it (list the TOML "
                              f"files as package data; see docs/writing-a-plugin.md)")
        self.presets[name] = source
        self.preset_origin[name] = origin

    def component(self, name: str, hook_point: str, *, where: str) -> type[Component]:
        """Look a component up by name, checking it implements ``hook_point``."""
        cls = self.components.get(name)
        candidates = [n for n, c in self.components.items() if c.hook_point == hook_point]
        if cls is None:
            raise ConfigError(f"{where}: unknown {hook_point} component {name!r}; "
                              f"{did_you_mean(name, candidates)}")
        if cls.hook_point != hook_point:
            raise ConfigError(f"{where}: component {name!r} implements {cls.hook_point!r}, not "
                              f"{hook_point!r}; {did_you_mean(name, candidates)}")
        return cls


#: the built-in plugin modules (the package built from the top-level plugins/ folder), loaded
#: by name like pytest's default plugins: the core imports no concrete plugin
BUILTIN_PLUGINS = ("scoring", "selection", "credit", "remasking", "observers", "presets",
                   "klass", "prophet", "dus", "pc_sampler", "saber", "remdm", "editing", "drafting",
                   "uniform_noise", "wino", "local_leap", "slow_fast", "credit_noise")


def _builtin_modules() -> list[ModuleType]:
    return [importlib.import_module(f"dllm_decoding.plugins.{mod}") for mod in BUILTIN_PLUGINS]


def disabled_plugins() -> set[str]:
    """Entry-point names switched off by ``DLLM_DECODING_DISABLE_PLUGINS=name1,name2``."""
    return {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}


def _load_entry_points(pm: DecodingPluginManager) -> None:
    """Register every installed plugin of the entry-point group, each on its own: one that fails
    to import or to validate is recorded in ``pm.failures`` and skipped."""
    try:
        entry_points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:  # a corrupt installed distribution's metadata
        pm.failures.append(PluginFailure(f"<entry points of group {ENTRY_POINT_GROUP!r}>",
                                         f"reading them failed: {type(exc).__name__}: {exc}"))
        return
    for ep in entry_points:
        if ep.name in pm.disabled:
            pm.set_blocked(ep.name)
        if pm.is_blocked(ep.name) or pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            pm.failures.append(PluginFailure(ep.name, f"importing {ep.value!r} raised "
                                                      f"{type(exc).__name__}: {exc}"))
            continue
        try:
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # a hook implementation whose arguments the spec does not have
            pm.failures.append(PluginFailure(ep.name, f"invalid hook implementation: {exc}"))
            continue
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            pm.unregister(name=ep.name)
            pm.failures.append(PluginFailure(ep.name, f"implements an unknown hook: {exc}"))
            continue
        pm.installed.add(ep.name)


def make_plugin_manager(*, load_entrypoints: bool | None = None, plugins: list[object] = (),
                        disable: Iterable[str] = ()) -> pluggy.PluginManager:
    """Create a plugin manager with the hook specs, the built-in plugins, the third-party
    plugins of the ``dllm_decoding`` entry-point group (unless switched off; those named in
    ``disable`` or ``DLLM_DECODING_DISABLE_PLUGINS`` left out) and ``plugins``.
    """
    if isinstance(disable, str):
        disable = disable.split(",")
    pm = DecodingPluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for module in _builtin_modules():
        pm.register(module, name=f"builtin:{module.__name__.rsplit('.', 1)[-1]}")
    pm.disabled = disabled_plugins() | {name.strip() for name in disable if name.strip()}
    if load_entrypoints is None:
        load_entrypoints = os.environ.get(AUTOLOAD_ENV, "") in ("", "0")
    if load_entrypoints:
        _load_entry_points(pm)
    for plugin in plugins:
        # a readable name for errors (pluggy would use the object's id); the id only on a clash
        name = getattr(plugin, "__name__", None) or type(plugin).__qualname__
        pm.register(plugin, name=name if pm.get_plugin(name) is None else f"{name}@{id(plugin):x}")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}") from exc
    return pm


@functools.lru_cache(maxsize=1)
def _default_registry() -> PluginRegistry:
    return PluginRegistry(make_plugin_manager())


def get_registry(pm: pluggy.PluginManager | None = None) -> PluginRegistry:
    """The registry of ``pm``, or of the default plugin manager (built once, on first use)."""
    return _default_registry() if pm is None else PluginRegistry(pm)


def reset_default_registry() -> None:
    """Forget the default registry, e.g. after installing a plugin in the same process."""
    _default_registry.cache_clear()
