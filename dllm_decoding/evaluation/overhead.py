"""The framework's own cost: ``dd.generate`` against a bare hand-written loop doing the same
forwards and the same rule (``dllm-decode bench --overhead``)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from ..core.loop import generate
from ..models.placement import model_device
from ..tasks import encode_batch, get_task


def bare_low_confidence_loop(model: Any, prompt: torch.Tensor, attention_mask: torch.Tensor, gen_length: int,
                             mask_id: int) -> tuple[torch.Tensor, int]:
    """Reference baseline for the overhead measurement only: LLaDA's low-confidence rule with one
    token per step, written as one bare loop (one block). Every row takes exactly ``gen_length``
    forwards on both sides, and the model gets an attention mask only when there is padding, as
    the framework does, so the comparison is the same forwards and the same arithmetic."""
    b, p = prompt.shape
    x = torch.cat([prompt, torch.full((b, gen_length), mask_id, device=prompt.device)], dim=1)
    am = torch.cat([attention_mask, torch.ones(b, gen_length, dtype=torch.long, device=prompt.device)], dim=1)
    am = am if bool((am == 0).any()) else None
    rows = torch.arange(b, device=prompt.device)
    for _ in range(gen_length):
        logits = model(input_ids=x, attention_mask=am).logits
        x0 = logits.argmax(-1)
        conf = torch.softmax(logits.to(torch.float32), -1).gather(-1, x0[..., None]).squeeze(-1)
        conf = conf.masked_fill(x != mask_id, float("-inf"))
        best = conf.argmax(dim=1)
        x = x.clone()
        x[rows, best] = x0[rows, best]
    return x, gen_length


class _ForwardClock(torch.nn.Module):
    """Adds up the time spent inside the wrapped model's forwards. Both loops decode through the
    same wrapper, so its cost (about a microsecond a call) falls on both sides alike."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.inner, self.config, self.seconds = model, model.config, 0.0
        self.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Any:
        start = time.perf_counter()
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask)
        self.seconds += time.perf_counter() - start
        return out


def overhead(model: Any, tokenizer: Any, task: str = "latin_square", n: int = 64, repeats: int = 5,
             batch_size: int | None = None) -> dict[str, Any]:
    """Decode time with ``dd.generate`` (``llada_low_confidence``, one token per step) against
    the bare loop on the same prompts: outputs are checked identical first, then ``repeats``
    pairs run back to back (the order alternating, so drift falls on both sides).

    ``overhead_percent`` is the median over pairs of framework / bare - 1, with its interquartile
    range; the time outside model forwards is reported per step for both loops, which is the
    framework's own cost without the forward's run-to-run noise."""
    t = get_task(task)
    prompt, mask = encode_batch(tokenizer, t.examples("test", n), t)
    if batch_size:
        prompt, mask = prompt[:batch_size], mask[:batch_size]
    prompt, mask = prompt.to(model_device(model)), mask.to(model_device(model))
    clock = _ForwardClock(model)
    kwargs = dict(attention_mask=mask, gen_length=t.gen_length, block_length=t.gen_length)
    mask_id = model.config.mask_token_id

    def framework() -> Any:
        return generate(clock, prompt, "llada_low_confidence", **kwargs)

    def bare() -> Any:
        return bare_low_confidence_loop(clock, prompt, mask, t.gen_length, mask_id)

    def timed(run: Any) -> tuple[float, float]:
        clock.seconds = 0.0
        start = time.perf_counter()
        run()
        return time.perf_counter() - start, clock.seconds

    with torch.no_grad():
        ours = framework()
        ref, forwards = bare()
        if not torch.equal(ours.answers, ref[:, prompt.shape[1]:]):
            raise AssertionError("framework and bare loop disagree: the overhead comparison is void")
        pairs = []
        for i in range(repeats):
            if i % 2 == 0:
                f, b = timed(framework), timed(bare)
            else:
                b, f = timed(bare), timed(framework)
            pairs.append((f, b))
    ratios = sorted(f[0] / b[0] - 1 for f, b in pairs)
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    med = statistics.median
    outside_f = med(f[0] - f[1] for f, _ in pairs)
    outside_b = med(b[0] - b[1] for _, b in pairs)
    return {"task": task, "batch": prompt.shape[0], "strategy": "llada_low_confidence", "forwards": forwards,
            "framework_ms": 1000 * med(f[0] for f, _ in pairs), "bare_ms": 1000 * med(b[0] for _, b in pairs),
            "overhead_percent": 100 * med(ratios),
            "overhead_percent_iqr": [100 * quartiles[0], 100 * quartiles[2]],
            "forward_ms": {"framework": 1000 * med(f[1] for f, _ in pairs) / forwards,
                           "bare": 1000 * med(b[1] for _, b in pairs) / forwards},
            "outside_forward_us_per_step": {"framework": 1e6 * outside_f / forwards,
                                            "bare": 1e6 * outside_b / forwards},
            # the framework's own extra time relative to the bare decode, free of forward noise
            "outside_forward_overhead_percent": 100 * (outside_f - outside_b) / med(b[0] for _, b in pairs),
            "repeats": repeats, "threads": torch.get_num_threads(),
            "framework_forward_calls": ours.stats["forward_calls"]}


def measure_overhead(model: Any, tokenizer: Any) -> dict[str, Any]:
    """Overhead at batch 1, 16 and 64; more pairs where a decode is short (its noise is larger)."""
    return {f"batch {b}": overhead(model, tokenizer, batch_size=b, repeats=repeats)
            for b, repeats in ((1, 61), (16, 11), (64, 5))}
