"""Uniform-noise decoding: DiffusionGemma's sampler (transformers' ``DiffusionGemmaForBlockDiffusion
.generate``, 5.24) as three components, plus the schedule it scales its logits with.

DiffusionGemma starts each block (its *canvas*) from uniformly random tokens and re-decides every
position each step: it samples a token everywhere from the temperature-scaled logits, *accepts*
the lowest-entropy positions while their summed entropy minus the largest stays within a bound
(the EB-sampler rule, arXiv 2505.24857), keeps the sampled token there and puts a fresh random
token everywhere else. Nothing is final until the block stops: when the argmax canvas has not
changed for ``stability_threshold`` steps and the mean entropy is below ``confidence_threshold``
(or after ``max_steps_per_block`` steps), the block becomes the last step's argmax.

- ``linear_temperature`` (fuse): ``logits / (t_min + (t_max - t_min) * remaining / N)``, ``N`` =
  ``max_steps_per_block``, ``remaining`` = ``N - block_step`` (the reference counts steps down);
- ``stable_and_confident`` (select): commits the whole block of a row when it is stable and
  confident, nothing otherwise (with a ``renoise`` component the core does not force a commit
  per step; the block budget ends it);
- ``entropy_bound_sample`` (renoise): the sample-accept-renoise step above, drawn from each
  row's own generator in the reference's order (the multinomial sample, then the noise).

The score is ``entropy`` with ``formula = "categorical"`` (the proposal's tokens are the argmax,
what a block becomes). The entropies are computed once per step and shared by the selector and
the renoiser (``scoring.categorical_entropy``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from dllm_decoding import Component, FiniteFloat, OptionsModel, StrictInt, hookimpl
from dllm_decoding.plugins.scoring import categorical_entropy


class LinearTemperatureOptions(OptionsModel):
    t_min: FiniteFloat = Field(0.4, ge=0.0, description="temperature at the block's last step budget")
    t_max: FiniteFloat = Field(0.8, gt=0.0, description="temperature at the block's first step")

    @model_validator(mode="after")
    def _ordered(self) -> LinearTemperatureOptions:
        if self.t_max < self.t_min:
            raise ValueError(f"t_max={self.t_max} is below t_min={self.t_min}; the temperature falls from "
                             f"t_max to t_min over the block")
        return self


class LinearTemperature(Component):
    """Divide the logits by a temperature falling linearly from ``t_max`` (first step of a block)
    towards ``t_min`` over ``max_steps_per_block`` steps (DiffusionGemma's
    ``LinearTemperatureScheduleLogitsProcessor``, in its float32 arithmetic)."""

    name = "linear_temperature"
    hook_point = "fuse"
    Options = LinearTemperatureOptions

    @hookimpl
    def fuse(self, state, logits):
        budget = state.max_steps_per_block
        remaining = torch.tensor(budget - state.block_step, dtype=torch.int32, device=logits.device)
        temperature = self.options.t_min + (self.options.t_max - self.options.t_min) * (remaining / budget)
        return logits / temperature


class StableAndConfidentOptions(OptionsModel):
    stability_threshold: StrictInt = Field(1, ge=0, description="steps the argmax block must stay unchanged "
                                                                "(0: no stability condition)")
    confidence_threshold: FiniteFloat = Field(0.005, gt=0.0, description="the block's mean entropy (nats) must "
                                                                          "be below this")


class StableAndConfident(Component):
    """Commit a row's whole block once its proposed (argmax) tokens equal those of each of the
    last ``stability_threshold`` steps and the block's mean entropy is below
    ``confidence_threshold`` (DiffusionGemma's ``StableAndConfidentStoppingCriteria``); nothing
    before. For renoising strategies (``renoise``), whose blocks otherwise end at the budget."""

    name = "stable_and_confident"
    hook_point = "select"
    Options = StableAndConfidentOptions

    @hookimpl
    def on_block_start(self, state):
        state.plugin_state[self.state_key] = torch.full(
            (self.options.stability_threshold, state.batch_size, state.block_length), -1, dtype=torch.long,
            device=state.device)

    @hookimpl
    def select(self, state, proposal):
        history = state.plugin_state[self.state_key]
        stable = (history == proposal.tokens[None]).all(dim=2).all(dim=0)
        if history.shape[0]:  # the oldest step leaves, this one enters (active rows only)
            latest = torch.where(state.active_rows[:, None], proposal.tokens, history[-1])
            state.plugin_state[self.state_key] = torch.cat([history[1:], latest[None]])
        confident = categorical_entropy(state, proposal.logits).mean(dim=1) < self.options.confidence_threshold
        return (stable & confident)[:, None] & state.selectable


class EntropyBoundSampleOptions(OptionsModel):
    entropy_bound: FiniteFloat = Field(0.1, gt=0.0, description="accept the lowest-entropy positions while their "
                                                                 "summed entropy minus the largest is at most this")
    draws: Literal["row", "batch"] = Field(
        "row", description="row: each row draws from its own generator (a row decodes as alone); batch: one "
                           "generator seeded with row 0's seed draws batch-shaped for every row, the block's noise "
                           "included, as generate() does with the global generator (pass eos_id=None: its finished "
                           "rows stay in the batch)")


class EntropyBoundSample(Component):
    """Sample every block position from the fused logits, keep the sample at the lowest-entropy
    positions whose summed entropy minus the largest is at most ``entropy_bound``, and a fresh
    uniformly random token everywhere else (DiffusionGemma's ``EntropyBoundSampler``). Each row
    draws from its own generator: the multinomial sample, then the noise, every step."""

    name = "entropy_bound_sample"
    hook_point = "renoise"
    Options = EntropyBoundSampleOptions

    @hookimpl
    def on_decode_start(self, state):
        if self.options.draws == "batch":
            state.plugin_state[self.state_key] = torch.Generator(device=state.device).manual_seed(
                state.generators[0].initial_seed())

    @hookimpl
    def renoise(self, state, proposal):
        batch_draws = self.options.draws == "batch"
        if proposal is None:  # a block starts: its noise, batch-shaped, or the model's own
            if not batch_draws:
                return None
            return torch.randint(0, state.vocab_size, (state.batch_size, state.block_length),
                                 generator=state.plugin_state[self.state_key], device=state.device)
        logits = proposal.logits
        entropy = categorical_entropy(state, logits)
        ordered, order = torch.sort(entropy, dim=-1)  # the reference's (unstable) sort
        keep = torch.cumsum(ordered, dim=-1) - ordered <= self.options.entropy_bound
        accepted = torch.zeros_like(keep).scatter(-1, order, keep)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        if batch_draws:  # every row, finished ones included, in one draw each (generate()'s order)
            generator = state.plugin_state[self.state_key]
            sample = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=generator).view(accepted.shape)
            noise = torch.randint(0, state.vocab_size, accepted.shape, generator=generator, device=logits.device)
            return torch.where(accepted, sample, noise)
        tokens = torch.zeros(accepted.shape, dtype=torch.long, device=logits.device)
        for row in state.active_rows.nonzero().flatten().tolist():  # per row: its own generator
            generator = state.generators[row]
            sample = torch.multinomial(probs[row], 1, generator=generator).squeeze(1)
            noise = torch.randint(0, state.vocab_size, (1, state.block_length), generator=generator,
                                  device=logits.device).squeeze(0)
            tokens[row] = torch.where(accepted[row], sample, noise)
        return tokens


class UniformNoise(Component):
    """A fresh uniformly random token at every open position each step: masked-diffusion rules
    (threshold, credit, ...) on a uniform-noise model, which never saw one noise token twice."""

    name = "uniform_noise"
    hook_point = "renoise"

    @hookimpl
    def renoise(self, state, proposal):
        if proposal is None:  # a block starts: the model's own noise
            return None
        tokens = torch.zeros(state.batch_size, state.block_length, dtype=torch.long, device=state.device)
        for row in state.active_rows.nonzero().flatten().tolist():
            tokens[row] = torch.randint(0, state.vocab_size, (state.block_length,), generator=state.generators[row],
                                        device=state.device)
        return tokens


@hookimpl
def dllm_decoding_register_components(register):
    for cls in (LinearTemperature, StableAndConfident, EntropyBoundSample, UniformNoise):
        register(cls)
