"""Any callable ``ids -> logits`` as a model the loop can decode."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from ..core.denoiser import DecodeSession, Denoiser
from ..core.errors import InputError


class _CallableSession(DecodeSession):
    def forward(self, canvas, rows):
        den: CallableModel = self.denoiser  # type: ignore[assignment]
        with torch.no_grad():
            if den.takes_attention_mask:
                return den.fn(canvas, attention_mask=self.rows_mask(rows))
            return den.fn(canvas)


class CallableModel(Denoiser):
    """Any callable ``ids (B, T) -> logits (B, T, V)``; one that accepts an ``attention_mask``
    keyword gets the (left-padding) mask too."""

    def __init__(self, fn: Callable[..., torch.Tensor], *, mask_id: int, vocab_size: int,
                 name: str | None = None) -> None:
        if not callable(fn):
            raise InputError(f"as_model: expected a callable ids -> logits, got {type(fn).__name__}")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise InputError(f"as_model: vocab_size must be an int >= 2, got {vocab_size!r}")
        if isinstance(mask_id, bool) or not isinstance(mask_id, int):
            raise InputError(f"as_model: mask_id must be an int token id, got {mask_id!r} "
                             f"({type(mask_id).__name__})")
        if not 0 <= mask_id < vocab_size:
            raise InputError(f"as_model: mask_id={mask_id!r} is outside the vocabulary "
                             f"[0, {vocab_size}); pass the id of the model's mask token")
        self.fn = fn
        self.mask_id = mask_id
        self.vocab_size = vocab_size
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        self.takes_attention_mask = "attention_mask" in params or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    def start_session(self, attention_mask):
        return _CallableSession(self, attention_mask)


def as_model(fn: Callable[..., torch.Tensor], *, mask_id: int, vocab_size: int) -> CallableModel:
    """Wrap any callable ``ids (B, T) -> logits (B, T, V)`` as a model the loop can decode."""
    return CallableModel(fn, mask_id=mask_id, vocab_size=vocab_size)
