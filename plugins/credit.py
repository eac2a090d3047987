"""CreditDecoding (arXiv 2510.06133) as a fuse component, as dInfer's
``CreditThresholdParallelDecoder`` computes it.

Every step, each open position of the current block earns credit for its current argmax token:
credit decays by ``beta`` and grows by ``p_top1 ** gamma``; the logits are then fused as
``logits + alpha * log(1 + credit)``, so a token that stayed the argmax for several steps gains
confidence and commits sooner. The credit table lives in the decode state (one per decode),
covers only the current block ``(B, L, V)`` in float32 and is reset when a block starts; it is
updated in place (it is the component's own memory, never a hook input), as dInfer's is.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from dllm_decoding import Component, hookimpl


class CreditOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(0.7, ge=0.0, description="weight of log(1 + credit) added to the logits")
    beta: float = Field(0.8, ge=0.0, le=1.0, description="per-step decay of accumulated credit")
    gamma: float = Field(0.2, ge=0.0, description="exponent of the top-1 probability added as credit")


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
        credit = state.plugin_state[self.state_key]
        if credit is None:  # the table is this component's own memory: updated in place
            credit = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
            state.plugin_state[self.state_key] = credit
        elif bool(state.active_rows.all()):
            credit.mul_(opts.beta)
        else:  # inactive rows keep their credit untouched
            credit.mul_(torch.where(state.active_rows, opts.beta, 1.0)[:, None, None])
        credit.scatter_add_(-1, top_token[..., None], earn[..., None])
        # log(credit + 1), not log1p: the same float32 rounding as dInfer, so thresholds agree
        # bit for bit; the sum promotes to float32 as dInfer's does (bf16 models included)
        bonus = torch.add(credit, 1).log_().mul_(opts.alpha)
        return bonus.add_(logits) if logits.dtype == torch.float32 else logits + bonus


@hookimpl
def dllm_decoding_register_components(register):
    register(Credit)
