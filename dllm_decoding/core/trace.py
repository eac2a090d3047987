"""Trace recording: what every position predicted, how confidently, and when it committed.

``dd.generate(..., trace=True)`` adds a :class:`TraceRecorder` observer and returns a
:class:`Trace` in ``out.trace``. When tracing is off no observer is registered and the loop
does not even build step records, so recording costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .components import Component
from .hookspecs import hookimpl


@dataclass(frozen=True)
class Trace:
    """Per step ``S``, per row ``B``, per position ``T`` (the answer region only, ``G`` wide).

    ``argmax`` ``(S, B, G)`` proposed token; ``confidence`` ``(S, B, G)``; ``committed``
    ``(S, B, G)`` bool, committed in that step; ``reopened`` likewise; ``active`` ``(S, B)``;
    ``block`` ``(S,)`` block index of each step; ``final`` ``(B, G)`` the output tokens.
    """

    argmax: torch.Tensor
    confidence: torch.Tensor
    committed: torch.Tensor
    reopened: torch.Tensor
    active: torch.Tensor
    block: torch.Tensor
    final: torch.Tensor
    block_length: int

    @property
    def num_steps(self) -> int:
        return self.argmax.shape[0]

    def commit_step(self) -> torch.Tensor:
        """``(B, G)`` long: the last step at which each position was committed (-1 if never)."""
        steps = torch.arange(self.num_steps, device=self.committed.device)[:, None, None].expand_as(self.committed)
        return torch.where(self.committed, steps, -1).amax(dim=0)

    def earliest_correct_step(self) -> torch.Tensor:
        """``(B, G)`` long: the first step from which the position's argmax equalled its final
        token at every later step while it was still being decoded (its block active), -1 if
        it never did before committing. Steps outside the position's block don't count."""
        commit = self.commit_step()
        device = self.committed.device
        steps = torch.arange(self.num_steps, device=device)[:, None, None]
        g = self.final.shape[1]
        position_block = (torch.arange(g, device=device) // self.block_length)[None, None, :]
        relevant = (self.block[:, None, None] == position_block) & self.active[:, :, None]
        relevant = relevant & (steps <= commit[None])
        wrong = relevant & (self.argmax != self.final[None])
        # last wrong step among relevant steps; correct run starts after it
        last_wrong = torch.where(wrong, steps.expand_as(wrong), -1).amax(dim=0)
        first_relevant = torch.where(relevant, steps.expand_as(relevant), self.num_steps).amin(dim=0)
        start = torch.maximum(last_wrong + 1, first_relevant)
        return torch.where((start <= commit) & (commit >= 0), start, -1)

    def commit_gap(self) -> torch.Tensor:
        """``(B, G)`` long: steps between a token first being (and staying) right and its commit."""
        early = self.earliest_correct_step()
        return torch.where(early >= 0, self.commit_step() - early, 0)


class TraceRecorder(Component):
    """Observer that records every step of a decode into a :class:`Trace`."""

    name = "trace"
    hook_point = "observer"

    @hookimpl
    def on_decode_start(self, state):
        state.plugin_state[self.state_key] = []

    @hookimpl
    def on_step_end(self, state, record):
        # the step hooks work on the block; the trace is answer-wide: positions outside the
        # block show their current token, confidence -inf, nothing committed or reopened
        p, lo, hi = state.prompt_length, record.block_start - state.prompt_length, \
            record.block_start - state.prompt_length + state.block_length
        answer = record.canvas[:, p:]

        def widen(block: torch.Tensor, fill: Any) -> torch.Tensor:
            return torch.nn.functional.pad(block, (lo, answer.shape[1] - hi), value=fill)

        tokens = answer.clone()
        tokens[:, lo:hi] = record.proposal.tokens
        committed = widen(record.commit, False)
        if record.filled is not None:  # an early commit filled later blocks: committed now
            committed = committed | record.filled[:, p:]
            tokens = torch.where(record.filled[:, p:], answer, tokens)
        state.plugin_state[self.state_key].append((
            tokens, widen(record.proposal.confidence.to(torch.float32), float("-inf")),
            committed, widen(record.reopen, False), record.active_rows, record.block_index))

    @hookimpl
    def on_decode_end(self, state, output):
        steps = state.plugin_state.pop(self.state_key)
        g = state.gen_length
        b = state.batch_size
        device = output.sequences.device

        def stack(i: int, empty: torch.Tensor) -> torch.Tensor:
            return torch.stack([s[i] for s in steps]) if steps else empty

        output.trace = Trace(
            argmax=stack(0, torch.zeros(0, b, g, dtype=torch.long, device=device)),
            confidence=stack(1, torch.zeros(0, b, g, device=device)),
            committed=stack(2, torch.zeros(0, b, g, dtype=torch.bool, device=device)),
            reopened=stack(3, torch.zeros(0, b, g, dtype=torch.bool, device=device)),
            active=stack(4, torch.zeros(0, b, dtype=torch.bool, device=device)),
            block=torch.tensor([s[5] for s in steps], dtype=torch.long, device=device),
            final=output.sequences[:, state.prompt_length:].clone(),
            block_length=state.block_length,
        )
