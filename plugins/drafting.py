"""FreeDave-style draft-and-verify (arXiv 2510.00294): after each step, draft the canvases the
one-token-per-step rule would reach next if its ranking held, and verify them all in one batched
forward; a step that reaches a drafted canvas needs no forward. The output is exactly the
one-token-per-step decode's, in fewer forwards."""

from __future__ import annotations

import torch
from pydantic import Field

from dllm_decoding import Component, OptionsModel, StrictInt, hookimpl


class NextCommitsOptions(OptionsModel):
    depth: StrictInt = Field(4, ge=1, le=64, description="drafted canvases per verification forward: the "
                             "canvas after this step, then with the next 1, 2, ... most confident open "
                             "positions committed too")


class NextCommits(Component):
    """Drafts for a one-token-per-step rule (``topk`` with k = 1): the canvas as it is after this
    step, then with this step's 2nd, 3rd, ... most confident open positions committed to their
    proposed tokens, one more each. When the rule's next choices follow this step's ranking,
    the drafts are exactly the canvases it reaches; a wrong draft only costs compute."""

    name = "next_commits"
    hook_point = "draft"
    Options = NextCommitsOptions

    @hookimpl
    def draft(self, state, proposal, commit):
        block = state.block_canvas
        more = min(self.options.depth - 1, block.shape[1])
        if more == 0:
            return block[:, None]
        confidence = torch.where(state.selectable, proposal.confidence, float("-inf"))
        values, order = confidence.topk(more, dim=1)  # (B, D - 1): the next commits, best first
        placed = torch.zeros(*order.shape, block.shape[1], dtype=torch.long, device=block.device)
        placed.scatter_(2, order[..., None], (values > float("-inf")).long()[..., None])
        # draft j holds the first j - 1 of them: a cumulative sum over the drafts
        upto = torch.cat([torch.zeros_like(placed[:, :1]), placed.cumsum(dim=1)], dim=1) > 0  # (B, D, L)
        return torch.where(upto, proposal.tokens[:, None], block[:, None])


@hookimpl
def dllm_decoding_register_components(register):
    register(NextCommits)
