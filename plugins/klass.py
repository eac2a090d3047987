"""KLASS (KL-Adaptive Stability Sampling, arXiv 2511.05664) as a select component, as d2Cache's
``src/generation/klass.py`` computes it.

Every step, each answer position gets the KL divergence between its distribution now and at the
previous step; the last ``history`` divergences are kept per position. A position is *stable*
when all of them are below ``kl_threshold``; every open stable position of the block whose
confidence is at least ``threshold`` commits. A row with none commits its ``k`` most confident
open positions instead. The previous distribution and the divergence history are this
component's memory in ``state.plugin_state``: answer-wide for the whole decode, as d2Cache keeps
them (``scope = "answer"``, from the canvas-wide logits), or one block wide, reset when a block
starts (``scope = "block"``: block-width work, but a later block starts without history).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from dllm_decoding import Component, FiniteFloat, OptionsModel, StrictInt, hookimpl

NEG_INF = float("-inf")
KL_EPS = 1e-12  # d2Cache's


def answer_region_top_k(state, confidence: torch.Tensor, k: int) -> torch.Tensor:
    """Bool ``(B, L)``: each row's ``k`` most confident finite block positions, ranked by one
    ``torch.topk`` over the whole answer region (-inf outside the block), as d2Cache ranks it
    (torch.topk's choice among exact ties depends on the ranked row's length). The answer
    region does not depend on left padding, so a row ranks alike alone and in a batch."""
    offset = state.block_start - state.prompt_length
    row = torch.nn.functional.pad(confidence, (offset, state.gen_length - offset - confidence.shape[1]),
                                  value=NEG_INF)
    k = min(k, row.shape[1])
    values, index = row.topk(k, dim=1)
    chosen = torch.zeros_like(row, dtype=torch.bool).scatter(1, index, values > NEG_INF)
    return chosen[:, offset:offset + confidence.shape[1]]


class KlassOptions(OptionsModel):
    kl_threshold: FiniteFloat = Field(0.01, gt=0.0, description="a position is stable when its last `history` "
                                                                 "step-to-step KL divergences are all below this")
    history: StrictInt = Field(2, gt=0, description="how many consecutive KL divergences must stay below the bound")
    threshold: FiniteFloat = Field(0.9, ge=0.0, le=1.0, description="a stable open position commits when its "
                                                                    "confidence is >= this")
    k: StrictInt = Field(1, gt=0, description="fallback: a row with no stable confident position commits its k "
                                              "most confident open positions")
    scope: Literal["answer", "block"] = Field(
        "answer", description="where the KL history is kept: every answer position every step, as d2Cache (a later "
                              "block arrives with its history; needs canvas-wide logits and (B, answer, V) float64 "
                              "memory), or the current block only, from its first step (block-width, cheaper)")


class Klass(Component):
    """KLASS: commit every open position whose distribution stayed put (KL to the previous step
    below ``kl_threshold`` for ``history`` steps) and whose confidence is >= ``threshold``;
    otherwise the ``k`` most confident open positions (d2Cache's fallback)."""

    name = "klass"
    hook_point = "select"
    Options = KlassOptions

    @property
    def needs_canvas_logits(self) -> bool:
        return self.options.scope == "answer"

    @hookimpl
    def on_decode_start(self, state):
        state.plugin_state[self.state_key] = None

    @hookimpl
    def on_block_start(self, state):
        if self.options.scope == "block":
            state.plugin_state[self.state_key] = None

    @hookimpl
    def select(self, state, proposal):
        opts = self.options
        # the model's dtype, as d2Cache's softmax; the previous distribution is kept in float64
        if opts.scope == "answer":  # every answer position, this step's forward
            probs = torch.softmax(state.canvas_logits[:, state.prompt_length:], dim=-1)
        else:
            probs = torch.softmax(proposal.logits, dim=-1)
        memory = state.plugin_state[self.state_key]
        if memory is None:
            b, width, vocab = probs.shape
            memory = (torch.zeros(b, width, vocab, dtype=torch.float64, device=probs.device),
                      torch.zeros(b, width, opts.history, dtype=torch.float64, device=probs.device))
        previous, history = memory
        kl = (probs * (torch.log(probs + KL_EPS) - torch.log(previous + KL_EPS))).sum(dim=-1)
        active = state.active_rows
        shifted = torch.cat([history[..., 1:], kl[..., None]], dim=-1)
        history = torch.where(active[:, None, None], shifted, history)
        previous = torch.where(active[:, None, None], probs.to(torch.float64), previous)
        state.plugin_state[self.state_key] = (previous, history)

        stable = (history < opts.kl_threshold).all(dim=-1)
        if opts.scope == "answer":
            offset = state.block_start - state.prompt_length
            stable = stable[:, offset:offset + state.block_length]
        stable = stable & state.selectable
        confidence = torch.where(state.selectable, proposal.confidence, NEG_INF)
        chosen = stable & (confidence >= opts.threshold)
        fallback = answer_region_top_k(state, confidence, opts.k)
        return torch.where(chosen.any(dim=1, keepdim=True), chosen, fallback)


@hookimpl
def dllm_decoding_register_components(register):
    register(Klass)
