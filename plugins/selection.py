"""Select components: decide which open positions of the current block commit now.

All selectors rank ``proposal.confidence`` ``(B, L)`` over ``state.selectable`` (open positions
of the current block in active rows) and are vectorised over the batch. The core adds the progress
guarantee (at least one commit per active row), so selectors need not.
"""

from __future__ import annotations

import torch
from pydantic import Field, StrictBool

from dllm_decoding import Component, FiniteFloat, OptionsModel, StrictInt, hookimpl
from dllm_decoding.plugins.scoring import negative_entropy

NEG_INF = float("-inf")


def masked_confidence(state, proposal) -> torch.Tensor:
    """Confidence with every non-selectable position at -inf."""
    return torch.where(state.selectable, proposal.confidence, NEG_INF)


def top_k_mask(state, confidence: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """Bool ``(B, L)``: the ``k`` (an int, or ``k[b]`` per row) most confident finite positions
    of each row's block, by ``torch.topk`` over the row as LLaDA and Fast-dLLM rank it.

    torch.topk's choice among exactly tied values depends on the length of the ranked row, and
    ties are common (saturated float32 and bf16 probabilities). So each row is ranked over its
    canvas columns after its left padding, -inf outside the block: exactly the row the published
    loop ranks when that prompt is decoded alone, in a batch or not. The ranked rows are
    ``(B, T)`` floats, no vocabulary dimension; one call per padding length (one when nothing is
    padded)."""
    start, end = state.block_start, state.block_end
    row = torch.nn.functional.pad(confidence, (start, state.canvas.shape[1] - end), value=NEG_INF)
    mask = torch.zeros_like(row, dtype=torch.bool)
    padding = state.left_padding
    pads = set(padding)
    if len(pads) == 1:  # every row padded alike (usually: not at all): one call, in place
        pad = pads.pop()
        chosen = _top_k(row[:, pad:], k)
        if chosen is not None:
            mask[:, pad:].scatter_(1, *chosen)
        return mask[:, start:end]
    for pad in sorted(pads):
        rows = torch.tensor([b for b, p in enumerate(padding) if p == pad], device=row.device)
        ranked = row[rows, pad:]
        chosen = _top_k(ranked, k if isinstance(k, int) else k[rows])
        if chosen is not None:
            mask[rows, pad:] = torch.zeros_like(ranked, dtype=torch.bool).scatter(1, *chosen)
    return mask[:, start:end]


def _top_k(ranked: torch.Tensor, k: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(index, keep)`` of the ``k`` largest finite entries per row, or None when ``k`` is 0."""
    if isinstance(k, int):
        k = min(k, ranked.shape[1])
        if k == 0:
            return None
        values, index = ranked.topk(k, dim=1)
        return index, values > NEG_INF
    k_max = min(int(k.max()) if k.numel() else 0, ranked.shape[1])
    if k_max == 0:
        return None
    values, index = ranked.topk(k_max, dim=1)
    return index, (torch.arange(k_max, device=ranked.device)[None, :] < k[:, None]) & (values > NEG_INF)


class TopKOptions(OptionsModel):
    k: StrictInt | None = Field(None, gt=0, description="fixed tokens per step; default: LLaDA's schedule from `steps`")


class TopK(Component):
    """Commit the k most confident open positions per step.

    By default k follows LLaDA's schedule: the block's masked count split evenly over
    ``steps_per_block`` steps, the remainder going to the first steps.
    """

    name = "topk"
    hook_point = "select"
    Options = TopKOptions

    @hookimpl
    def on_block_start(self, state):
        if self.options.k is None:
            masked = state.selectable.sum(dim=1)  # (B,)
            steps = state.steps_per_block
            step_index = torch.arange(steps, device=masked.device)[None, :]
            schedule = masked[:, None] // steps + (step_index < (masked % steps)[:, None]).long()
            # rows usually share one schedule: then k is a plain int per step (no per-row k)
            if bool((schedule == schedule[:1]).all()):
                schedule = schedule[0].tolist()
            state.plugin_state[self.state_key] = schedule

    @hookimpl
    def select(self, state, proposal):
        if self.options.k is not None:
            k = self.options.k
        else:
            schedule = state.plugin_state[self.state_key]
            if isinstance(schedule, list):
                k = schedule[min(state.block_step, len(schedule) - 1)]
            else:
                k = schedule[:, min(state.block_step, schedule.shape[1] - 1)]
        return top_k_mask(state, masked_confidence(state, proposal), k)


class ThresholdOptions(OptionsModel):
    threshold: FiniteFloat = Field(0.9, gt=0.0, le=1.0, description="commit every open position with confidence >= this")
    near_max: FiniteFloat | None = Field(
        None, ge=0.0, description="dInfer's rule: also commit positions within this of the row's best "
                                  "(dInfer uses 1e-5; on a flat distribution every position is within it of a "
                                  "tiny best, so a whole block can commit in one forward, as dInfer does); "
                                  "none: exactly one best position (Fast-dLLM)")
    strict: StrictBool = Field(False, description="commit confidence > threshold instead of >= (SGLang's "
                                            "JointThreshold)")


class Threshold(Component):
    """Confidence-threshold parallel decoding: every open position of the block whose
    confidence is at least ``threshold``, and always the most confident one (Fast-dLLM: one
    position, torch.topk's choice among exact ties; with ``near_max``, dInfer's variant: every
    position whose confidence is at least ``min(threshold, best - near_max)``)."""

    name = "threshold"
    hook_point = "select"
    Options = ThresholdOptions

    @hookimpl
    def select(self, state, proposal):
        confidence = masked_confidence(state, proposal)
        above = confidence > self.options.threshold if self.options.strict else confidence >= self.options.threshold
        if self.options.near_max is None:
            return above | top_k_mask(state, confidence, 1)
        best = confidence.amax(dim=1, keepdim=True)
        return above | (confidence >= best - self.options.near_max)


class FactorOptions(OptionsModel):
    factor: FiniteFloat = Field(1.0, gt=0.0, description="n-th most confident token needs confidence >= 1 - factor/(n+1)")


class Factor(Component):
    """Fast-dLLM's factor rule: with confidences sorted in decreasing order c_1 >= c_2 >= ...,
    commit the longest prefix with c_n >= 1 - factor / (n + 1) (n >= 2; the first always
    commits), keeping Fast-dLLM's quirk that a prefix stopping one short of all open positions
    commits all of them."""

    name = "factor"
    hook_point = "select"
    Options = FactorOptions

    @hookimpl
    def select(self, state, proposal):
        confidence = masked_confidence(state, proposal)
        n_open = state.selectable.sum(dim=1)
        ordered = confidence.sort(dim=1, descending=True).values
        rank = torch.arange(1, ordered.shape[1] + 1, dtype=ordered.dtype, device=ordered.device)[None, :]
        thresholds = 1.0 - self.options.factor / (rank + 1.0)
        thresholds[:, 0] = -1.0
        below = (ordered < thresholds) | (rank > n_open[:, None])
        count = torch.where(below.any(dim=1), below.long().argmax(dim=1), n_open)
        count = torch.where(count == n_open - 1, n_open, count)
        return top_k_mask(state, confidence, count)


class EntropyBoundOptions(OptionsModel):
    gamma: FiniteFloat = Field(0.1, ge=0.0, description="bound on summed entropy minus the largest, in nats")


class EntropyBound(Component):
    """Entropy-bounded (EB) sampler: take open positions in increasing entropy and commit the
    largest prefix whose summed entropy minus its largest entropy is at most ``gamma``."""

    name = "entropy_bound"
    hook_point = "select"
    Options = EntropyBoundOptions

    @hookimpl
    def select(self, state, proposal):
        # only the block can commit: score it alone
        entropy = -negative_entropy(proposal.logits, "float64")
        entropy = entropy.masked_fill(~state.selectable, float("inf"))
        ordered, index = entropy.sort(dim=1, stable=True)
        finite = torch.isfinite(ordered)
        excess = torch.cumsum(ordered.masked_fill(~finite, 0.0), dim=1) - ordered.masked_fill(~finite, 0.0)
        keep = finite & (excess <= self.options.gamma)
        return torch.zeros_like(keep).scatter(1, index, keep)


class HierarchyOptions(OptionsModel):
    threshold: FiniteFloat | None = Field(0.9, gt=0.0, le=1.0, description="also commit every open position with confidence > this (None: off)")
    low_threshold: FiniteFloat | None = Field(0.3, ge=0.0, le=1.0, description="a run's most confident position commits only when its confidence > this (None: always)")


class Hierarchy(Component):
    """dInfer's hierarchical decoding: the open positions of the block form runs of adjacent
    positions; each run commits its most confident position (all of them on an exact tie) if its
    confidence is above ``low_threshold``; every open position above ``threshold`` commits too,
    and the block's most confident position always does. Committing one token per run spreads
    the commits apart, so neighbours are not decided from the same marginals."""

    name = "hierarchy"
    hook_point = "select"
    Options = HierarchyOptions

    @hookimpl
    def select(self, state, proposal):
        open_ = state.selectable
        confidence = masked_confidence(state, proposal)
        run_starts = open_ & ~torch.nn.functional.pad(open_[:, :-1], (1, 0), value=False)
        run = torch.where(open_, run_starts.long().cumsum(dim=1) - 1, 0)  # run index of each open position
        run_best = torch.full_like(confidence, NEG_INF).scatter_reduce(1, run, confidence, "amax")
        chosen = open_ & (confidence == run_best.gather(1, run))
        if self.options.low_threshold is not None:
            chosen = chosen & (confidence > self.options.low_threshold)
        if self.options.threshold is not None:
            chosen = chosen | (confidence > self.options.threshold)
        best = torch.zeros_like(open_).scatter(1, confidence.argmax(dim=1, keepdim=True), True)
        return chosen | best


@hookimpl
def dllm_decoding_register_components(register):
    for cls in (TopK, Threshold, Factor, EntropyBound, Hierarchy):
        register(cls)
