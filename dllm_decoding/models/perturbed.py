"""A model wrapper that perturbs logits, to stress-test confidence rules."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch


class PerturbedLogits(torch.nn.Module):
    """The wrapped model with its logits divided by ``tau`` and, with ``noise > 0``, Gaussian
    noise of that standard deviation added at every forward (seeded, so a run repeats exactly).

    ``tau > 1`` keeps every argmax and flattens every distribution: a uniformly under-confident
    model. ``noise`` makes confidence fluctuate from step to step, as it does on large models,
    which is what a rule that remembers past steps (credit) could exploit. The CLI's
    ``--logit-temperature`` and ``--logit-noise`` use it to stress-test confidence rules."""

    def __init__(self, model: Any, tau: float = 1.0, noise: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        self.inner, self.config, self.tau, self.noise = model, model.config, tau, noise
        self.generator = torch.Generator().manual_seed(seed)
        self.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                use_cache: bool = False, key_values: Any = None, window_start: int = 0,
                position_ids: torch.Tensor | None = None) -> Any:
        cache_args = {"use_cache": True} if use_cache else {}
        if position_ids is not None:  # a forward with extra positions (4-D attention_mask)
            cache_args["position_ids"] = position_ids
        if key_values is not None:  # a cached window (HFMaskedDiffusionModel(kv_cache=...))
            cache_args.update(key_values=key_values, window_start=window_start)
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, **cache_args)
        logits = out.logits / self.tau
        if self.noise:
            # drawn on the CPU generator, then moved: the same noise on every device
            jitter = torch.randn(logits.shape, generator=self.generator, dtype=logits.dtype).to(logits.device)
            # keep -inf entries (tokens the model rules out, e.g. [MASK]) ruled out
            logits = logits + self.noise * jitter.masked_fill(torch.isinf(logits), 0.0)
        return SimpleNamespace(logits=logits, key_values=getattr(out, "key_values", None))
