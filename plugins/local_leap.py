"""LocalLeap ("Accelerating Diffusion LLM Inference via Local Determinism Propagation", arXiv
2510.07081, friedrichor/LocalLeap) as a select component.

Fast-dLLM's confidence threshold with a local relaxation: an open position of the block whose
confidence reaches ``threshold`` is an *anchor*; an open position at most ``radius`` columns
from an anchor commits already at ``relaxed_threshold``; the others still need ``threshold``.
The most confident open position always commits. The neighbourhood is a windowed count of
anchors (one ``cumsum``), so the rule is a handful of ``(B, L)`` tensor ops per step.
"""

from __future__ import annotations

import torch
from pydantic import Field

from dllm_decoding import Component, FiniteFloat, OptionsModel, StrictInt, hookimpl
from dllm_decoding.plugins.selection import masked_confidence, top_k_mask


def near_anchors(anchors: torch.Tensor, radius: int) -> torch.Tensor:
    """Bool ``(B, L)``: the columns at most ``radius`` from a True column of ``anchors``
    (its dilation by ``radius``, clipped to the block), from one cumulative count."""
    width = anchors.shape[1]
    counts = torch.nn.functional.pad(anchors.to(torch.int32).cumsum(dim=1), (1, 0))  # (B, L + 1)
    cols = torch.arange(width, device=anchors.device)
    hi = (cols + radius + 1).clamp(max=width)
    lo = (cols - radius).clamp(min=0)
    return (counts[:, hi] - counts[:, lo]) > 0


class LocalLeapOptions(OptionsModel):
    threshold: FiniteFloat = Field(0.9, gt=0.0, le=1.0, description="anchors: open positions with confidence >= this "
                                                                    "(they commit)")
    relaxed_threshold: FiniteFloat = Field(0.75, ge=0.0, le=1.0, description="an open position within `radius` of an "
                                                                             "anchor commits with confidence >= this")
    radius: StrictInt = Field(4, ge=0, description="the neighbourhood of an anchor: positions at most this many "
                                                   "columns away, on either side")


class LocalLeap(Component):
    """LocalLeap (arXiv 2510.07081): anchors (confidence >= ``threshold``) commit, and so does
    every open position within ``radius`` of an anchor whose confidence is >= ``relaxed_threshold``;
    always the most confident one. Exact to LocalLeap's LLaDA ``generate`` (threshold mode)."""

    name = "local_leap"
    hook_point = "select"
    Options = LocalLeapOptions

    @hookimpl
    def select(self, state, proposal):
        opts = self.options
        confidence = masked_confidence(state, proposal)
        anchors = confidence >= opts.threshold
        # without anchors nothing is near one: every position needs `threshold`, as in LocalLeap
        near = near_anchors(anchors, opts.radius)
        chosen = torch.where(near, confidence >= opts.relaxed_threshold, anchors)
        return chosen | top_k_mask(state, confidence, 1)


@hookimpl
def dllm_decoding_register_components(register):
    register(LocalLeap)
