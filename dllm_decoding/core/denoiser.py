"""What the loop needs from a dLLM: the :class:`Denoiser` / :class:`DecodeSession` protocol.

The loop talks to a :class:`Denoiser`, which opens one :class:`DecodeSession` per decode (so a
model can keep per-decode state such as caches or self-conditioning logits). A session returns
logits aligned so that ``logits[:, i]`` predicts token ``i``. Concrete adapters (callables,
Hugging Face models, model families) live in :mod:`dllm_decoding.models` and register how they
wrap a plain model object with :func:`register_model_adapter`, so the core never imports them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .errors import InputError, ModelError


class DecodeSession:
    """One decode's view of a model. Subclass and override :meth:`forward`."""

    #: whether :meth:`forward` returns logits for the whole canvas (an early commit needs them);
    #: False for sessions that compute the block only (a key-value cache's windows)
    canvas_logits: bool = True

    def __init__(self, denoiser: Denoiser, attention_mask: torch.Tensor) -> None:
        self.denoiser = denoiser
        self.attention_mask = attention_mask  # (B, T) long, 0 on left padding

    def initial_noise(self, batch: int, length: int, generators: list[torch.Generator]) -> torch.Tensor:
        """``(batch, length)`` long tokens that fill undecided positions, one row per generator:
        ``[MASK]`` for masked-diffusion models; uniform-noise models draw random tokens from the
        rows' ``generators``. The loop asks when a block starts (for the rows still decoding)
        and when positions are reopened (for the rows that reopen some), so a row draws in the
        same order alone as in a batch; a block's positions hold ``[MASK]`` (token 0 for a model
        without one) before the block starts."""
        return torch.full((batch, length), self.denoiser.mask_id, dtype=torch.long,
                          device=self.attention_mask.device)

    def forward(self, canvas: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """Logits for ``canvas`` ``(b, T)``: either ``(b, T, V)`` for every position, or
        ``(b, L, V)`` for the current block only (the columns given to :meth:`start_block`),
        which is all the loop uses: a session that computes only the block (a cached window)
        returns just that. ``rows`` are the canvas rows' indices in the batch (``None`` = all
        rows, in order)."""
        raise NotImplementedError

    def forward_extended(self, canvas: torch.Tensor, rows: torch.Tensor | None,
                         extension: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward of ``canvas`` plus an :class:`~dllm_decoding.Extension`'s extra
        positions (its tensors already for these rows): ``(block or canvas logits, extra
        positions' logits (b, E, V))``. Canvas positions never attend to extra ones. Models
        that cannot run it say so."""
        raise InputError(f"model {self.denoiser.name!r} cannot run a forward with extra positions (an "
                         f"'extend' component, e.g. WINO's shadow block): its session does not implement "
                         f"forward_extended; use a model whose forward takes a 4-D attention_mask and "
                         f"position_ids (the reference model, LLaDA, any Hugging Face model that does)")

    def forward_prefix(self, canvas: torch.Tensor, rows: torch.Tensor | None,
                       visible: torch.Tensor) -> torch.Tensor:
        """Logits ``(b, S, V)`` of a canvas prefix ``(b, S)`` as if the canvas ended there, with
        ``visible`` ``(b, S)`` bool: columns a row's forward may attend to (False beyond that
        row's own, shorter prefix). Models that cannot run it say so."""
        raise InputError(f"model {self.denoiser.name!r} cannot run a forward on a canvas prefix (a "
                         f"forward_extent, e.g. SlowFast's truncated fast phase): its session does not "
                         f"implement forward_prefix; set the component's option to forward the whole canvas")

    def observe_fused(self, logits: torch.Tensor, rows: torch.Tensor | None) -> None:
        """The fused logits ``(b, L, V)`` of this step's block (for self-conditioning models);
        ignored by default (and then never computed)."""

    def start_block(self, start: int, end: int) -> None:
        """Block ``[start, end)`` (canvas columns) begins; sessions that cache per block reset
        here. Ignored by default."""

    def rows_mask(self, rows: torch.Tensor | None) -> torch.Tensor:
        return self.attention_mask if rows is None else self.attention_mask[rows]


class Denoiser:
    """A dLLM as the loop sees it: ``mask_id``, ``vocab_size`` and a session factory."""

    mask_id: int | None
    vocab_size: int
    name: str = "model"
    #: the block length a model decodes in (DiffusionGemma's canvas): the default when neither
    #: the strategy nor the caller sets one; None: any
    block_length: int | None = None

    def start_session(self, attention_mask: torch.Tensor) -> DecodeSession:
        raise NotImplementedError


_ADAPTERS: list[Callable[[Any], Denoiser | None]] = []


def register_model_adapter(adapter: Callable[[Any], Denoiser | None]) -> Callable[[Any], Denoiser | None]:
    """Register ``adapter(model) -> Denoiser | None``: how :func:`as_denoiser` wraps a model
    object that is not a :class:`Denoiser` (the first adapter that returns one wins; the latest
    registered is asked first, so a model family can refine the generic Hugging Face adapter)."""
    _ADAPTERS.insert(0, adapter)
    return adapter


def as_denoiser(model: Any) -> Denoiser:
    """Accept a :class:`Denoiser` or a model a registered adapter wraps (a Hugging Face model);
    explain what to do with anything else."""
    if isinstance(model, Denoiser):
        return model
    for adapter in _ADAPTERS:
        denoiser = adapter(model)
        if denoiser is not None:
            return denoiser
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
