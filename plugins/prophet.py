"""Prophet early commit ("Diffusion Language Models Know the Answer Before Decoding", pixeli99/
Prophet ``generate_earlyexit.py``) as an early_commit component over LLaDA's top-k schedule.

Every step a check on the forward's logits: the mean gap between the top-1 and top-2 *logits*
over the monitored answer positions (wherever they are: the check sees the whole canvas). Once
it reaches the phase's bound (``early`` in the first third of the steps, ``mid`` in the second,
``late`` after), the row's answer ends: every remaining position takes its argmax from that
forward and the row stops.
"""

from __future__ import annotations

import torch
from pydantic import Field

from dllm_decoding import Component, FiniteFloat, OptionsModel, StrictInt, hookimpl


class ProphetOptions(OptionsModel):
    early: FiniteFloat = Field(7.5, ge=0.0, description="logit-gap bound while progress < 0.33")
    mid: FiniteFloat = Field(5.0, ge=0.0, description="logit-gap bound while progress < 0.67")
    late: FiniteFloat = Field(2.5, ge=0.0, description="logit-gap bound afterwards")
    answer_start: StrictInt = Field(0, ge=0, description="first monitored position, counted from the answer's start")
    answer_length: StrictInt = Field(5, gt=0, description="how many positions the mean gap is taken over")


class Prophet(Component):
    """Prophet: end a row's answer once the mean top-1 / top-2 logit gap over the monitored
    answer positions clears the phase's bound (``early`` / ``mid`` / ``late`` by the share of
    scheduled steps taken); the rest of the canvas takes the argmax of that forward."""

    name = "prophet"
    hook_point = "early_commit"
    Options = ProphetOptions

    @hookimpl
    def early_commit(self, state, logits):
        opts = self.options
        first = state.prompt_length + opts.answer_start
        last = min(state.prompt_length + state.gen_length, first + opts.answer_length)
        if first >= last:
            return None
        top2 = logits[:, first:last].topk(2, dim=-1).values
        gaps = (top2[..., 0] - top2[..., 1]).to(torch.float64)
        mean = gaps.cumsum(dim=1)[:, -1] / gaps.shape[1]  # summed left to right, as Prophet's Python sum
        steps = state.steps_per_block * state.num_blocks
        progress = torch.tensor(state.forwards_per_row, dtype=torch.float64, device=state.device) / steps
        bound = torch.where(progress < 0.33, opts.early, torch.where(progress < 0.67, opts.mid, opts.late))
        return mean >= bound


@hookimpl
def dllm_decoding_register_components(register):
    register(Prophet)
