"""Plugin discovery: a factory for plugin managers and the registries built from them.

Built-in plugins are ordinary plugin modules listed in ``BUILTIN_PLUGINS`` and
registered exactly like third-party ones; third-party modules come from the entry-point group
``dllm_decoding`` unless automatic loading is switched off (``load_entrypoints=False`` or the
environment variable ``DLLM_DECODING_DISABLE_PLUGIN_AUTOLOAD=1``).
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .components import HOOK_POINTS, Component
from .errors import ConfigError, PluginError, did_you_mean

ENTRY_POINT_GROUP = "dllm_decoding"
AUTOLOAD_ENV = "DLLM_DECODING_DISABLE_PLUGIN_AUTOLOAD"


class PluginRegistry:
    """Components and strategy presets contributed by the plugins of one plugin manager."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.plugin_manager = pm
        self.components: dict[str, type[Component]] = {}
        self.component_origin: dict[str, str] = {}
        self.presets: dict[str, Path | Mapping[str, Any]] = {}
        self.preset_origin: dict[str, str] = {}
        for hook, add in ((pm.hook.dllm_decoding_register_components, self._add_component),
                          (pm.hook.dllm_decoding_register_strategies, self._add_preset)):
            for impl in hook.get_hookimpls():  # one by one, so a failure names its plugin
                try:
                    impl.function(register=functools.partial(add, impl.plugin_name))
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(f"plugin {impl.plugin_name!r} raised in hook {hook.name!r}: "
                                      f"{type(exc).__name__}: {exc}") from exc

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
        self.presets[name] = source if isinstance(source, Mapping) or hasattr(source, "read_bytes") else Path(source)
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
BUILTIN_PLUGINS = ("scoring", "selection", "credit", "remasking", "observers", "presets")


def _builtin_modules() -> list[ModuleType]:
    return [importlib.import_module(f"dllm_decoding.plugins.{mod}") for mod in BUILTIN_PLUGINS]


def make_plugin_manager(*, load_entrypoints: bool | None = None,
                        plugins: list[object] = ()) -> pluggy.PluginManager:
    """Create a plugin manager with the hook specs, the built-in plugins, the third-party
    plugins of the ``dllm_decoding`` entry-point group (unless switched off) and ``plugins``.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for module in _builtin_modules():
        pm.register(module, name=f"builtin:{module.__name__.rsplit('.', 1)[-1]}")
    if load_entrypoints is None:
        load_entrypoints = os.environ.get(AUTOLOAD_ENV, "") in ("", "0")
    if load_entrypoints:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # a broken third-party package must name itself
            raise PluginError(f"loading entry points of group {ENTRY_POINT_GROUP!r} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
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
