"""Model adapters: what the loop needs from a dLLM, and wrappers for common model kinds.

The loop talks to a :class:`Denoiser`, which opens one :class:`DecodeSession` per decode (so a
model can keep per-decode state such as caches or self-conditioning logits). A session returns
logits aligned so that ``logits[:, i]`` predicts token ``i``.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

from .errors import InputError, ModelError


class DecodeSession:
    """One decode's view of a model. Subclass and override :meth:`forward`."""

    def __init__(self, denoiser: Denoiser, attention_mask: torch.Tensor) -> None:
        self.denoiser = denoiser
        self.attention_mask = attention_mask  # (B, T) long, 0 on left padding

    def initial_noise(self, batch: int, length: int, generators: list[torch.Generator]) -> torch.Tensor:
        """Tokens that fill undecided positions: ``[MASK]`` for masked-diffusion models
        (uniform-noise models draw random tokens from the per-row ``generators``)."""
        return torch.full((batch, length), self.denoiser.mask_id, dtype=torch.long)

    def forward(self, canvas: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """Logits ``(b, T, V)`` for ``canvas`` ``(b, T)``; ``rows`` are their indices in the batch
        (``None`` = all rows, in order)."""
        raise NotImplementedError

    def observe_fused(self, logits: torch.Tensor, rows: torch.Tensor | None) -> None:
        """The fused logits of this step (for self-conditioning models); ignored by default."""

    def rows_mask(self, rows: torch.Tensor | None) -> torch.Tensor:
        return self.attention_mask if rows is None else self.attention_mask[rows]


class Denoiser:
    """A dLLM as the loop sees it: ``mask_id``, ``vocab_size`` and a session factory."""

    mask_id: int | None
    vocab_size: int
    name: str = "model"

    def start_session(self, attention_mask: torch.Tensor) -> DecodeSession:
        raise NotImplementedError


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
        if not isinstance(vocab_size, int) or vocab_size < 2:
            raise InputError(f"as_model: vocab_size must be an int >= 2, got {vocab_size!r}")
        if not isinstance(mask_id, int) or not 0 <= mask_id < vocab_size:
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


class _HFSession(DecodeSession):
    def __init__(self, denoiser: Denoiser, attention_mask: torch.Tensor) -> None:
        super().__init__(denoiser, attention_mask)
        # decided once per decode: without padding the model needs no mask at all
        self.pass_mask = denoiser.takes_attention_mask and bool((attention_mask == 0).any())

    def forward(self, canvas, rows):
        den: HFMaskedDiffusionModel = self.denoiser  # type: ignore[assignment]
        kwargs: dict[str, Any] = {"input_ids": canvas}
        if self.pass_mask:
            kwargs["attention_mask"] = self.rows_mask(rows)
        with torch.no_grad():
            out = den.model(**kwargs)
        logits = out.logits if hasattr(out, "logits") else out[0]
        if den.shift_logits:  # Dream-style: logits[:, i] predicts token i + 1
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits


class HFMaskedDiffusionModel(Denoiser):
    """A Hugging Face masked-diffusion model (LLaDA-style; ``shift_logits=True`` for Dream-style
    models whose logits predict the next position)."""

    def __init__(self, model: torch.nn.Module, *, mask_id: int | None = None,
                 shift_logits: bool = False) -> None:
        config = getattr(model, "config", None)
        if mask_id is None:
            mask_id = getattr(config, "mask_token_id", None)
        if mask_id is None:
            raise InputError("this model's config has no mask_token_id; pass mask_id=... "
                             "(the id of the [MASK] token)")
        vocab_size = getattr(config, "vocab_size", None)
        if not isinstance(vocab_size, int):
            raise InputError("the model's config has no integer vocab_size")
        if not 0 <= mask_id < vocab_size:
            raise InputError(f"mask_id={mask_id} is outside the vocabulary [0, {vocab_size})")
        # eval() walks every submodule (~70 us on the reference model): only when needed
        self.model = model.eval() if model.training else model
        self.mask_id = int(mask_id)
        self.vocab_size = vocab_size
        self.shift_logits = shift_logits
        self.name = getattr(config, "name_or_path", None) or type(model).__name__
        self.takes_attention_mask = _takes_attention_mask(type(model))

    def start_session(self, attention_mask):
        return _HFSession(self, attention_mask)


@functools.lru_cache(maxsize=256)
def _takes_attention_mask(model_class: type) -> bool:
    """Whether ``model_class.forward`` accepts ``attention_mask`` (inspect.signature is slow:
    asked once per class, not per generate call)."""
    return "attention_mask" in inspect.signature(model_class.forward).parameters


def as_denoiser(model: Any) -> Denoiser:
    """Accept a :class:`Denoiser` or a Hugging Face model; explain what to do with anything else."""
    if isinstance(model, Denoiser):
        return model
    if isinstance(model, torch.nn.Module) and hasattr(model, "config"):
        return HFMaskedDiffusionModel(model)
    if callable(model):
        raise InputError("got a bare callable as model; wrap it first: "
                         "dd.as_model(fn, mask_id=..., vocab_size=...)")
    raise InputError(f"cannot decode with a {type(model).__name__}; pass a Hugging Face model, "
                     f"dd.as_model(fn, ...) or a dllm_decoding.Denoiser")


def check_logits(logits: Any, expected: tuple[int, int, int], model_name: str) -> torch.Tensor:
    """One clear error for a model that returns the wrong thing."""
    if not isinstance(logits, torch.Tensor):
        raise ModelError(f"model {model_name!r} returned {type(logits).__name__}, "
                         f"expected a logits tensor of shape {expected}")
    if tuple(logits.shape) != expected:
        raise ModelError(f"model {model_name!r} returned logits of shape {tuple(logits.shape)}, "
                         f"expected (batch, positions, vocab_size) = {expected}")
    if not logits.is_floating_point():
        raise ModelError(f"model {model_name!r} returned {logits.dtype} logits; expected floats")
    # fast path, one reduction: a finite sum of all logits rules out NaN, +inf and -inf. Models
    # that give some tokens -inf (a legitimate "never") get a second one: a position's max
    # propagates NaN and is +inf or (all -inf row) -inf, so a finite sum of maxima rules out the
    # three faults; anything else, overflow included, goes to the exact check below
    if math.isfinite(float(logits.sum())) or math.isfinite(float(logits.amax(dim=-1).sum())):
        return logits
    # -inf is a legitimate "never this token"; NaN, +inf and an all -inf row are not.
    bad = torch.isnan(logits) | (logits == float("inf"))
    if bool(bad.any()):
        b, t, v = (int(i) for i in bad.nonzero()[0])
        raise ModelError(f"model {model_name!r} returned non-finite logits (NaN or +inf), first at "
                         f"row {b}, position {t}, token {v}; check the model's dtype and inputs")
    if bool((logits == float("-inf")).all(-1).any()):
        raise ModelError(f"model {model_name!r} returned a position whose logits are all -inf")
    return logits
