"""A third-party dllm-decoding plugin: one select component and one preset that uses it."""

from importlib import resources

import torch
from pydantic import Field

import dllm_decoding as dd


class CappedThresholdOptions(dd.OptionsModel):
    threshold: dd.FiniteFloat = Field(0.9, gt=0.0, le=1.0, description="commit positions at least this confident")
    max_per_step: dd.StrictInt = Field(4, gt=0, description="but never more than this many per row and step")


class CappedThreshold(dd.Component):
    """Fast-dLLM's threshold rule with a per-step cap on parallelism."""

    name = "capped_threshold"
    hook_point = "select"
    Options = CappedThresholdOptions

    @dd.hookimpl
    def select(self, state, proposal):
        confidence = proposal.confidence.masked_fill(~state.selectable, float("-inf"))
        k = min(self.options.max_per_step, confidence.shape[1])
        values, index = confidence.topk(k, dim=1)
        keep = values >= self.options.threshold
        return torch.zeros_like(state.selectable).scatter(1, index, keep)


@dd.hookimpl
def dllm_decoding_register_components(register):
    register(CappedThreshold)


@dd.hookimpl
def dllm_decoding_register_strategies(register):
    register("capped_threshold", resources.files(__name__) / "capped_threshold.toml")
