"""Score components: turn the block's (fused) logits into a proposed token and a confidence per
position. Confidence is computed in float64 by default (LLaDA's precision); a full-canvas float64
softmax of a 126k-token vocabulary would cost ~1 MB per position, so it is the block's only."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from dllm_decoding import Component, OptionsModel, Proposal, hookimpl

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def propose_tokens(state, logits: torch.Tensor) -> torch.Tensor:
    """``(B, L)``: greedy argmax at temperature 0; otherwise LLaDA's Gumbel-max sampling
    (``argmax exp(logits) / (-log u) ** temperature``) in float64 and in log space,
    ``argmax logits - temperature * log(-log u)``: the same order, without the overflow of
    ``exp`` and of the power at large logits or temperatures. Drawn from the rows' seeded
    generators for the block only."""
    if state.temperature == 0:
        return logits.argmax(dim=-1)
    uniform = state.uniform(*logits.shape[1:])
    return (logits.to(torch.float64) - state.temperature * torch.log(-torch.log(uniform))).argmax(dim=-1)


def in_precision(logits: torch.Tensor, precision: str) -> torch.Tensor:
    """The block's logits in ``precision`` (no copy when they already are)."""
    dtype = _DTYPES[precision]
    return logits if logits.dtype == dtype else logits.to(dtype)


def negative_entropy(logits: torch.Tensor, precision: str) -> torch.Tensor:
    """``(B, L)``: minus the entropy of each block position's distribution."""
    logp = torch.log_softmax(in_precision(logits, precision), dim=-1)
    return (logp.exp() * logp).nan_to_num(0.0).sum(dim=-1)


def categorical_entropy(state, logits: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` entropies of ``logits`` as ``torch.distributions.Categorical`` computes them
    (the reference's rounding), once per step: kept in ``state.plugin_state`` against the
    logits tensor they came from."""
    cached = state.plugin_state.get("scoring.categorical_entropy")
    if cached is not None and cached[0] is logits:
        return cached[1]
    entropy = torch.distributions.Categorical(logits=logits, validate_args=False).entropy()
    state.plugin_state["scoring.categorical_entropy"] = (logits, entropy)
    return entropy


class PrecisionOptions(OptionsModel):
    precision: Literal["float32", "float64"] = "float64"


class ConfidenceOptions(PrecisionOptions):
    formula: Literal["softmax", "exp_log_softmax"] = Field(
        "softmax", description="softmax(logits)[token] (LLaDA, Fast-dLLM) or exp(log_softmax(logits)[token]) "
                               "(dInfer's hierarchy decoder); equal up to rounding")


class Confidence(Component):
    """Confidence = softmax probability of the proposed token (LLaDA's low-confidence rule)."""

    name = "confidence"
    hook_point = "score"
    Options = ConfidenceOptions

    @hookimpl
    def score(self, state, logits):
        tokens = propose_tokens(state, logits)
        block = in_precision(logits, self.options.precision)
        if self.options.formula == "softmax":
            probs = torch.softmax(block, dim=-1)
        else:  # the exponential is taken after the gather below: only for the proposed tokens
            probs = torch.log_softmax(block, dim=-1)
        chosen = probs.gather(-1, tokens[..., None]).squeeze(-1)
        if self.options.formula == "exp_log_softmax":
            chosen = chosen.exp()
        return Proposal(tokens=tokens, confidence=chosen, logits=logits)


class Margin(Component):
    """Confidence = p(top-1) - p(top-2) (Dream's ``topk_margin``)."""

    name = "margin"
    hook_point = "score"
    Options = PrecisionOptions

    @hookimpl
    def score(self, state, logits):
        tokens = propose_tokens(state, logits)
        top2 = torch.softmax(in_precision(logits, self.options.precision), dim=-1).topk(2, dim=-1).values
        return Proposal(tokens=tokens, confidence=top2[..., 0] - top2[..., 1], logits=logits)


class EntropyOptions(PrecisionOptions):
    formula: Literal["log_softmax", "categorical"] = Field(
        "log_softmax", description="sum p log p from log_softmax (Dream) or torch.distributions.Categorical's "
                                   "entropy (DiffusionGemma's sampler; shared with its components); equal up to "
                                   "rounding")


class NegativeEntropy(Component):
    """Confidence = minus the entropy of the position's distribution (Dream's ``entropy``)."""

    name = "entropy"
    hook_point = "score"
    Options = EntropyOptions

    @hookimpl
    def score(self, state, logits):
        tokens = propose_tokens(state, logits)
        if self.options.formula == "categorical":
            confidence = -categorical_entropy(state, in_precision(logits, self.options.precision))
        else:
            confidence = negative_entropy(logits, self.options.precision)
        return Proposal(tokens=tokens, confidence=confidence, logits=logits)


class RandomOrder(Component):
    """Confidence drawn uniformly at random: a random unmasking order (LLaDA's ``random``)."""

    name = "random"
    hook_point = "score"

    @hookimpl
    def score(self, state, logits):
        tokens = propose_tokens(state, logits)
        return Proposal(tokens=tokens, confidence=state.uniform(state.block_length), logits=logits)


@hookimpl
def dllm_decoding_register_components(register):
    for cls in (Confidence, Margin, NegativeEntropy, RandomOrder):
        register(cls)
