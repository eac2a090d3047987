"""Token editing: replace decided tokens by better ones without reopening them (LLaDA2.1's
mask-to-token + token-to-token decoding, as SGLang's ``JointThreshold`` runs it), and the
previous-token penalty that goes with it."""

from __future__ import annotations

import torch
from pydantic import Field

from dllm_decoding import Component, FiniteFloat, OptionsModel, StrictInt, hookimpl


class TokenEditOptions(OptionsModel):
    edit_threshold: FiniteFloat = Field(0.0, ge=0.0, le=1.0, description="replace a decided token by the "
                                        "proposed one when the proposal's confidence is > this")
    max_post_edit_steps: StrictInt = Field(16, ge=0, description="steps a row may take in a block after its "
                                           "last position is committed; the step after them edits nothing")


class TokenEdit(Component):
    """Token-to-token editing (SGLang ``JointThreshold``'s T2T): every position decided before
    this step whose proposed token differs from its current one and whose confidence is above
    ``edit_threshold`` takes the proposed token. A row keeps stepping in the block while its
    steps change something; once the block is full it gets ``max_post_edit_steps`` more steps
    (the next one edits nothing, so the row stops). Use with a ``confidence`` scorer (the
    argmax's probability, as SGLang's)."""

    name = "token_edit"
    hook_point = "edit"
    Options = TokenEditOptions

    @hookimpl
    def on_block_start(self, state):
        state.plugin_state[self.state_key] = torch.zeros(state.batch_size, dtype=torch.long, device=state.device)

    @hookimpl
    def edit(self, state, proposal, commit):
        # a step that began with no open position in the block is a post-fill step
        post_fill = ~(state.selectable | commit).any(dim=1) & state.active_rows
        counts = state.plugin_state[self.state_key] + post_fill.long()
        state.plugin_state[self.state_key] = counts
        allowed = ~post_fill | (counts <= self.options.max_post_edit_steps)
        return (proposal.confidence > self.options.edit_threshold) & allowed[:, None]


class PreviousTokenPenaltyOptions(OptionsModel):
    penalty: FiniteFloat = Field(0.0, ge=0.0, le=1000.0, description="subtracted from each block position's "
                                 "logit of the token currently at the position before it")


class PreviousTokenPenalty(Component):
    """SGLang ``JointThreshold``'s ``penalty_lambda``: each block position but the first loses
    ``penalty`` on the logit of the token its left neighbour holds now ([MASK] included), which
    discourages repeating a token."""

    name = "previous_token_penalty"
    hook_point = "fuse"
    Options = PreviousTokenPenaltyOptions

    @hookimpl
    def fuse(self, state, logits):
        if self.options.penalty == 0:
            return logits
        previous = state.block_canvas[:, :-1, None]
        penalty = torch.full(previous.shape, -self.options.penalty, dtype=logits.dtype, device=logits.device)
        shifted = logits[:, 1:].scatter_add(-1, previous, penalty)
        return torch.cat([logits[:, :1], shifted], dim=1)


@hookimpl
def dllm_decoding_register_components(register):
    register(TokenEdit)
    register(PreviousTokenPenalty)
