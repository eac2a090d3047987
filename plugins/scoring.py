"""Score components: turn (fused) logits into a proposed token and a confidence per position."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from dllm_decoding import Component, Proposal, hookimpl

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def propose_tokens(state, logits: torch.Tensor) -> torch.Tensor:
    """Greedy argmax at temperature 0; otherwise LLaDA's Gumbel-max sampling in float64
    (``exp(logits) / (-log u) ** temperature``), drawn from the rows' seeded generators for the
    answer region only (so left padding never shifts the random stream)."""
    tokens = logits.argmax(dim=-1)
    if state.temperature == 0:
        return tokens
    answer = logits[:, state.prompt_length:].to(torch.float64)
    uniform = state.uniform(*answer.shape[1:])
    noisy = answer.exp() / (-torch.log(uniform)) ** state.temperature
    return torch.cat([tokens[:, :state.prompt_length], noisy.argmax(dim=-1)], dim=1)


def in_block(state, logits: torch.Tensor, precision: str) -> torch.Tensor:
    """The current block's logits ``(B, L, V)`` in ``precision``. Scores are computed for the
    block only: no other position can be committed this step, and a ``(B, T, V)`` float64 copy
    of a 126k-token vocabulary would cost ~1 MB per position."""
    block = logits[:, state.block_start:state.block_end]
    dtype = _DTYPES[precision]
    return block if block.dtype == dtype else block.to(dtype)


def whole_row(state, block_values: torch.Tensor, fill: float | bool = float("-inf")) -> torch.Tensor:
    """``(B, T)`` with ``block_values`` in the current block and ``fill`` elsewhere (-inf: cannot
    commit now; ``False`` for masks)."""
    after = state.canvas.shape[1] - state.block_end
    return torch.nn.functional.pad(block_values, (state.block_start, after), value=fill)


def block_negative_entropy(state, logits: torch.Tensor, precision: str) -> torch.Tensor:
    """``(B, L)``: minus the entropy of each current-block position's distribution."""
    logp = torch.log_softmax(in_block(state, logits, precision), dim=-1)
    return (logp.exp() * logp).nan_to_num(0.0).sum(dim=-1)


class PrecisionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
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
        block = in_block(state, logits, self.options.precision)
        if self.options.formula == "softmax":
            probs = torch.softmax(block, dim=-1)
        else:  # the exponential is taken after the gather below: only for the proposed tokens
            probs = torch.log_softmax(block, dim=-1)
        block_tokens = tokens[:, state.block_start:state.block_end, None]
        chosen = probs.gather(-1, block_tokens).squeeze(-1)
        if self.options.formula == "exp_log_softmax":
            chosen = chosen.exp()
        return Proposal(tokens=tokens, confidence=whole_row(state, chosen), logits=logits)


class Margin(Component):
    """Confidence = p(top-1) - p(top-2) (Dream's ``topk_margin``)."""

    name = "margin"
    hook_point = "score"
    Options = PrecisionOptions

    @hookimpl
    def score(self, state, logits):
        tokens = propose_tokens(state, logits)
        top2 = torch.softmax(in_block(state, logits, self.options.precision), dim=-1).topk(2, dim=-1).values
        return Proposal(tokens=tokens, confidence=whole_row(state, top2[..., 0] - top2[..., 1]), logits=logits)


class NegativeEntropy(Component):
    """Confidence = minus the entropy of the position's distribution (Dream's ``entropy``)."""

    name = "entropy"
    hook_point = "score"
    Options = PrecisionOptions

    @hookimpl
    def score(self, state, logits):
        tokens = propose_tokens(state, logits)
        neg_entropy = block_negative_entropy(state, logits, self.options.precision)
        return Proposal(tokens=tokens, confidence=whole_row(state, neg_entropy), logits=logits)


class RandomOrder(Component):
    """Confidence drawn uniformly at random: a random unmasking order (LLaDA's ``random``)."""

    name = "random"
    hook_point = "score"

    @hookimpl
    def score(self, state, logits):
        tokens = propose_tokens(state, logits)
        draws = state.uniform(state.gen_length)  # answer region only, as above
        confidence = torch.cat([torch.zeros(tokens.shape[0], state.prompt_length, dtype=draws.dtype), draws], dim=1)
        return Proposal(tokens=tokens, confidence=confidence, logits=logits)


@hookimpl
def dllm_decoding_register_components(register):
    for cls in (Confidence, Margin, NegativeEntropy, RandomOrder):
        register(cls)
