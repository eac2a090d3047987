"""Components: named, option-carrying implementations of one hook point.

A plugin module registers component classes through the ``dllm_decoding_register_components``
hook. A strategy names components by ``name``; the core instantiates each with its validated
``Options`` and registers the instances with a per-strategy plugin manager.
"""

from __future__ import annotations

import numbers
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Strict, ValidationError

from .errors import ConfigError

HookPoint = Literal["fuse", "score", "select", "edit", "remask", "renoise", "draft", "extend", "early_commit",
                    "observer"]
HOOK_POINTS: tuple[str, ...] = ("fuse", "score", "select", "edit", "remask", "renoise", "draft", "extend",
                                 "early_commit", "observer")


# --------------------------------------------------------------------------- strict option types
# pydantic's lax mode takes True for 1, "0.8" for 0.8 and inf for a float: a typo then decodes
# silently. Options use these instead; the CLI parses `--set` values into typed values first
# (parse_override_value), so the command line keeps working.


def _no_bool(value: Any, what: str) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"Input should be {what}, not a boolean")
    return value


def _as_int(value: Any) -> Any:
    value = _no_bool(value, "a valid integer")
    if isinstance(value, numbers.Integral):  # numpy / torch integer scalars
        return int(value)
    return value


def _as_float(value: Any) -> Any:
    value = _no_bool(value, "a valid number")
    if isinstance(value, numbers.Real) and not isinstance(value, float):  # ints, numpy floats
        return float(value)
    return value


#: an int that refuses booleans, floats and strings (numpy / torch integer scalars are taken)
StrictInt = Annotated[int, BeforeValidator(_as_int), Strict()]
#: a finite float that refuses booleans, strings, NaN and infinities (ints are taken)
FiniteFloat = Annotated[float, BeforeValidator(_as_float), Strict(), AllowInfNan(False)]


def explain_validation_error(exc: ValidationError, prefix: str = "", component: str | None = None) -> str:
    """One line naming every invalid field, what is wrong with it and the value given."""
    parts = []
    for err in exc.errors():
        loc = prefix + ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        got = f" (got {err['input']!r})" if err["loc"] and not isinstance(err.get("input"), dict) else ""
        parts.append(f"{loc.rstrip('.')}: {msg}{got}" if loc.rstrip(".") else msg)
    where = f" of component {component!r}" if component else ""
    return f"invalid option{where}: " + "; ".join(parts)


def validate_options(model: type[BaseModel], values: dict[str, Any], *, prefix: str = "",
                     component: str | None = None) -> BaseModel:
    """``model(**values)``, every validation failure one :class:`ConfigError` naming the fields
    (after ``prefix``) and the component."""
    try:
        return model(**values)
    except ValidationError as exc:
        raise ConfigError(explain_validation_error(exc, prefix, component)) from None
    except ConfigError as exc:
        if getattr(exc, "validation_error", None) is None:
            raise
        raise ConfigError(explain_validation_error(exc.validation_error, prefix, component)) from None


class OptionsModel(BaseModel):
    """Base of component options: unknown options are errors, and constructing one with an
    invalid value raises :class:`ConfigError` (pydantic's ``ValidationError`` otherwise)."""

    model_config = ConfigDict(extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            error = ConfigError(explain_validation_error(exc).replace(
                "invalid option: ", f"invalid option of {type(self).__name__}: "))
            error.validation_error = exc  # callers that know the component re-explain it
            raise error from None


class NoOptions(OptionsModel):
    """Options model of a component that takes none."""


class Component:
    """Base class of every decoding component.

    Subclasses set ``name`` (how strategies refer to it), ``hook_point`` (which of ``fuse``,
    ``score``, ``select``, ``edit``, ``remask``, ``draft`` it implements, or ``observer`` for lifecycle-only
    components), optionally an ``Options`` pydantic model (``extra="forbid"``), and implement the
    hook method of that name decorated with :data:`dllm_decoding.hookimpl`. They may implement
    any lifecycle hook as well.
    """

    name: ClassVar[str]
    hook_point: ClassVar[HookPoint]
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel | None = None, **kwargs: Any) -> None:
        if options is None:
            options = validate_options(self.Options, kwargs, component=self.name)
        elif kwargs:
            raise TypeError("pass either an options object or keyword options, not both")
        self.options = options

    @cached_property
    def state_key(self) -> str:
        """Key of this instance's per-decode memory in ``state.plugin_state``."""
        return f"{self.name}@{id(self):x}"

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items())
        return f"{type(self).__name__}({opts})"
