"""Remask components: send decided positions of the current block back to noise."""

from __future__ import annotations

import torch
from pydantic import Field

from dllm_decoding import Component, FiniteFloat, OptionsModel, StrictInt, hookimpl


class LowConfidenceRemaskOptions(OptionsModel):
    threshold: FiniteFloat = Field(0.3, gt=0.0, lt=1.0, description="reopen a decided token whose probability fell below this")
    max_per_step: StrictInt = Field(1, gt=0, description="reopen at most this many positions per row per step")


class LowConfidenceRemask(Component):
    """Reopen tokens decided in earlier steps whose current probability under the model has
    dropped below ``threshold`` (lowest first, at most ``max_per_step`` per row): a token
    committed early can be revised once its context is known."""

    name = "low_confidence_remask"
    hook_point = "remask"
    Options = LowConfidenceRemaskOptions

    @hookimpl
    def remask(self, state, proposal, commit):
        earlier = ~state.selectable & ~commit & state.active_rows[:, None]
        probs = torch.softmax(proposal.logits.to(torch.float64), dim=-1)
        current = probs.gather(-1, state.block_canvas[..., None]).squeeze(-1)
        weak = earlier & (current < self.options.threshold)
        k = min(self.options.max_per_step, weak.shape[1])
        order = current.masked_fill(~weak, float("inf")).topk(k, dim=1, largest=False).indices
        chosen = torch.zeros_like(weak).scatter(1, order, True)
        return chosen & weak


@hookimpl
def dllm_decoding_register_components(register):
    register(LowConfidenceRemask)
