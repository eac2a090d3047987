"""ReMDM ("Remasking Discrete Diffusion Models with Inference-Time Scaling", arXiv 2503.00307;
kuleshov-group/remdm ``diffusion.py::_ddpm_caching_update``, samplers ``remdm-cap`` and
``remdm-rescale``) as a select and a remask component.

Each block runs ReMDM's reverse process over ``steps_per_block`` steps on the time grid
``t_i = linspace(1, eps, N + 1)[i]``, ``s = t - (1 - eps) / N``, ``alpha = 1 - t`` (MDLM's
log-linear schedule). With the remasking rate ``sigma`` (``cap``: ``min(eta, (1 - alpha_s) /
alpha_t)``; ``rescale``: ``eta * min(1, (1 - alpha_s) / alpha_t)``), every masked position
unmasks with probability ``(alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t)`` and every position
decided before the step is remasked with probability ``sigma``. After the ``N`` steps the
remaining masks are filled at once (ReMDM's final noise-removal forward). Every draw comes from
``state.uniform`` (each row its own generator).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from dllm_decoding import Component, FiniteFloat, OptionsModel, hookimpl


class ReMDMOptions(OptionsModel):
    eta: FiniteFloat = Field(0.02, ge=0.0, le=1.0, description="remasking rate bound (cap) or scale (rescale)")
    schedule: Literal["cap", "rescale"] = Field("cap", description="ReMDM's sigma schedule: remdm-cap or remdm-rescale")
    eps: FiniteFloat = Field(1e-5, gt=0.0, lt=1.0, description="end of the time grid (ReMDM's eps)")


def remdm_rates(options: ReMDMOptions, step: int, steps: int) -> tuple[float, float] | None:
    """``(unmask probability of a masked position, remask probability sigma of a decided one)``
    at block step ``step`` of ``steps``; None past the grid (fill everything, remask nothing)."""
    if step >= steps:
        return None
    grid = torch.linspace(1, options.eps, steps + 1, device="cpu")  # float32 scalars, as ReMDM's
    t = grid[step]
    s = t - (1 - options.eps) / steps
    alpha_t, alpha_s = float(1 - t), float(1 - s)
    if options.schedule == "cap":
        sigma = min(options.eta, (1 - alpha_s) / alpha_t) if alpha_t > 0 else options.eta
    else:
        sigma = options.eta * (min(1, (1 - alpha_s) / alpha_t) if alpha_t > 0 else 1)
    return (alpha_s - (1 - sigma) * alpha_t) / (1 - alpha_t), sigma


class ReMDMUnmask(Component):
    """ReMDM's unmasking: each masked position of the block unmasks with the schedule's
    probability; after ``steps_per_block`` steps, all of them."""

    name = "remdm_unmask"
    hook_point = "select"
    Options = ReMDMOptions

    @hookimpl
    def select(self, state, proposal):
        rates = remdm_rates(self.options, state.block_step, state.steps_per_block)
        if rates is None:
            return state.selectable
        return state.selectable & (state.uniform(state.block_length) < rates[0])


class ReMDMRemask(Component):
    """ReMDM's remasking: each position decided before this step is sent back to noise with
    probability ``sigma`` of the schedule (none after ``steps_per_block`` steps)."""

    name = "remdm_remask"
    hook_point = "remask"
    Options = ReMDMOptions

    @hookimpl
    def remask(self, state, proposal, commit):
        rates = remdm_rates(self.options, state.block_step, state.steps_per_block)
        if rates is None or rates[1] == 0:
            return None
        earlier = ~state.selectable & ~commit & state.active_rows[:, None]
        return earlier & (state.uniform(state.block_length) < rates[1])


@hookimpl
def dllm_decoding_register_components(register):
    register(ReMDMUnmask)
    register(ReMDMRemask)
