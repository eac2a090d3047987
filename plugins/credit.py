"""CreditDecoding (arXiv 2510.06133) as a fuse component, as dInfer's
``CreditThresholdParallelDecoder`` computes it.

Every step, each open position of the current block earns credit for its current argmax token:
credit decays by ``beta`` and grows by ``p_top1 ** gamma``; the logits are then fused as
``logits + alpha * log(1 + credit)``, so a token that stayed the argmax for several steps gains
confidence and commits sooner. The credit table lives in the decode state (one per decode),
covers only the current block and is reset when a block starts.
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
        start, end = state.block_start, state.block_end
        block = logits[:, start:end]
        probs = torch.softmax(block.to(torch.float32), dim=-1)
        top_p, top_token = probs.max(dim=-1)
        earn = (state.open[:, start:end] & state.active_rows[:, None]).to(probs.dtype)
        boost = torch.zeros_like(probs).scatter(-1, top_token[..., None], (top_p.pow(opts.gamma) * earn)[..., None])
        previous = state.plugin_state[self.state_key]
        credit = boost if previous is None else previous * opts.beta + boost
        if previous is not None:  # inactive rows keep their credit untouched
            credit = torch.where(state.active_rows[:, None, None], credit, previous)
        state.plugin_state[self.state_key] = credit
        # log(credit + 1), not log1p: the same float32 rounding as dInfer, so thresholds agree
        # bit for bit; the sum promotes to float32 as dInfer's does (bf16 models included)
        fused = block + opts.alpha * torch.log(credit + 1)
        rest = logits.to(fused.dtype)
        return torch.cat([rest[:, :start], fused, rest[:, end:]], dim=1)


@hookimpl
def dllm_decoding_register_components(register):
    register(Credit)
