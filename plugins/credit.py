"""CreditDecoding (arXiv 2510.06133) as a fuse component, as dInfer's
``CreditThresholdParallelDecoder`` computes it.

Every step, each open position of the current block earns credit for its current argmax token:
credit decays by ``beta`` and grows by ``p_top1 ** gamma``; the logits are then fused as
``logits + alpha * log(1 + credit)``, so a token that stayed the argmax for several steps gains
confidence and commits sooner. The credit table lives in the decode state (one per decode),
covers only the current block and is reset when a block starts: dense ``(B, L, V)`` float32,
updated in place (it is the component's own memory, never a hook input) as dInfer's is, or, with
``slots = K``, sparse: ``K`` (token, credit) slots per position, as SGLang keeps it.
"""

from __future__ import annotations

import torch
from pydantic import Field

from dllm_decoding import Component, FiniteFloat, OptionsModel, StrictInt, hookimpl


class CreditOptions(OptionsModel):
    alpha: FiniteFloat = Field(0.7, ge=0.0, le=1000.0, description="weight of log(1 + credit) added to the logits "
                               "(at most 1000: beyond, the fused logits overflow and credit alone decides)")
    beta: FiniteFloat = Field(0.8, ge=0.0, le=1.0, description="per-step decay of accumulated credit")
    gamma: FiniteFloat = Field(0.2, ge=0.0, description="exponent of the top-1 probability added as credit")
    slots: StrictInt | None = Field(
        None, gt=0, description="None: a dense (B, L, V) credit table (dInfer); K: a sparse table of K "
                                "(token, credit) slots per position (SGLang-style, O(B x L x K) memory), "
                                "exact to the dense one while no position has more than K argmax tokens in "
                                "a block (always when K >= the block's steps); when full, the least credited "
                                "slot is replaced")


class Credit(Component):
    """CreditDecoding's trace credit: each open position of the current block accumulates
    credit for its argmax token (decayed by ``beta``, boosted by ``p_top1 ** gamma`` per step),
    fused as ``logits + alpha * log(1 + credit)``. Reset at every block start."""

    name = "credit"
    hook_point = "fuse"
    Options = CreditOptions

    @hookimpl
    def on_block_start(self, state):
        state.plugin_state[self.state_key] = None

    @hookimpl
    def fuse(self, state, logits):
        opts = self.options
        # float32 softmax as dInfer's (bf16 logits are promoted inside the softmax, no copy)
        top_p, top_token = torch.softmax(logits, dim=-1, dtype=torch.float32).max(dim=-1)
        earn = top_p.pow(opts.gamma) * state.selectable  # only open positions of active rows earn
        # inactive rows keep their credit untouched
        decay = opts.beta if bool(state.active_rows.all()) else \
            torch.where(state.active_rows, opts.beta, 1.0)[:, None, None]
        if opts.slots is None:
            bonus = self._dense_bonus(state, logits, top_token, earn, decay)
            # the sum promotes to float32 as dInfer's does (bf16 models included)
            return bonus.add_(logits) if logits.dtype == torch.float32 else logits + bonus
        tokens, bonus = self._sparse_bonus(state, logits, top_token, earn, decay)
        fused = logits.to(torch.float32, copy=True)
        return fused.scatter_add_(-1, tokens, bonus)

    def _dense_bonus(self, state, logits, top_token, earn, decay):
        """``alpha * log(credit + 1)`` over the whole vocabulary, from a ``(B, L, V)`` float32
        table that is this component's own memory (updated in place, as dInfer's is)."""
        credit = state.plugin_state[self.state_key]
        if credit is None:
            credit = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
            state.plugin_state[self.state_key] = credit
        else:
            credit.mul_(decay)
        self._earn(state, credit, logits, top_token, earn)
        # log(credit + 1), not log1p: the same float32 rounding as dInfer, so thresholds agree bit for bit
        return torch.add(credit, 1).log_().mul_(self.options.alpha)

    def _earn(self, state, credit, logits, top_token, earn):
        """Add this step's earned credit to the dense table, in place: at each argmax token."""
        credit.scatter_add_(-1, top_token[..., None], earn[..., None])

    def _sparse_bonus(self, state, logits, top_token, earn, decay):
        """``(tokens, alpha * log(credit + 1))`` ``(B, L, K)`` for the slots of a sparse table:
        a position's slots hold the tokens that were its argmax in this block. Each step decays
        every slot, adds the earned credit to the slot of the current argmax, or opens a slot
        for it (the least credited one when all K are taken). The same float32 operations as the
        dense table on the same entries, so the fused logits are bit for bit the dense ones."""
        table = state.plugin_state[self.state_key]
        b, width = top_token.shape
        if table is None:
            shape = (b, width, self.options.slots)
            table = (torch.zeros(shape, dtype=torch.long, device=logits.device),
                     torch.zeros(shape, dtype=torch.float32, device=logits.device),
                     torch.zeros(shape, dtype=torch.bool, device=logits.device))
        else:
            table = (table[0], table[1] * decay, table[2])
        tokens, credit, used = table
        match = used & (tokens == top_token[..., None])
        opens = ~match.any(dim=-1) & (earn > 0)
        # a free slot if there is one, else the least credited
        slot = torch.where(used, credit, float("-inf")).argmin(dim=-1, keepdim=True)
        slot = torch.where(used.all(dim=-1, keepdim=True), slot, (~used).long().argmax(dim=-1, keepdim=True))
        opened = torch.zeros_like(used).scatter(-1, slot, True) & opens[..., None]
        tokens = torch.where(opened, top_token[..., None], tokens)
        credit = torch.where(opened, 0.0, credit) + (match | opened) * earn[..., None]
        used = used | opened
        state.plugin_state[self.state_key] = (tokens, credit, used)
        bonus = torch.add(credit, 1).log_().mul_(self.options.alpha).masked_fill_(~used, 0.0)
        return tokens, bonus


@hookimpl
def dllm_decoding_register_components(register):
    register(Credit)
