"""One exception family, so callers can catch everything the framework raises on purpose."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DecodingError(Exception):
    """Base class of every error raised on purpose by dllm_decoding."""


class ConfigError(DecodingError, ValueError):
    """A strategy, component option or override is invalid."""


class InputError(DecodingError, ValueError):
    """The prompt, attention mask or generation arguments are invalid."""


class ModelError(DecodingError, RuntimeError):
    """The model (or a model file) did not behave as the loop requires."""


class PluginError(DecodingError, RuntimeError):
    """A plugin raised, returned a wrong value, or could not be registered."""


class PluginWarning(UserWarning):
    """An installed plugin is broken and was skipped (the rest keeps working)."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """A short hint naming the closest valid choices and listing all of them."""
    choices = sorted(choices)
    close = difflib.get_close_matches(value, choices, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    return f"{hint}valid choices: {', '.join(choices) if choices else '(none)'}"
