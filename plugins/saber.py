"""Saber ("Saber: An Efficient Sampling with Adaptive Acceleration and Backtracking Enhanced
Remasking for Diffusion Language Model", arXiv 2510.18165) as a select and a remask component,
as zhaoyMa/Saber ``decoding.py::generate_with_saber`` computes it.

* **Adaptive acceleration** (``saber`` select): the threshold is the mean confidence every
  position had when it was committed (its latest commit, remasked ones included; 1 before the
  first commit); every open position above it commits, at least the ``n`` most confident.
* **Backtracking** (``saber_backtrack`` remask): after the commits, the decided positions whose
  confidence fell most since the previous step are reopened:
  ``max(n // 2, ceil(m / 8))`` of them, at most ``m - 1``, where ``m = max(n, commits)``.
"""

from __future__ import annotations

import torch
from pydantic import Field

from dllm_decoding import Component, OptionsModel, StrictInt, hookimpl
from dllm_decoding.plugins.selection import top_k_mask

NEG_INF, INF = float("-inf"), float("inf")


class SaberOptions(OptionsModel):
    n: StrictInt = Field(2, gt=0, description="at least this many positions commit per step (and n // 2 are "
                                              "reopened at least)")


class Saber(Component):
    """Saber's adaptive acceleration: commit every open position whose confidence is above the
    mean confidence of all commits so far (1 before any), at least the ``n`` most confident."""

    name = "saber"
    hook_point = "select"
    Options = SaberOptions

    @hookimpl
    def on_decode_start(self, state):
        # confidence of each answer position at its latest commit (-inf: never committed)
        state.plugin_state[self.state_key] = torch.full(
            (state.batch_size, state.gen_length), NEG_INF, dtype=torch.float32, device=state.device)

    @hookimpl
    def select(self, state, proposal):
        committed_with = state.plugin_state[self.state_key]
        seen = committed_with[:, :state.block_end - state.prompt_length]
        finite = torch.isfinite(seen)
        count = finite.sum(dim=1)
        mean = torch.where(finite, seen, 0.0).sum(dim=1) / count.clamp(min=1).to(seen.dtype)
        threshold = torch.where(count > 0, mean, 1.0).to(proposal.confidence.dtype)
        confidence = torch.where(state.selectable, proposal.confidence, NEG_INF)
        above = confidence > threshold[:, None]
        enough = above.sum(dim=1, keepdim=True) >= self.options.n
        chosen = torch.where(enough, above, top_k_mask(state, confidence, self.options.n)) & state.selectable
        offset = state.block_start - state.prompt_length
        block = committed_with[:, offset:offset + state.block_length]
        block = torch.where(chosen, proposal.confidence.to(torch.float32), block)
        state.plugin_state[self.state_key] = torch.cat(
            [committed_with[:, :offset], block, committed_with[:, offset + state.block_length:]], dim=1)
        return chosen


class SaberBacktrack(Component):
    """Saber's backtracking remask: reopen the decided positions whose confidence dropped most
    since the previous step, ``max(n // 2, ceil(m / 8))`` of them (at most ``m - 1``), ``m`` =
    ``max(n, this step's commits)``."""

    name = "saber_backtrack"
    hook_point = "remask"
    Options = SaberOptions

    @hookimpl
    def on_block_start(self, state):
        # Saber's previous confidence starts at 0; a later block's positions were beyond the
        # previous block end at the step before (-inf), so they are no candidates at first
        fill = 0.0 if state.block_index == 0 else NEG_INF
        state.plugin_state[self.state_key] = torch.full(
            (state.batch_size, state.block_length), fill, dtype=torch.float32, device=state.device)

    @hookimpl
    def remask(self, state, proposal, commit):
        previous = state.plugin_state[self.state_key]
        confidence = proposal.confidence.to(torch.float32)
        drop = confidence - previous
        drop = torch.where(torch.isfinite(drop), drop, INF)
        state.plugin_state[self.state_key] = torch.where(state.active_rows[:, None], confidence, previous)
        decided = ~state.selectable & state.active_rows[:, None]
        candidates = decided & (drop < INF)
        n = self.options.n
        made = torch.clamp(commit.sum(dim=1), min=n)
        quota = torch.minimum(torch.clamp((made + 7) // 8, min=n // 2), made - 1)
        # a row whose block is complete stops there (Saber breaks before backtracking)
        quota = torch.where(state.selectable.any(dim=1), quota, 0)
        if int(quota.max()) == 0:
            return None
        return top_k_mask(state, torch.where(candidates, -drop, NEG_INF), quota)


@hookimpl
def dllm_decoding_register_components(register):
    register(Saber)
    register(SaberBacktrack)
