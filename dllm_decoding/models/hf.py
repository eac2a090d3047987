"""Hugging Face masked-diffusion models as denoisers, optionally with Fast-dLLM's key-value cache."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from ..core.denoiser import DecodeSession, Denoiser, register_model_adapter
from ..core.errors import InputError


class _HFSession(DecodeSession):
    def __init__(self, denoiser: Denoiser, attention_mask: torch.Tensor) -> None:
        super().__init__(denoiser, attention_mask)
        # decided once per decode: without padding the model needs no mask at all
        self.pass_mask = denoiser.takes_attention_mask and bool((attention_mask == 0).any())
        self.block: tuple[int, int] | None = None
        self.canvas_logits = denoiser.kv_cache is None  # cached windows are the block's only
        # (rows, every layer's keys and values) of the last full forward, and the forwards since it
        self.cache: tuple[torch.Tensor | None, Any] | None = None
        self.cache_age = 0

    def start_block(self, start, end):
        self.block, self.cache = (start, end), None

    def _call(self, input_ids: torch.Tensor, rows: torch.Tensor | None, **extra: Any) -> Any:
        den: HFMaskedDiffusionModel = self.denoiser  # type: ignore[assignment]
        if self.pass_mask:
            extra["attention_mask"] = self.rows_mask(rows)
        with torch.no_grad():
            out = den.model(input_ids=input_ids, **extra)
        return out

    def forward(self, canvas, rows):
        den: HFMaskedDiffusionModel = self.denoiser  # type: ignore[assignment]
        if den.kv_cache is not None and self.block is not None:
            return self._cached_forward(canvas, rows)
        out = self._call(canvas, rows)
        logits = out.logits if hasattr(out, "logits") else out[0]
        return _align_next_token_logits(logits) if den.shift_logits else logits

    def forward_extended(self, canvas, rows, extension):
        """The canvas plus extra positions in one forward: a 4-D boolean attention mask (query x
        key; padding never attended, canvas queries never see the extra keys, each extra query
        sees the canvas columns ``extension.sees`` names and every extra key) and position ids
        (real tokens counted from the first one; an extra position takes its column's)."""
        den: HFMaskedDiffusionModel = self.denoiser  # type: ignore[assignment]
        if den.kv_cache is not None:
            raise InputError("an extend component (extra positions in the forward, e.g. WINO's shadow block) "
                             "does not run with kv_cache: drop --kv-cache")
        if den.shift_logits:
            raise InputError(f"an extend component needs logits aligned with their own positions; {den.name!r} "
                             f"predicts the next position (shift_logits), so an extra position would get its "
                             f"neighbour's prediction")
        if not {"position_ids", "attention_mask"} <= _forward_parameters(_module_class(den.model)):
            raise InputError(f"an extend component needs a model whose forward takes a 4-D attention_mask and "
                             f"position_ids; {type(den.model).__name__}.forward does not")
        real = self.rows_mask(rows).to(torch.long)
        batch, total = real.shape
        width = extension.tokens.shape[1]
        positions = (real.cumsum(dim=1) - 1) * real
        keys = torch.cat([real.bool(), real.new_ones(batch, width, dtype=torch.bool)], dim=1)
        mask = keys[:, None, None, :].expand(batch, 1, total + width, total + width).clone()
        mask[:, :, :total, total:] = False
        mask[:, :, total:, :total] &= extension.sees[:, None]
        with torch.no_grad():
            out = den.model(input_ids=torch.cat([canvas, extension.tokens], dim=1), attention_mask=mask,
                            position_ids=torch.cat([positions, positions.gather(1, extension.positions)], dim=1))
        logits = out.logits if hasattr(out, "logits") else out[0]
        return logits[:, :total], logits[:, total:]

    def forward_prefix(self, canvas, rows, visible):
        """The model on a canvas prefix, columns beyond a row's own prefix masked as padding is
        (no mask at all when nothing is hidden or padded, as the plain forward)."""
        den: HFMaskedDiffusionModel = self.denoiser  # type: ignore[assignment]
        if den.kv_cache is not None:
            raise InputError("a forward on a canvas prefix (forward_extent, e.g. SlowFast's fast phase) does not run "
                             "with kv_cache: drop --kv-cache")
        mask = self.rows_mask(rows)[:, :canvas.shape[1]].to(torch.long) * visible
        extra: dict[str, Any] = {}
        if bool((mask == 0).any()):
            if not den.takes_attention_mask:
                raise InputError(f"{type(den.model).__name__}.forward takes no attention_mask, so rows with different "
                                 f"canvas prefixes (forward_extent) cannot share a forward; decode them one at a time")
            extra["attention_mask"] = mask
        with torch.no_grad():
            out = den.model(input_ids=canvas, **extra)
        logits = out.logits if hasattr(out, "logits") else out[0]
        return _align_next_token_logits(logits) if den.shift_logits else logits

    def _cached_forward(self, canvas: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """Fast-dLLM's key-value cache: the block's first step runs the whole canvas and keeps
        every layer's keys and values; later steps of the block compute only a window (the block
        for ``dual``, the block and everything after it for ``prefix``) and attend to the cached
        keys elsewhere, until ``kv_refresh`` forwards have used the cache (then a full forward
        refreshes it). A cached step returns the block's logits only ``(b, L, V)``: the loop
        needs nothing else, so no canvas-wide logits are kept or rebuilt."""
        den: HFMaskedDiffusionModel = self.denoiser  # type: ignore[assignment]
        start, end = self.block
        stop = end if den.kv_cache == "dual" else canvas.shape[1]
        if self.cache is None or (den.kv_refresh is not None and self.cache_age >= den.kv_refresh):
            out = self._call(canvas, rows, use_cache=True)
            self.cache, self.cache_age = (rows, out.key_values), 0
            return _align_next_token_logits(out.logits) if den.shift_logits else out.logits
        self.cache_age += 1
        cache_rows, key_values = self.cache
        if rows is not None and (cache_rows is None or rows.numel() != cache_rows.numel()):
            # rows only leave a block (they finish it), so they are a subset of the cached ones
            pick = rows if cache_rows is None else torch.searchsorted(cache_rows, rows)
            key_values = tuple((k[pick], v[pick]) for k, v in key_values)
            self.cache = (rows, key_values)
        # Dream-style logits: position i's come from the model's output at i - 1, so the window
        # starts one position earlier (that position is recomputed against the cache too)
        first = start - 1 if den.shift_logits and start > 0 else start
        window = self._call(canvas[:, first:stop], rows, key_values=key_values, window_start=first).logits
        if den.shift_logits and start == 0:
            window = _align_next_token_logits(window)
        return window[:, :end - start]


def _align_next_token_logits(logits: torch.Tensor) -> torch.Tensor:
    """Dream-style logits (``logits[:, i]`` predicts token ``i + 1``) aligned so that
    ``[:, i]`` predicts token ``i``, as Dream's own generate does (position 0 keeps its own)."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def _family_shift(model: Any) -> bool | None:
    """Whether the model's family predicts the next token (Dream: True, LLaDA: False), from our
    classes' ``logits_predict_next_token`` or a published checkpoint's ``model_type``; None
    when unknown. Looks through wrappers that keep the model as ``inner``."""
    while model is not None:
        known = getattr(type(model), "logits_predict_next_token", None)
        if known is not None:
            return bool(known)
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type in NEXT_TOKEN_MODEL_TYPES:
            return True
        if model_type in SAME_TOKEN_MODEL_TYPES:
            return False
        model = getattr(model, "inner", None)
    return None


# published model_type values whose logits predict the next token / their own position
NEXT_TOKEN_MODEL_TYPES = frozenset({"Dream"})
SAME_TOKEN_MODEL_TYPES = frozenset({"llada", "lladamoe", "llada_moe", "dllm_reference"})
KV_CACHE_MODES = ("prefix", "dual")


class HFMaskedDiffusionModel(Denoiser):
    """A Hugging Face masked-diffusion model (LLaDA-style; ``shift_logits=True`` for Dream-style
    models whose logits predict the next position; default: from the model's family, Dream
    shifted, else not).

    ``kv_cache`` (``"prefix"`` or ``"dual"``, for models that support it, as the reference model
    does) decodes with Fast-dLLM's approximate key-value cache; ``kv_refresh=N`` refreshes it
    with a full forward after every ``N`` cached forwards (default: at block starts only).
    """

    def __init__(self, model: torch.nn.Module, *, mask_id: int | None = None,
                 shift_logits: bool | None = None, kv_cache: str | None = None,
                 kv_refresh: int | None = None) -> None:
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
        family_shift = _family_shift(model)
        if shift_logits is None:
            shift_logits = bool(family_shift)
        elif family_shift is not None and shift_logits != family_shift:
            kind = type(model).__name__
            raise InputError(f"shift_logits={shift_logits} contradicts the model ({kind}): its logits predict "
                             f"{'the next token' if family_shift else 'their own position'}, so it decodes with "
                             f"shift_logits={family_shift}; drop the argument (--shift-logits) to use the family's")
        self.shift_logits = shift_logits
        self.name = getattr(config, "name_or_path", None) or type(model).__name__
        self.takes_attention_mask = _takes_attention_mask(_module_class(model))
        if kv_cache is not None:
            if kv_cache not in KV_CACHE_MODES:
                raise InputError(f"kv_cache={kv_cache!r} is not a cache mode; use one of "
                                 f"{', '.join(map(repr, KV_CACHE_MODES))} or None (no cache)")
            missing = {"use_cache", "key_values", "window_start"} - _forward_parameters(_module_class(model))
            if missing:
                raise InputError(f"kv_cache={kv_cache!r}: {type(model).__name__}.forward does not take "
                                 f"{', '.join(sorted(missing))}; a cached decode needs a model that returns "
                                 f"every layer's keys and values (use_cache=True -> out.key_values) and "
                                 f"computes a window of positions against them (key_values=..., "
                                 f"window_start=...), as the reference model does")
        if kv_refresh is not None:
            if kv_cache is None:
                raise InputError("kv_refresh is set but kv_cache is None; pass kv_cache='prefix' or 'dual' too")
            if isinstance(kv_refresh, bool) or not isinstance(kv_refresh, int) or kv_refresh < 1:
                raise InputError(f"kv_refresh={kv_refresh!r}: pass a number of cached forwards >= 1 between "
                                 f"full forwards, or None (refresh at block starts only)")
        self.kv_cache, self.kv_refresh = kv_cache, kv_refresh

    def start_session(self, attention_mask):
        return _HFSession(self, attention_mask)


@functools.lru_cache(maxsize=256)
def _forward_parameters(model_class: type) -> frozenset[str]:
    """The parameter names of ``model_class.forward`` (inspect.signature is slow: asked once
    per class, not per generate call)."""
    return frozenset(inspect.signature(model_class.forward).parameters)


def _module_class(model: torch.nn.Module) -> type:
    """The class whose ``forward`` runs: a ``torch.compile``d module forwards ``*args, **kwargs``
    to the original one, whose signature says what it takes."""
    return type(getattr(model, "_orig_mod", model))


def _takes_attention_mask(model_class: type) -> bool:
    return "attention_mask" in _forward_parameters(model_class)


@register_model_adapter
def _adapt_hf_module(model: Any) -> Denoiser | None:
    """A Hugging Face model (a torch module with a config) decodes as a masked-diffusion model."""
    if isinstance(model, torch.nn.Module) and hasattr(model, "config"):
        return HFMaskedDiffusionModel(model)
    return None
