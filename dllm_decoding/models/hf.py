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
        # (rows, every layer's keys and values, logits) of the last full forward, and the
        # forwards since it
        self.cache: tuple[torch.Tensor | None, Any, torch.Tensor] | None = None
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
        if den.shift_logits:  # Dream-style: logits[:, i] predicts token i + 1
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits

    def _cached_forward(self, canvas: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """Fast-dLLM's key-value cache: the block's first step runs the whole canvas and keeps
        every layer's keys and values; later steps of the block compute only a window (the block
        for ``dual``, the block and everything after it for ``prefix``) and attend to the cached
        keys elsewhere, until ``kv_refresh`` forwards have used the cache (then a full forward
        refreshes it). Logits outside the window are those of the last full forward."""
        den: HFMaskedDiffusionModel = self.denoiser  # type: ignore[assignment]
        start, end = self.block
        stop = end if den.kv_cache == "dual" else canvas.shape[1]
        if self.cache is None or (den.kv_refresh is not None and self.cache_age >= den.kv_refresh):
            out = self._call(canvas, rows, use_cache=True)
            self.cache, self.cache_age = (rows, out.key_values, out.logits), 0
            return out.logits
        self.cache_age += 1
        cache_rows, key_values, full_logits = self.cache
        if rows is not None and (cache_rows is None or rows.numel() != cache_rows.numel()):
            # rows only leave a block (they finish it), so they are a subset of the cached ones
            pick = rows if cache_rows is None else torch.searchsorted(cache_rows, rows)
            key_values = tuple((k[pick], v[pick]) for k, v in key_values)
            full_logits = full_logits[pick]
            self.cache = (rows, key_values, full_logits)
        window = self._call(canvas[:, start:stop], rows, key_values=key_values, window_start=start).logits
        return torch.cat([full_logits[:, :start], window, full_logits[:, stop:]], dim=1)


KV_CACHE_MODES = ("prefix", "dual")


class HFMaskedDiffusionModel(Denoiser):
    """A Hugging Face masked-diffusion model (LLaDA-style; ``shift_logits=True`` for Dream-style
    models whose logits predict the next position).

    ``kv_cache`` (``"prefix"`` or ``"dual"``, for models that support it, as the reference model
    does) decodes with Fast-dLLM's approximate key-value cache; ``kv_refresh=N`` refreshes it
    with a full forward after every ``N`` cached forwards (default: at block starts only).
    """

    def __init__(self, model: torch.nn.Module, *, mask_id: int | None = None,
                 shift_logits: bool = False, kv_cache: str | None = None,
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
        self.shift_logits = shift_logits
        self.name = getattr(config, "name_or_path", None) or type(model).__name__
        self.takes_attention_mask = _takes_attention_mask(type(model))
        if kv_cache is not None:
            if kv_cache not in KV_CACHE_MODES:
                raise InputError(f"kv_cache={kv_cache!r} is not a cache mode; use one of "
                                 f"{', '.join(map(repr, KV_CACHE_MODES))} or None (no cache)")
            if shift_logits:
                raise InputError("kv_cache needs logits aligned with their positions; it does not "
                                 "support shift_logits=True (Dream-style) models")
            missing = {"use_cache", "key_values", "window_start"} - _forward_parameters(type(model))
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


def _takes_attention_mask(model_class: type) -> bool:
    return "attention_mask" in _forward_parameters(model_class)


@register_model_adapter
def _adapt_hf_module(model: Any) -> Denoiser | None:
    """A Hugging Face model (a torch module with a config) decodes as a masked-diffusion model."""
    if isinstance(model, torch.nn.Module) and hasattr(model, "config"):
        return HFMaskedDiffusionModel(model)
    return None
