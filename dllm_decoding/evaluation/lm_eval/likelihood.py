"""LLaDA's Monte-Carlo estimate of a continuation's log-likelihood under a masked-diffusion model.

A masked-diffusion model gives no exact ``log p(continuation | context)``; its training loss is
an upper bound of the negative log-likelihood. LLaDA (arXiv 2502.09992, eq. 6) estimates it by
masking ``l`` of the ``L`` continuation tokens, ``l`` uniform in ``1..L``, and weighting the
masked tokens' cross entropy by ``L / l``; the estimate is the mean over ``mc_num`` samples.
Here the ``l`` of the samples are stratified over ``1..L`` (one random offset, then evenly
spaced) and each sample masks a random subset of that size. The context is never masked.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: (B, T) token ids -> (B, T, V) logits, logits[:, i] predicting token i
LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def masked_counts(length: int, samples: int, generator: torch.Generator) -> torch.Tensor:
    """How many of ``length`` positions each of ``samples`` draws masks: stratified over
    ``1..length`` with one random offset, so every count appears about equally often."""
    offset = torch.rand((), generator=generator) * length
    spread = offset + torch.arange(samples, dtype=torch.float64) * (length / samples)
    return (spread.floor().long() % length) + 1


def mc_loglikelihood(logits_fn: LogitsFn, context: torch.Tensor, continuation: torch.Tensor, *, mask_id: int,
                     mc_num: int, rows_per_forward: int, generator: torch.Generator) -> tuple[float, int]:
    """``(estimate of log p(continuation | context), forwards used)`` for one request.

    ``context`` and ``continuation`` are 1-D id tensors on the model's device; ``generator``
    (CPU) makes the estimate reproducible per request.
    """
    length = int(continuation.numel())
    if length == 0:
        raise ValueError("mc_loglikelihood needs a non-empty continuation")
    sequence = torch.cat([context, continuation])
    start = int(context.numel())
    counts = masked_counts(length, mc_num, generator)
    total, forwards = 0.0, 0
    for first in range(0, mc_num, rows_per_forward):
        batch_counts = counts[first:first + rows_per_forward]
        rows = int(batch_counts.numel())
        # a random subset of `count` continuation positions per row: the positions whose random
        # key ranks below the count
        ranks = torch.rand(rows, length, generator=generator).argsort(dim=1).argsort(dim=1)
        masked = (ranks < batch_counts[:, None]).to(sequence.device)
        noisy = sequence.repeat(rows, 1)
        noisy[:, start:] = torch.where(masked, torch.full_like(masked, mask_id, dtype=sequence.dtype),
                                       noisy[:, start:])
        logits = logits_fn(noisy)[:, start:].float()
        token_nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                      continuation.repeat(rows), reduction="none").view(rows, length)
        weight = length / batch_counts.to(token_nll.device, torch.float32)
        total += float(((token_nll * masked).sum(dim=1) * weight).sum())
        forwards += 1
    return -total / mc_num, forwards
