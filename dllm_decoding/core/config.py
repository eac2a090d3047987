"""Strategies are configuration: pydantic models loaded from presets, TOML, dicts or objects.

A strategy names one component per hook point (a list, in order, for ``fuse``) plus the
generation options. Options are overridden with dotted keys, the same in Python and on the
command line: ``select.threshold=0.8``, ``fuse.credit.alpha=0.5``, ``steps=64``. An option whose
meaning is None (``block_length``, ``select.near_max``, ``select.k``, ``remask``) is set back to
None with the string ``none``, the same in ``--set`` and TOML (``near_max = "none"``).
"""

from __future__ import annotations

import copy
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .arguments import _human as _bytes, check_overrides
from .components import Component, FiniteFloat, StrictInt, explain_validation_error, validate_options
from .errors import ConfigError, did_you_mean

#: the largest gen_length, block_length, steps and max_steps_per_block a strategy takes: one
#: forward's logits are (batch, prompt + gen_length, vocab) floats, so 2**20 answer positions
#: already need 4 MiB per vocabulary entry and row (0.5 TB for a 126k-token vocabulary)
MAX_LENGTH = 1 << 20

#: the spelling of None in ``--set`` values and TOML files (TOML has no null)
NONE_SPELLING = "none"


def is_none_spelling(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == NONE_SPELLING


def admits_none(annotation: Any) -> bool:
    """Whether a field annotation accepts None (``float | None``, ``Optional[...]``, ...)."""
    if annotation is None or annotation is NoneType:
        return True
    origin = get_origin(annotation)
    if origin is Annotated:
        return admits_none(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return any(admits_none(arg) for arg in get_args(annotation))
    return False
from .manager import PluginRegistry, get_registry


class ComponentConfig(BaseModel):
    """``use`` names the component; every other key is one of its options."""

    model_config = ConfigDict(extra="allow", frozen=True)
    use: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @classmethod
    def of(cls, value: Any) -> Any:
        """Accept a component instance or a bare name as shorthand."""
        if isinstance(value, Component):
            return {"use": value.name, **value.options.model_dump()}
        if isinstance(value, str):
            return {"use": value}
        return value


class Strategy(BaseModel):
    """A complete decoding strategy: components per hook point plus generation options.

    Constructing one with an invalid value raises :class:`ConfigError`, as ``load_strategy``
    does."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_explain(exc).replace("invalid option: ", "invalid strategy: ")) from None

    description: str = ""
    fuse: list[ComponentConfig] = Field(default_factory=list)
    score: ComponentConfig = ComponentConfig(use="confidence")
    select: ComponentConfig
    edit: ComponentConfig | None = None
    remask: ComponentConfig | None = None
    renoise: ComponentConfig | None = None
    extend: ComponentConfig | None = None
    early_commit: ComponentConfig | None = None
    draft: ComponentConfig | None = None
    observers: list[ComponentConfig] = Field(default_factory=list)
    gen_length: StrictInt = Field(64, gt=0, description="answer positions to generate")
    block_length: StrictInt | None = Field(None, gt=0, description="semi-AR block size; default: gen_length")
    steps: StrictInt | None = Field(None, gt=0, description="schedule steps over all blocks; default: gen_length")
    temperature: FiniteFloat = Field(0.0, ge=0.0, le=1000.0, description="0 = greedy argmax (at most 1000: "
                                     "sampling is already uniform long before)")
    max_steps_per_block: StrictInt | None = Field(
        None, gt=0, description="remasking, editing and renoising strategies: steps per block after which "
                                "remask and edit stop and a renoising block ends (default 2 x block_length)")

    @model_validator(mode="before")
    @classmethod
    def _none_spelling(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            data = {k: None if k in _NULLABLE_FIELDS and is_none_spelling(v) else v for k, v in data.items()}
        return data

    @field_validator("gen_length", "block_length", "steps", "max_steps_per_block")
    @classmethod
    def _machine_sized(cls, value: int | None, info: Any) -> int | None:
        if value is not None and value > MAX_LENGTH:
            need = value * 4
            raise ValueError(
                f"more than any machine decodes, at most {MAX_LENGTH}"
                + (f" (one forward's logits would need {_bytes(need)} per row and vocabulary entry)"
                   if info.field_name in ("gen_length", "block_length") else ""))
        return value

    @field_validator("fuse", "observers", mode="before")
    @classmethod
    def _component_list(cls, value: Any) -> Any:
        if isinstance(value, (ComponentConfig, Component, str, Mapping)):
            value = [value]
        return [ComponentConfig.of(v) for v in value] if isinstance(value, (list, tuple)) else value

    @field_validator("score", "select", "edit", "remask", "renoise", "draft", "extend", "early_commit",
                     mode="before")
    @classmethod
    def _component(cls, value: Any) -> Any:
        return ComponentConfig.of(value)

    @model_validator(mode="after")
    def _lengths(self) -> Strategy:
        block = self.effective_block_length
        if self.gen_length % block:
            raise ValueError(
                f"block_length={block} does not divide gen_length={self.gen_length}; choose a "
                f"block_length among the divisors of gen_length "
                f"({', '.join(str(d) for d in _divisors(self.gen_length))})")
        blocks = self.gen_length // block
        if self.effective_steps % blocks:
            raise ValueError(
                f"steps={self.effective_steps} is not a multiple of the number of blocks "
                f"({blocks} = gen_length {self.gen_length} / block_length {block}); steps are "
                f"split evenly over blocks")
        return self

    @property
    def effective_block_length(self) -> int:
        return self.block_length or self.gen_length

    @property
    def effective_steps(self) -> int:
        return self.steps or self.gen_length

    @property
    def steps_per_block(self) -> int:
        return self.effective_steps // (self.gen_length // self.effective_block_length)

    def components(self) -> list[tuple[str, ComponentConfig]]:
        """(where, config) for every component, ``where`` being its dotted config path."""
        out = [(f"fuse.{c.use}", c) for c in self.fuse]
        out += [("score", self.score), ("select", self.select)]
        if self.edit is not None:
            out.append(("edit", self.edit))
        if self.remask is not None:
            out.append(("remask", self.remask))
        if self.renoise is not None:
            out.append(("renoise", self.renoise))
        if self.draft is not None:
            out.append(("draft", self.draft))
        if self.extend is not None:
            out.append(("extend", self.extend))
        if self.early_commit is not None:
            out.append(("early_commit", self.early_commit))
        out += [(f"observers.{c.use}", c) for c in self.observers]
        return out

    def instantiate(self, registry: PluginRegistry | None = None) -> list[Component]:
        """Validate every component's options and build the component instances."""
        registry = registry or get_registry()
        instances = []
        for where, cfg in self.components():
            point = where.split(".")[0]
            point = "observer" if point == "observers" else point
            cls = registry.component(cfg.use, point, where=where)
            instances.append(cls(_validate_options(cls, cfg, where)))
        return instances

    def resolved(self, registry: PluginRegistry | None = None) -> dict[str, Any]:
        """The strategy as a plain dict with every component option filled in (defaults too)."""
        data = self.model_dump(exclude_none=False)
        comps = self.instantiate(registry)
        for (where, _), comp in zip(self.components(), comps):
            full = {"use": comp.name, **comp.options.model_dump()}
            head = where.split(".")[0]
            if head in ("fuse", "observers"):
                idx = [c.use for c in getattr(self, head)].index(comp.name)
                data[head][idx] = full
            else:
                data[head] = full
        data["block_length"] = self.effective_block_length
        data["steps"] = self.effective_steps
        return data


#: hook points a strategy names one component for (addressed as ``point.option`` in overrides)
_SINGLE_POINTS = ("score", "select", "edit", "remask", "renoise", "draft", "extend", "early_commit")
_NULLABLE_FIELDS = ("block_length", "steps", "max_steps_per_block", "edit", "remask", "renoise", "draft",
                    "extend", "early_commit")


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


def _validate_options(cls: type[Component], cfg: ComponentConfig, where: str) -> BaseModel:
    fields = cls.Options.model_fields
    options = dict(cfg.options)
    for key, value in options.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown option {key!r} for component {cls.name!r}; "
                              f"{did_you_mean(key, fields)}")
        if is_none_spelling(value) and admits_none(fields[key].annotation):
            options[key] = None  # `--set select.near_max=none`, `near_max = "none"` in TOML
        else:
            _check_number(where, key, value, fields[key].annotation, cls.name)
    return validate_options(cls.Options, options, prefix=f"{where}.", component=cls.name)


_explain = explain_validation_error


def _base_types(annotation: Any) -> set[Any]:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _base_types(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return set().union(*(_base_types(a) for a in get_args(annotation)))
    return {annotation}


def _check_number(where: str, key: str, value: Any, annotation: Any, component: str) -> None:
    """Numbers are numbers, whatever an Options model declares: a boolean, a string or a NaN /
    infinity for an int or float option is refused even where pydantic's lax mode would take it
    (True as 1, "0.8" as 0.8), so every plugin's options are strict and finite."""
    types = _base_types(annotation)
    if not types or not types <= {int, float, NoneType}:
        return  # not a plain number field (a Literal, a str, a bool...): its own model decides
    kind = "a valid number" if float in types else "a valid integer"
    problem = None
    if isinstance(value, bool):
        problem = f"Input should be {kind}, not a boolean"
    elif isinstance(value, (str, bytes)):
        problem = f"Input should be {kind}, not a string" + (
            " (None is spelled none only where the option takes None)" if is_none_spelling(value) else "")
    elif isinstance(value, float) and not math.isfinite(value):
        problem = "Input should be a finite number"
    if problem:
        raise ConfigError(f"invalid option of component {component!r}: {where}.{key}: {problem} (got {value!r})")


# --------------------------------------------------------------------------- loading


def parse_override_value(text: str) -> Any:
    """Parse a command-line value as a TOML value (numbers, booleans, lists); else a string.
    ``none`` stays the string "none", which validation reads as None where a field takes None."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["select.threshold=0.8", ...]`` -> ``{"select.threshold": 0.8}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value "
                              f"(e.g. select.threshold=0.8)")
        out[key.strip()] = parse_override_value(value.strip())
    return out


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of the raw strategy dict with dotted-key overrides applied."""
    check_overrides(overrides)
    data = copy.deepcopy(data)
    fields = Strategy.model_fields
    for key, value in overrides.items():
        parts = key.split(".")
        head = parts[0]
        if head not in fields:
            raise ConfigError(f"override {key!r}: unknown strategy field {head!r}; "
                              f"{did_you_mean(head, fields)}")
        if len(parts) == 1:
            data[head] = value
            continue
        if head in ("fuse", "observers"):
            entries = [ComponentConfig.of(e) for e in data.get(head) or []]
            entries = [dict(e) if isinstance(e, Mapping) else e.model_dump() for e in entries]
            if len(parts) != 3:
                raise ConfigError(f"override {key!r}: use {head}.<component>.<option>, "
                                  f"e.g. {head}.credit.alpha=0.5")
            name, option = parts[1], parts[2]
            if name.isdigit() and int(name) < len(entries):
                matches = [int(name)]
            else:
                matches = [i for i, e in enumerate(entries) if e.get("use") == name]
            if len(matches) != 1:
                present = [e.get("use", "?") for e in entries]
                what = "appears more than once" if matches else "is not in this strategy"
                raise ConfigError(f"override {key!r}: {head} component {name!r} {what}; "
                                  f"{head} components here: {present or '(none)'} "
                                  f"(address them by position, e.g. {head}.0.{option})")
            entries[matches[0]][option] = value
            data[head] = entries
            continue
        if head not in _SINGLE_POINTS or len(parts) != 2:
            raise ConfigError(f"override {key!r}: {head!r} takes no sub-keys"
                              if head not in _SINGLE_POINTS
                              else f"override {key!r}: use {head}.<option>")
        entry = ComponentConfig.of(data.get(head))
        if entry is None:
            if parts[1] != "use":
                raise ConfigError(f"override {key!r}: this strategy has no {head} component; "
                                  f"set {head}.use=<name> first")
            entry = {}
        entry = dict(entry) if isinstance(entry, Mapping) else entry.model_dump()
        if parts[1] == "use" and entry.get("use") != value:
            entry = {}  # a different component: its options start from its own defaults
        entry[parts[1]] = value
        data[head] = entry
    return data


def _read_toml(path: Any, origin: str | None = None) -> dict[str, Any]:
    """A strategy file's table; ``origin``: the plugin that registered it as a preset."""
    of = f" (preset of plugin {origin!r})" if origin else ""
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        fix = (": the plugin's package does not ship it (package data: see docs/writing-a-plugin.md), "
               "reinstall or fix the plugin, or disable it with DLLM_DECODING_DISABLE_PLUGINS"
               if origin else "")
        raise ConfigError(f"strategy file {str(path)!r}{of} does not exist{fix}") from None
    except IsADirectoryError:
        raise ConfigError(f"strategy file {str(path)!r}{of} is a directory, not a .toml file") from None
    except PermissionError:
        raise ConfigError(f"strategy file {str(path)!r}{of} cannot be read (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"strategy file {str(path)!r}{of} is not UTF-8 text (byte {exc.start}: "
                          f"{exc.reason}); TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"strategy file {str(path)!r}{of} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"strategy file {str(path)!r}{of} cannot be read: {exc.strerror or exc}") from None


def strategy_source(spec: str | Path, registry: PluginRegistry) -> dict[str, Any]:
    """Raw dict of a preset name or a TOML path."""
    if isinstance(spec, Path) or str(spec).endswith(".toml") or "/" in str(spec):
        return _read_toml(Path(spec))
    if spec not in registry.presets:
        raise ConfigError(f"unknown strategy {spec!r}; {did_you_mean(str(spec), registry.presets)}"
                          f" (or pass a path to a .toml file)")
    source = registry.presets[spec]
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    # installed preset files do not change while the process runs: parse each once (~0.25 ms
    # per generate call otherwise); callers get their own copy to apply overrides to
    key = str(source)
    if key not in _PRESET_CACHE:
        _PRESET_CACHE[key] = _read_toml(source, registry.preset_origin.get(spec))
    return copy.deepcopy(_PRESET_CACHE[key])


_PRESET_CACHE: dict[str, dict[str, Any]] = {}


def load_strategy(spec: str | Path | Mapping[str, Any] | Strategy,
                  overrides: Mapping[str, Any] | None = None,
                  registry: PluginRegistry | None = None) -> Strategy:
    """Load a strategy from a preset name, a TOML path, a dict or a :class:`Strategy`, apply
    dotted overrides, and validate everything, component options included."""
    registry = registry or get_registry()
    if isinstance(spec, Strategy):
        data = spec.model_dump(exclude_unset=True)
    elif isinstance(spec, Mapping):
        data = dict(spec)
    elif isinstance(spec, (str, Path)):
        data = strategy_source(spec, registry)
    else:
        raise ConfigError(f"strategy must be a preset name, a .toml path, a dict or a Strategy, "
                          f"not {type(spec).__name__}")
    data = apply_overrides(data, overrides or {})
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError(f"invalid strategy: key {bad_keys[0]!r} is not a field name; fields: "
                          f"{', '.join(Strategy.model_fields)}")
    strategy = Strategy(**data)  # ConfigError naming every invalid field
    strategy.instantiate(registry)  # validates component names and options now, not mid-decode
    return strategy


def list_strategies(registry: PluginRegistry | None = None) -> list[str]:
    """Names of all registered strategy presets (built-in and from plugins)."""
    return sorted((registry or get_registry()).presets)
