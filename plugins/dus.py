"""Dilated Unmasking Scheduling (DUS, "Plan for Speed: Dilated Scheduling for Masked Diffusion
Language Models", arXiv 2506.19037) as a select component.

A block of ``B`` positions is unmasked in ``R = ceil(log_a B)`` steps; step ``t`` (1-based)
commits the positions ``j`` not yet committed with ``j mod s_t == 0``, ``s_t = max(1, B // a^t)``,
so each step's group is spread out (non-adjacent) and neighbours are decided in later steps,
conditioned on the tokens around them. The last group is merged into the one before it when
it is smaller. The groups do not depend on the model: the schedule is fixed by ``B`` and ``a``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from pydantic import Field

from dllm_decoding import Component, FiniteFloat, OptionsModel, hookimpl


@lru_cache(maxsize=64)
def dilated_groups(block_length: int, base: float) -> tuple[tuple[int, ...], ...]:
    """The block's positions, one group per step, in DUS's order."""
    steps = math.ceil(math.log(block_length) / math.log(base))
    groups: list[list[int]] = []
    done: set[int] = set()
    for t in range(1, steps + 1):
        stride = max(1, int(block_length // (base ** t)))
        group = [j for j in range(block_length) if j not in done and j % stride == 0]
        if t == steps and groups and len(group) < len(groups[-1]):
            groups[-1].extend(group)
            continue
        groups.append(group)
        done.update(group)
    # with base < 2 the strides reach 1 before the last step: the groups after it are empty and
    # would cost forwards that commit nothing
    return tuple(tuple(g) for g in groups if g)


class DilatedOptions(OptionsModel):
    base: FiniteFloat = Field(2.0, gt=1.0, description="dilation base a: ceil(log_a block_length) steps per block")


class Dilated(Component):
    """DUS: one dilated group of the block per step (strides ``block_length // base^t``), so a
    block takes ``ceil(log_base block_length)`` forwards whatever the model says."""

    name = "dilated"
    hook_point = "select"
    Options = DilatedOptions

    @hookimpl
    def select(self, state, proposal):
        groups = dilated_groups(state.block_length, self.options.base)
        if state.block_step >= len(groups):  # past the schedule (a reopened position): everything
            return state.selectable
        group = torch.zeros(state.block_length, dtype=torch.bool, device=state.device)
        group[list(groups[state.block_step])] = True
        return state.selectable & group[None, :]


@hookimpl
def dllm_decoding_register_components(register):
    register(Dilated)
