"""Checks of ``generate``'s keyword arguments (besides the prompt: ``inputs.py``), before any work.

Each check raises one :class:`InputError` (or :class:`ConfigError` for overrides) naming the
argument, the value given and what to pass instead, where the value would otherwise fail deep
inside the loop with a raw ``TypeError`` / ``AttributeError`` or decode silently.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from .components import Component
from .errors import ConfigError, InputError

#: the most bytes one forward's logits may need (batch x positions x vocabulary x 4): beyond
#: this no machine holds them, so the decode is refused before it allocates anything
MAX_LOGITS_BYTES = 1 << 40  # 1 TiB


def check_overrides(overrides: Any) -> None:
    """``overrides`` must map dotted string keys to values."""
    if overrides is None:
        return
    if not isinstance(overrides, Mapping):
        hint = ""
        if isinstance(overrides, (list, tuple)) and all(isinstance(o, str) for o in overrides):
            hint = (" (for command-line style 'key=value' strings use "
                    "dllm_decoding.core.config.parse_overrides)")
        raise ConfigError(f"overrides must be a dict of dotted keys to values, e.g. "
                          f"{{'select.threshold': 0.8}}, not a {type(overrides).__name__}{hint}")
    for key in overrides:
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(f"overrides: key {key!r} is not a dotted option name; keys are strings "
                              f"such as 'select.threshold' or 'gen_length'")


def check_eos_id(eos_id: Any, vocab_size: int) -> tuple[int, ...] | None:
    """None, or the EOS token ids as a tuple: an int, or a non-empty sequence of ints (Instruct
    models end turns with several ids), each in the vocabulary (numpy / torch integer scalars
    taken)."""
    if eos_id is None:
        return None
    ids = list(eos_id) if isinstance(eos_id, (list, tuple)) else [eos_id]
    if not ids:
        raise InputError("eos_id is an empty list; pass a token id, a list of them, or None")
    for token in ids:
        if isinstance(token, bool) or not isinstance(token, numbers.Integral):
            raise InputError(f"eos_id must be an int token id, a list of them, or None; got {eos_id!r} "
                             f"({type(token).__name__})")
        if not 0 <= int(token) < vocab_size:
            raise InputError(f"eos_id={int(token)} is outside the model's vocabulary [0, {vocab_size})")
    return tuple(int(t) for t in ids)


def check_observers(observers: Any) -> list[Component]:
    """A sequence of component instances (observers hook the lifecycle only)."""
    if observers is None:
        return []
    if isinstance(observers, Component):
        observers = [observers]
    if isinstance(observers, (str, bytes)) or not isinstance(observers, Sequence):
        raise InputError(f"observers must be a list of component instances, got "
                         f"{type(observers).__name__} {observers!r}")
    for obs in observers:
        if isinstance(obs, str):
            raise InputError(f"observers: {obs!r} is a name; observers takes component instances "
                             f"(e.g. dd.TraceRecorder()). A registered observer is used by name in "
                             f"the strategy instead: overrides={{'observers': [{obs!r}]}}"
                             + ("; for the step trace pass trace=True" if obs == "trace" else ""))
        if isinstance(obs, type) and issubclass(obs, Component):
            raise InputError(f"observers: {obs.__name__} is a class; pass an instance, {obs.__name__}()")
        if not isinstance(obs, Component):
            raise InputError(f"observers: {obs!r} is a {type(obs).__name__}, not a Component instance")
    return list(observers)


def check_registry(registry: Any) -> None:
    """None or a :class:`PluginRegistry` (``dd.get_registry(pm)``)."""
    from .manager import PluginRegistry

    if registry is not None and not isinstance(registry, PluginRegistry):
        raise InputError(f"registry must be a PluginRegistry (dd.get_registry(dd.make_plugin_manager(...))) "
                         f"or None, got {type(registry).__name__} {registry!r}")


def check_generate_arguments(*, overrides: Any = None, eos_id: Any = None, observers: Any = (),
                             registry: Any = None, vocab_size: int | None = None) -> None:
    """Every keyword argument of ``generate`` that is not the prompt, the strategy or the seed.

    ``eos_id`` is range-checked when ``vocab_size`` is given (the model is known)."""
    check_overrides(overrides)
    check_registry(registry)
    check_observers(observers)
    if vocab_size is not None:
        check_eos_id(eos_id, vocab_size)
    elif eos_id is not None:
        check_eos_id(eos_id, 2**63)  # the type error; the range waits for the model


def check_decode_size(batch: int, positions: int, vocab_size: int, *, limit: int = MAX_LOGITS_BYTES) -> None:
    """Refuse a decode whose logits (``batch x positions x vocab_size`` float32) no machine holds."""
    need = batch * positions * vocab_size * 4
    if need > limit:
        raise InputError(f"this decode needs {_human(need)} for one forward's logits (batch {batch} x "
                         f"{positions} positions x vocabulary {vocab_size} x 4 bytes), more than "
                         f"{_human(limit)}; decode fewer rows per call or a shorter gen_length")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # pragma: no cover
