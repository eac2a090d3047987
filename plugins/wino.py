"""WINO (Wide-In, Narrow-Out: revokable decoding, arXiv 2507.18578), as d2Cache's
``src/generation/wino.py`` runs it: three components.

Each step's forward also sees a *shadow block* (``shadow_block``, an ``extend`` component): a
copy of the current block, all ``[MASK]``, at the block's positions, in which position ``j``
attends to the whole canvas except block column ``j`` (and to the shadow block itself), while
no canvas position attends to the shadow. So one forward gives, besides the usual predictions,
a leave-one-out verification distribution for every block position.

- **Wide in** (``wino_wide_in``, select): every open position whose confidence is at least
  ``wide_in_threshold`` commits; more than ``max(n, clamp(int(0.7 * open), 5, 20))`` of them
  keep the most confident that many; fewer than ``n`` take the ``n`` most confident.
- **Narrow out** (``wino_narrow_out``, remask): a token decided *before* this step whose
  shadow probability (softmax of its shadow logits, float64, at the token it holds) is below
  ``narrow_out_threshold`` goes back to ``[MASK]``; at most ``wide in - n`` of them, the least
  confident first, so every step gains at least ``n`` tokens.

Ranking is over the block's columns (as d2Cache ranks them: ``torch.topk`` over the block).
"""

from __future__ import annotations

import torch
from pydantic import Field

from dllm_decoding import Component, Extension, FiniteFloat, OptionsModel, StrictInt, hookimpl

NEG_INF = float("-inf")


def block_top_k(scores: torch.Tensor, k: torch.Tensor, largest: bool = True) -> torch.Tensor:
    """Bool ``(B, L)``: each row's ``k[row]`` best columns of ``scores``, ranked by
    ``torch.topk(row, k[row])`` over the block as d2Cache ranks them (topk's choice among exact
    ties depends on ``k``, so rows are ranked in one call per distinct ``k``)."""
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    counts = k.tolist()
    for count in sorted(set(counts) - {0}):
        rows = torch.tensor([r for r, c in enumerate(counts) if c == count], device=scores.device)
        index = scores[rows].topk(min(count, scores.shape[1]), dim=1, largest=largest).indices
        chosen[rows] = torch.zeros_like(chosen[rows]).scatter(1, index, True)
    return chosen


class ShadowBlock(Component):
    """WINO's shadow block: ``[MASK]`` at every block position, each seeing the canvas but its
    own block column; its logits verify the decided tokens (``state.extension_logits``)."""

    name = "shadow_block"
    hook_point = "extend"

    @hookimpl
    def extend(self, state):
        batch, total = state.canvas.shape
        width, device = state.block_length, state.device
        columns = torch.arange(state.block_start, state.block_end, device=device)
        own = columns[:, None] == torch.arange(total, device=device)[None, :]  # (L, T)
        mask_id = 0 if state.mask_id is None else state.mask_id
        return Extension(tokens=torch.full((batch, width), mask_id, dtype=torch.long, device=device),
                         positions=columns[None, :].expand(batch, width),
                         sees=(~own)[None].expand(batch, width, total))


class WideInOptions(OptionsModel):
    wide_in_threshold: FiniteFloat = Field(0.6, ge=0.0, le=1.0, description="open positions at least this "
                                                                             "confident commit (wide in)")
    n: StrictInt = Field(1, gt=0, description="tokens gained per step at least (d2Cache's num_transfer_tokens)")


class WideIn(Component):
    """Commit every open position at least ``wide_in_threshold`` confident, at most
    ``max(n, clamp(int(0.7 * open), 5, 20))`` (the most confident), at least ``n``."""

    name = "wino_wide_in"
    hook_point = "select"
    Options = WideInOptions

    @hookimpl
    def select(self, state, proposal):
        open_ = state.selectable
        confidence = torch.where(open_, proposal.confidence, NEG_INF)
        n_open = open_.sum(dim=1)
        n = torch.full_like(n_open, self.options.n)
        cap = torch.maximum((n_open * 0.7).int().clamp(min=5, max=20).long(), n)
        above = confidence >= self.options.wide_in_threshold
        count = above.sum(dim=1)
        fallback = torch.where(count > cap, cap, torch.minimum(n, n_open))
        use_top = (count > cap) | (count < fallback)
        return torch.where(use_top[:, None], block_top_k(confidence, torch.where(use_top, fallback, 0)), above)


class NarrowOutOptions(OptionsModel):
    narrow_out_threshold: FiniteFloat = Field(0.9, ge=0.0, le=1.0, description="decided tokens whose shadow "
                                                                               "probability is below this are "
                                                                               "remasked (narrow out)")
    n: StrictInt = Field(1, gt=0, description="tokens gained per step at least: at most (committed this step "
                                              "- n) are remasked")


class NarrowOut(Component):
    """Remask tokens decided before this step whose shadow-block probability is below
    ``narrow_out_threshold``: at most ``committed this step - n`` of them, least confident first."""

    name = "wino_narrow_out"
    hook_point = "remask"
    Options = NarrowOutOptions

    @hookimpl
    def remask(self, state, proposal, commit):
        shadow = state.extension_logits
        if shadow is None:
            raise ValueError("wino_narrow_out reads the shadow block's logits: add extend = 'shadow_block' "
                             "to the strategy")
        decided_before = ~state.selectable & ~commit & state.active_rows[:, None]
        tokens = state.block_canvas
        probability = torch.softmax(shadow.to(torch.float64), dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
        scores = torch.where(decided_before, probability, float("inf"))
        below = scores < self.options.narrow_out_threshold
        target = (commit.sum(dim=1) - self.options.n).clamp(min=0)
        too_many = below.sum(dim=1) > target
        limited = block_top_k(scores, torch.where(too_many, target, 0), largest=False)
        return torch.where(too_many[:, None], limited, below) & decided_before


@hookimpl
def dllm_decoding_register_components(register):
    for cls in (ShadowBlock, WideIn, NarrowOut):
        register(cls)
