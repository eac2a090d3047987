"""Prophet early commit ("Diffusion Language Models Know the Answer Before Decoding", pixeli99/
Prophet ``generate_earlyexit.py``) as a select component.

LLaDA's top-k schedule, and before every step's commit a check: the mean gap between the top-1
and top-2 *logits* over the monitored answer positions. Once it reaches the phase's bound
(``early`` in the first third of the steps, ``mid`` in the second, ``late`` after), the row
commits every open position at once. Prophet then stops the whole decode; a select component
can only commit the current block, so a triggered row here commits each later block whole at
its first step (one forward per remaining block).
"""

from __future__ import annotations

import torch
from pydantic import Field

from dllm_decoding import FiniteFloat, StrictInt, hookimpl
from dllm_decoding.plugins.selection import TopK, TopKOptions


class ProphetOptions(TopKOptions):
    early: FiniteFloat = Field(7.5, ge=0.0, description="logit-gap bound while progress < 0.33")
    mid: FiniteFloat = Field(5.0, ge=0.0, description="logit-gap bound while progress < 0.67")
    late: FiniteFloat = Field(2.5, ge=0.0, description="logit-gap bound afterwards")
    answer_start: StrictInt = Field(0, ge=0, description="first monitored position, counted from the answer's start")
    answer_length: StrictInt = Field(5, gt=0, description="how many positions the mean gap is taken over")


class Prophet(TopK):
    """Prophet: LLaDA's top-k schedule until the mean top-1 / top-2 logit gap over the
    monitored answer positions clears the phase's bound (``early`` / ``mid`` / ``late`` by the
    share of steps taken), then the rest of the block at once (and every later block whole)."""

    name = "prophet"
    hook_point = "select"
    Options = ProphetOptions

    @hookimpl
    def on_decode_start(self, state):
        state.plugin_state[self.state_key + ":fired"] = torch.zeros(
            state.batch_size, dtype=torch.bool, device=state.device)

    @hookimpl
    def select(self, state, proposal):
        key = self.state_key + ":fired"
        fired = state.plugin_state[key] | (self._gap_clears(state, proposal) & state.active_rows)
        state.plugin_state[key] = fired
        scheduled = super().select(state, proposal)
        return torch.where(fired[:, None], state.selectable, scheduled)

    def _gap_clears(self, state, proposal) -> torch.Tensor:
        """(B,) bool: the monitored positions have a mean logit gap at or above the bound of the
        row's phase (progress = the row's forwards / all scheduled steps). Only checked while the
        monitored positions lie in the current block: step hooks see the block's logits only."""
        opts = self.options
        first = state.prompt_length + opts.answer_start
        last = min(state.prompt_length + state.gen_length, first + opts.answer_length)
        if not state.block_start <= first < last <= state.block_end:
            return torch.zeros(state.batch_size, dtype=torch.bool, device=state.device)
        top2 = proposal.logits[:, first - state.block_start:last - state.block_start].topk(2, dim=-1).values
        gaps = (top2[..., 0] - top2[..., 1]).to(torch.float64)
        mean = gaps.cumsum(dim=1)[:, -1] / gaps.shape[1]  # summed left to right, as Prophet's Python sum
        steps = state.steps_per_block * state.num_blocks
        progress = torch.tensor(state.forwards_per_row, dtype=torch.float64, device=state.device) / steps
        bound = torch.where(progress < 0.33, opts.early, torch.where(progress < 0.67, opts.mid, opts.late))
        return mean >= bound


@hookimpl
def dllm_decoding_register_components(register):
    register(Prophet)
