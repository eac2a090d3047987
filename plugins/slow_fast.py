"""SlowFast Sampling ("Accelerating Diffusion Large Language Models with SlowFast Sampling: The
Three Golden Principles", arXiv 2506.10848, LiangrunFlora/Slow-Fast-Sampling) as a select
component.

Each block is decoded in *cycles*. A cycle's span starts where the previous one ended (column
``s``, 0 at the block start):

* **Slow (exploratory) phase**, ``explore_steps`` forwards: every step commits, among the open
  positions from ``s`` to the block end, those with confidence >= ``high_threshold`` (else the
  most confident one), and estimates the span's end: one past the farthest open position with
  confidence >= ``span_threshold`` (``s + 1`` if none). The end is fixed at the first step whose
  last ``window`` estimates have a standard deviation below ``stability``; if none is stable, it
  is the mean of the last ``window`` estimates, rounded down.
* **Fast phase**: until the span ``[s, end)`` is full, every step commits its open positions with
  confidence >= ``high_threshold``, else its most confident one; its forwards after the first
  see the canvas up to the span's end only (``truncate_fast``). Then the next cycle starts at
  ``end``.

Per-row memory (span start and end, phase step, the estimates) lives in ``state.plugin_state``
as ``(B,)`` / ``(B, window)`` tensors, reset at each block start; a row's cycle advances only in
the steps it is active, so a row decodes alike alone and in a batch. The fallback "most
confident one" is ranked by ``torch.topk`` over exactly the columns the reference ranks (its
span), one call per distinct span in the batch, so exact ties break as in the reference.
"""

from __future__ import annotations

import torch
from pydantic import Field, StrictBool

from dllm_decoding import Component, FiniteFloat, OptionsModel, StrictInt, hookimpl

NEG_INF = float("-inf")


def span_top1(confidence: torch.Tensor, start: torch.Tensor, stop: torch.Tensor,
              rows: torch.Tensor) -> torch.Tensor:
    """Bool ``(B, L)``: for each row in ``rows`` (bool ``(B,)``), its most confident column in
    ``[start, stop)`` by ``torch.topk(k=1)`` over that slice alone (torch.topk's choice among
    exact ties depends on the ranked row's length); one call per distinct slice, one sync."""
    out = torch.zeros_like(confidence, dtype=torch.bool)
    spans = torch.stack([start, stop, rows.long()], dim=1).tolist()
    groups: dict[tuple[int, int], list[int]] = {}
    for b, (lo, hi, wanted) in enumerate(spans):
        if wanted and hi > lo:
            groups.setdefault((lo, hi), []).append(b)
    for (lo, hi), members in groups.items():
        index = torch.tensor(members, device=confidence.device)
        values, best = confidence[index, lo:hi].topk(1, dim=1)
        picked = torch.zeros(len(members), hi - lo, dtype=torch.bool, device=confidence.device)
        picked.scatter_(1, best, values > NEG_INF)
        out[index, lo:hi] = picked
    return out


class SlowFastOptions(OptionsModel):
    explore_steps: StrictInt = Field(6, gt=0, description="forwards of each cycle's slow (exploratory) phase "
                                                          "(the paper's K_max; its experiments use 8)")
    span_threshold: FiniteFloat = Field(0.3, ge=0.0, le=1.0, description="the span ends one past the farthest open "
                                                                         "position with confidence >= this "
                                                                         "(tau_min_conf; paper: 0.1)")
    high_threshold: FiniteFloat = Field(0.9, gt=0.0, le=1.0, description="both phases commit the open positions with "
                                                                          "confidence >= this, else the most "
                                                                          "confident one (tau_high_conf; paper: 0.85)")
    window: StrictInt = Field(2, gt=0, description="how many consecutive span-end estimates the stability check "
                                                   "looks at (W_hist)")
    stability: FiniteFloat = Field(1.0, gt=0.0, description="the span end is fixed once the last `window` estimates "
                                                            "have a standard deviation below this")
    end_explore_when_stable: StrictBool = Field(False, description="the paper's rule: the slow phase ends at the "
                                                                   "first stable estimate; the reference code "
                                                                   "always takes all `explore_steps`")
    truncate_fast: StrictBool = Field(True, description="as the reference: a fast phase's forwards after its first "
                                                        "run the model on the canvas up to the span's end only "
                                                        "(False: every forward sees the whole canvas)")


class SlowFast(Component):
    """SlowFast Sampling (arXiv 2506.10848): per cycle, a slow phase of ``explore_steps``
    forwards (commit >= ``high_threshold`` from the span start on, else the best one, while
    estimating how far confidence >= ``span_threshold`` reaches until ``window`` estimates
    agree), then a fast phase that fills the span ``[start, end)`` in parallel (>=
    ``high_threshold``, else its best one); the next cycle starts at the span end. Exact to
    LiangrunFlora/Slow-Fast-Sampling's ``generate_slow_fast_sampling``, whose fast phase runs
    its later forwards on the canvas up to the span's end (``truncate_fast``, through the
    ``forward_extent`` hook)."""

    name = "slow_fast"
    hook_point = "select"
    Options = SlowFastOptions

    @hookimpl
    def on_block_start(self, state):
        b, device = state.batch_size, state.device
        zeros = torch.zeros(b, dtype=torch.long, device=device)
        state.plugin_state[self.state_key] = {
            "start": zeros,  # the cycle's span start (block column)
            "end": torch.full((b,), state.block_length, dtype=torch.long, device=device),
            "explored": zeros,  # slow-phase steps taken in this cycle (explore_steps: fast phase)
            "history": torch.zeros(b, self.options.window, dtype=torch.long, device=device),
            "count": zeros,  # estimates in the history (at most window)
            "fixed": torch.zeros(b, dtype=torch.bool, device=device),  # the span end is decided
            "fast_steps": zeros,  # fast-phase steps taken in this cycle
        }

    @hookimpl
    def forward_extent(self, state):
        """The reference's truncated fast phase: after a cycle's first fast forward, the model
        sees the canvas up to the span's end (the next forward of a full span is the next
        cycle's first slow one: the whole canvas)."""
        if not self.options.truncate_fast:
            return None
        memory = state.plugin_state[self.state_key]
        cols = torch.arange(state.block_length, device=state.device)[None, :]
        span = (cols >= memory["start"][:, None]) & (cols < memory["end"][:, None])
        fast = (memory["explored"] >= self.options.explore_steps) & (memory["fast_steps"] > 0)
        truncated = fast & (state.selectable & span).any(dim=1)
        return torch.where(truncated, state.block_start + memory["end"], state.canvas.shape[1])

    @hookimpl
    def select(self, state, proposal):
        opts = self.options
        memory = state.plugin_state[self.state_key]
        start, end, explored = memory["start"], memory["end"], memory["explored"]
        history, count, fixed = memory["history"], memory["count"], memory["fixed"]
        fast_steps = memory["fast_steps"]
        active, selectable = state.active_rows, state.selectable
        confidence = torch.where(selectable, proposal.confidence, NEG_INF)
        cols = torch.arange(state.block_length, device=confidence.device)[None, :]
        k = opts.explore_steps

        # a fast phase whose span is full ends the cycle: the next one starts at the span end
        span = (cols >= start[:, None]) & (cols < end[:, None])
        done = active & (explored >= k) & ~(selectable & span).any(dim=1)
        start = torch.where(done, end, start)
        explored = torch.where(done, 0, explored)
        count = torch.where(done, 0, count)
        fixed = fixed & ~done
        fast_steps = torch.where(done, 0, fast_steps)

        slow = active & (explored < k)
        fast_steps = fast_steps + (active & ~slow).long()
        # span-end estimate: one past the farthest open position from `start` on with
        # confidence >= span_threshold, else start + 1
        ahead = cols >= start[:, None]
        reach = torch.where(ahead & (confidence >= opts.span_threshold), cols, -1).amax(dim=1)
        estimate = torch.maximum(reach, start) + 1
        update = slow & ~fixed
        history = torch.where(update[:, None], torch.cat([history[:, 1:], estimate[:, None]], dim=1), history)
        count = torch.where(update, (count + 1).clamp(max=opts.window), count)
        h = history.to(torch.float64)
        spread = (h - h.mean(dim=1, keepdim=True)).square().mean(dim=1).sqrt()  # numpy's std (ddof 0)
        stable = update & (count >= opts.window) & (spread < opts.stability)
        end = torch.where(stable, estimate, end)
        fixed = fixed | stable
        explored = torch.where(slow, explored + 1, explored)
        if opts.end_explore_when_stable:
            explored = torch.where(stable, k, explored)
        # the slow phase is over without a stable estimate: the mean of the last estimates
        fallback = slow & (explored >= k) & ~fixed
        valid = torch.arange(opts.window, device=cols.device)[None, :] >= (opts.window - count)[:, None]
        mean = torch.where(valid, history, 0).sum(dim=1) // count.clamp(min=1)
        end = torch.where(fallback, mean.clamp(min=1, max=state.block_length), end)
        fixed = fixed | fallback

        # commits: the slow phase ranks [start, block end), the fast phase [start, end)
        stop = torch.where(slow, state.block_length, end)
        scope = ahead & (cols < stop[:, None])
        high = (confidence >= opts.high_threshold) & scope
        none = active & ~high.any(dim=1)
        chosen = high | span_top1(confidence, start, stop, none)
        state.plugin_state[self.state_key] = {"start": start, "end": end, "explored": explored,
                                              "history": history, "count": count, "fixed": fixed,
                                              "fast_steps": fast_steps}
        return chosen & selectable


@hookimpl
def dllm_decoding_register_components(register):
    register(SlowFast)
