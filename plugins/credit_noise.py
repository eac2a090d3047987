"""CreditDecoding with noise injected into the credit itself: wrong tokens accumulating credit.

The CreditDecoding paper (arXiv 2510.06133) argues that credit only ever reinforces the token a
position keeps predicting; it leaves open what happens when credit goes to the wrong token.
``credit_noise`` is the ``credit`` fuse component (the same dense table, the same fused logits)
plus, every step, at each open position with probability ``p``, the step's earned credit
(``p_top1 ** gamma``, times ``scale``) given also to a wrong token: a uniformly random token other than the argmax
(``target = "random"``), or the runner-up (``target = "runner_up"``: the plausible wrong token,
which then accumulates credit step after step). With ``scale = 1`` a wrong token never
out-earns a stable argmax, so it can flip a commit only where the argmax itself wavers or its
lead is below the bonus; ``scale > 1`` models credit that systematically favours it. The draws come from ``state.uniform`` (each
row's own seeded generator), so a decode repeats exactly and a row decodes the same alone as in
a batch; with ``p = 0`` nothing is drawn and the output is plain credit's, bit for bit.
It is a stress tool for the failure analysis (``dllm-decode bench --credit-noise``), not a rule.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from dllm_decoding import FiniteFloat, hookimpl
from dllm_decoding.plugins.credit import Credit, CreditOptions


class CreditNoiseOptions(CreditOptions):
    p: FiniteFloat = Field(0.1, ge=0.0, le=1.0, description="per step and open position, the probability that "
                           "a wrong token earns the step's credit too")
    target: Literal["random", "runner_up"] = Field(
        "random", description="which wrong token: uniformly random among all but the argmax, or the runner-up "
                              "(second most likely; the plausible mistake, which accumulates)")
    scale: FiniteFloat = Field(1.0, ge=0.0, le=1000.0, description="the wrong token earns this many times the "
                               "step's credit (1: as much as the argmax; above 1 it can overtake a stable argmax)")
    slots: None = Field(None, description="dense credit table only (the noise needs the whole vocabulary)")


class CreditNoise(Credit):
    """``credit`` with noise in the credit: each step, at each open position with probability
    ``p``, a wrong token (random, or the runner-up) earns the same credit as the argmax."""

    name = "credit_noise"
    hook_point = "fuse"
    Options = CreditNoiseOptions

    def _earn(self, state, credit, logits, top_token, earn):
        super()._earn(state, credit, logits, top_token, earn)
        if self.options.p > 0:  # p = 0 draws nothing: plain credit exactly
            wrong, fires = self._wrong_tokens(state, logits, top_token)
            credit.scatter_add_(-1, wrong[..., None], (earn * fires * self.options.scale)[..., None])

    def _wrong_tokens(self, state, logits, top_token):
        """``(B, L)`` wrong token ids and ``(B, L)`` float 0/1: whether each position's noise fires
        this step. Inactive rows draw nothing (``state.uniform``) and earn nothing anyway."""
        width, vocab = logits.shape[1], logits.shape[2]
        fires = (state.uniform(width) < self.options.p).to(torch.float32)
        if self.options.target == "runner_up":
            wrong = logits.topk(2, dim=-1).indices[..., 1]
        else:  # uniform over the vocab - 1 tokens other than the argmax
            draw = (state.uniform(width) * (vocab - 1)).long().clamp_(max=vocab - 2)
            wrong = draw + (draw >= top_token).long()
        return wrong, fires.to(logits.device)


@hookimpl
def dllm_decoding_register_components(register):
    register(CreditNoise)
