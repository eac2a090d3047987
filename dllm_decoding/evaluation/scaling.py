"""How the loop's own cost grows with the generation: a synthetic model whose forward costs
(almost) nothing, decoded at gen_length 256 ... 8192 (``dllm-decode bench --scaling``).

The model returns the current block's logits only, as a key-value-cached model does, so what is
measured is the decoding loop: per step, the time outside the model's forward, and the peak
memory above the model's own output. ``credit_decoding`` is also timed against a re-statement of
dInfer's credit loop on the same logits (the same ops dInfer's ``CreditThresholdParallelDecoder``
runs per step), in interleaved pairs.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..core.components import Component
from ..core.denoiser import DecodeSession, Denoiser
from ..core.hookspecs import hookimpl
from ..core.loop import generate
from .memory import MemoryWatch

#: LLaDA's vocabulary size
LLADA_VOCAB = 126464
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class _SyntheticSession(DecodeSession):
    def __init__(self, denoiser: SyntheticModel, attention_mask: torch.Tensor) -> None:
        super().__init__(denoiser, attention_mask)
        self.block = (0, 0)
        self.forwards = torch.zeros(attention_mask.shape[0], dtype=torch.long, device=attention_mask.device)
        self.seconds = 0.0

    def start_block(self, start: int, end: int) -> None:
        self.block = (start, end)
        self.forwards = torch.zeros_like(self.forwards)

    def forward(self, canvas: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        began = time.perf_counter()
        den: SyntheticModel = self.denoiser  # type: ignore[assignment]
        start, end = self.block
        width = end - start
        index = torch.arange(canvas.shape[0], device=canvas.device) if rows is None else rows
        forwards = self.forwards[index] + 1
        self.forwards = self.forwards.index_add(0, index, torch.ones_like(index))
        logits = den.noise[:width].to(canvas.device).expand(canvas.shape[0], width, den.vocab_size).clone()
        # each position's target token gains `growth` logits per forward (at its own rate), so
        # positions become confident one after another, as a real model's do
        boost = den.growth * forwards[:, None] * den.rate[:width].to(canvas.device)[None, :]
        logits.scatter_add_(-1, den.target[:width].to(canvas.device)[None, :, None].expand(canvas.shape[0], width, 1),
                            boost[..., None].to(logits.dtype))
        logits[..., den.mask_id] = float("-inf")
        spent = time.perf_counter() - began
        self.seconds += spent
        den.forward_seconds += spent
        return logits


class SyntheticModel(Denoiser):
    """Block-only logits from a fixed random table: ``vocab_size`` entries, the target token of
    each block position gaining ``growth * rate[j]`` per forward (``rate`` in [0.5, 1.5]), the
    mask token (id 0) -inf. The forward's cost is one ``(b, L, V)`` copy, clocked in
    ``forward_seconds``."""

    def __init__(self, vocab_size: int = LLADA_VOCAB, *, block_length: int = 32, growth: float = 4.0,
                 dtype: torch.dtype = torch.float32, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.vocab_size, self.mask_id, self.name = vocab_size, 0, f"synthetic(V={vocab_size})"
        self.noise = torch.randn(block_length, vocab_size, generator=gen).to(dtype)
        self.target = torch.randint(1, vocab_size, (block_length,), generator=gen)
        self.rate = 0.5 + torch.rand(block_length, generator=gen)
        self.growth = growth
        self.forward_seconds = 0.0

    def start_session(self, attention_mask: torch.Tensor) -> DecodeSession:
        return _SyntheticSession(self, attention_mask)


def dinfer_credit_loop(model: SyntheticModel, prompt: torch.Tensor, *, gen_length: int, block_length: int,
                       threshold: float = 0.9, alpha: float = 0.7, beta: float = 0.8, gamma: float = 0.2
                       ) -> tuple[torch.Tensor, int]:
    """dInfer's ``CreditThresholdParallelDecoder`` on block logits (as its cached model gives
    them), re-stated op for op: a float32 ``(B, L, V)`` credit table per block, decayed by
    ``beta`` after the block's first step and raised by ``p_top1 ** gamma`` at each masked
    position's argmax token; fused ``logits + alpha * log(credit + 1)``; a masked position
    commits when its float32 confidence is at least ``min(threshold, row best - 1e-5)``."""
    b, p = prompt.shape
    mask_id = model.mask_id
    x = torch.cat([prompt, torch.full((b, gen_length), mask_id, device=prompt.device)], dim=1)
    session = model.start_session(torch.ones_like(x))
    forwards = 0
    for block in range(gen_length // block_length):
        lo, hi = p + block * block_length, p + (block + 1) * block_length
        session.start_block(lo, hi)
        credit = None
        while bool((x[:, lo:hi] == mask_id).any()):
            logits = session.forward(x, None)
            forwards += 1
            masked = x[:, lo:hi] == mask_id
            if credit is None:
                credit = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
            else:
                credit.mul_(beta)
            top_p, top_i = F.softmax(logits.float(), dim=-1).max(-1)
            credit.scatter_add_(2, top_i[..., None], (top_p.pow(gamma) * masked.float())[..., None])
            fused = logits + alpha * torch.log(credit + 1)
            x0 = fused.argmax(-1)
            conf = F.softmax(fused.float(), dim=-1).gather(-1, x0[..., None]).squeeze(-1)
            conf = torch.where(masked, conf, torch.full_like(conf, float("-inf")))
            bar = (conf.max(dim=1).values - 1e-5).clamp(-1000, threshold)[:, None]
            x[:, lo:hi] = torch.where((conf >= bar) & masked, x0, x[:, lo:hi])
    return x, forwards


class StepClock(Component):
    """Observer stamping the end of every step with the wall clock and the model's forward
    seconds so far: each step's time outside its forwards (a verification forward included),
    whose median is robust to a busy machine's stalls."""

    name = "step_clock"
    hook_point = "observer"

    def __init__(self, model: SyntheticModel) -> None:
        super().__init__()
        self.model = model
        self.stamps: list[tuple[float, float]] = []

    @hookimpl
    def on_decode_start(self, state):
        self.stamps = [(time.perf_counter(), self.model.forward_seconds)]

    @hookimpl
    def on_step_end(self, state, record):
        self.stamps.append((time.perf_counter(), self.model.forward_seconds))

    def outside_forward(self) -> list[float]:
        return [(b[0] - a[0]) - (b[1] - a[1]) for a, b in zip(self.stamps, self.stamps[1:])]


@dataclass(frozen=True)
class Case:
    strategy: str
    gen_length: int
    batch: int
    dtype: str


def _prompt(batch: int, vocab: int) -> torch.Tensor:
    return torch.randint(1, vocab, (batch, 32), generator=torch.Generator().manual_seed(1))


def measure(case: Case, vocab: int, block_length: int = 32, tokens_per_step: int = 4) -> dict[str, Any]:
    """One decode of ``case``: steps, total and per-step loop time (outside the forward), peak
    memory above the process and above the model's own output."""
    model = SyntheticModel(vocab, block_length=block_length, dtype=DTYPES[case.dtype])
    prompt = _prompt(case.batch, vocab)
    overrides = {"steps": case.gen_length // tokens_per_step}  # the fixed schedules (top-k)
    clock = StepClock(model)
    memory = MemoryWatch()
    began = time.perf_counter()
    out = generate(model, prompt, case.strategy, gen_length=case.gen_length, block_length=block_length,
                   overrides=overrides, observers=[clock])
    total = time.perf_counter() - began
    peak = memory.finish()
    steps = out.stats["steps"]
    output_mb = case.batch * block_length * vocab * torch.finfo(DTYPES[case.dtype]).bits / 8 / 2**20
    loop = total - model.forward_seconds
    return {**case.__dict__, "vocab": vocab, "block_length": block_length, "steps": steps,
            "total_s": total, "forward_s": model.forward_seconds, "loop_s": loop,
            "loop_ms_per_step": 1000 * loop / steps,
            "loop_ms_per_step_median": 1000 * statistics.median(clock.outside_forward()),
            "nfe_mean": float(out.nfe.double().mean()),
            "model_output_mb": output_mb, "peak_above_start_mb": peak["decode_peak_mb"],
            # resident-set noise can put a small decode below its own output: clamped at 0
            "peak_above_output_mb": None if peak["decode_peak_mb"] is None else max(0.0, peak["decode_peak_mb"] - output_mb),
            "memory_method": peak["memory_method"]}


def credit_vs_dinfer(vocab: int = LLADA_VOCAB, gen_length: int = 256, block_length: int = 32, batch: int = 1,
                     dtype: str = "float32", repeats: int = 5) -> dict[str, Any]:
    """``credit_decoding`` against dInfer's loop on the same synthetic logits: outputs checked
    equal first, then ``repeats`` interleaved pairs (the order alternating); wall time and the
    time outside the forward, medians and the per-pair ratio."""
    model = SyntheticModel(vocab, block_length=block_length, dtype=DTYPES[dtype])
    prompt = _prompt(batch, vocab)
    ours_out = generate(model, prompt, "credit_decoding", gen_length=gen_length, block_length=block_length)
    ref, ref_forwards = dinfer_credit_loop(model, prompt, gen_length=gen_length, block_length=block_length)
    if not torch.equal(ours_out.sequences, ref):
        raise AssertionError("credit_decoding and dInfer's loop disagree: the comparison is void")

    def timed(run: Any) -> tuple[float, float]:
        model.forward_seconds = 0.0
        began = time.perf_counter()
        run()
        return time.perf_counter() - began, model.forward_seconds

    def ours() -> Any:
        return generate(model, prompt, "credit_decoding", gen_length=gen_length, block_length=block_length)

    def theirs() -> Any:
        return dinfer_credit_loop(model, prompt, gen_length=gen_length, block_length=block_length)

    pairs = []
    for i in range(repeats):
        pair = (timed(ours), timed(theirs)) if i % 2 == 0 else tuple(reversed((timed(theirs), timed(ours))))
        pairs.append(pair)
    med = statistics.median
    return {"vocab": vocab, "gen_length": gen_length, "block_length": block_length, "batch": batch, "dtype": dtype,
            "repeats": repeats, "forwards": ref_forwards, "nfe": int(ours_out.nfe.max()),
            "ours_s": med(o[0] for o, _ in pairs), "dinfer_s": med(d[0] for _, d in pairs),
            "ratio": med(o[0] / d[0] for o, d in pairs),
            "ours_outside_forward_s": med(o[0] - o[1] for o, _ in pairs),
            "dinfer_outside_forward_s": med(d[0] - d[1] for _, d in pairs),
            "outside_forward_ratio": med((o[0] - o[1]) / (d[0] - d[1]) for o, d in pairs)}


def warm_up(vocab: int) -> None:
    """One short decode per dtype first, so the first measured case pays no one-time costs."""
    for dtype in DTYPES:
        measure(Case("credit_decoding", 64, 1, dtype), vocab)


def run_scaling(strategies: list[str], lengths: list[int], batches: list[int], dtypes: list[str], vocab: int,
                dinfer: list[dict[str, Any]], progress: bool = True) -> dict[str, Any]:
    """Every (strategy, length, batch, dtype) case, then the credit-vs-dInfer pairs."""
    from tqdm import tqdm

    cases = [Case(s, g, b, d) for d in dtypes for b in batches for s in strategies for g in lengths]
    warm_up(vocab)
    results = []
    bar = tqdm(cases, desc="scaling", disable=not progress)
    warm: set[tuple[str, int, str]] = set()
    for case in bar:
        bar.set_postfix_str(f"{case.strategy} {case.gen_length} b{case.batch} {case.dtype}")
        group = (case.strategy, case.batch, case.dtype)
        if group not in warm:  # a process's first decodes of a rule run faster (allocator, caches): not measured
            measure(Case(case.strategy, min(lengths), case.batch, case.dtype), vocab)
            warm.add(group)
        results.append(measure(case, vocab))
    comparisons = [credit_vs_dinfer(**spec) for spec in tqdm(dinfer, desc="credit vs dInfer", disable=not progress)]
    return {"meta": {"vocab": vocab, "threads": torch.get_num_threads(), "block_length": 32,
                     "tokens_per_step_for_fixed_schedules": 4},
            "results": results, "credit_vs_dinfer": comparisons}


def scaling_markdown(payload: dict[str, Any]) -> str:
    """Tables: loop time per step and peak memory per length, one row per (strategy, batch,
    dtype), with the ratio of the longest to the shortest length; then credit vs dInfer."""
    meta, results = payload["meta"], payload["results"]
    lengths = sorted({r["gen_length"] for r in results})
    groups: dict[tuple[str, int, str], dict[int, dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["strategy"], r["batch"], r["dtype"]), {})[r["gen_length"]] = r
    head = "| strategy | batch | dtype | " + " | ".join(str(g) for g in lengths) + f" | {lengths[-1]} / {lengths[0]} |"
    rule = "|---" * (len(lengths) + 4) + "|"
    lines = [f"Synthetic model: V = {meta['vocab']}, block {meta['block_length']}, block-only logits; torch "
             f"threads {meta['threads']}; fixed-schedule presets take {meta['tokens_per_step_for_fixed_schedules']} "
             f"tokens per step.", "", "### Loop time per step, outside the forward (ms, median over the decode's steps)",
             "", head, rule]
    for (strategy, batch, dtype), by_length in sorted(groups.items()):
        key = "loop_ms_per_step_median"
        cells = [f"{by_length[g][key]:.2f}" if g in by_length else "-" for g in lengths]
        ends = [by_length.get(lengths[0]), by_length.get(lengths[-1])]
        ratio = f"{ends[1][key] / ends[0][key]:.2f}x" if all(ends) else "-"
        lines.append(f"| `{strategy}` | {batch} | {dtype} | " + " | ".join(cells) + f" | {ratio} |")
    lines += ["", "### Total decode time (s)", "", head.replace(f" | {lengths[-1]} / {lengths[0]} |", " |"),
              "|---" * (len(lengths) + 3) + "|"]
    for (strategy, batch, dtype), by_length in sorted(groups.items()):
        cells = [f"{by_length[g]['total_s']:.2f}" if g in by_length else "-" for g in lengths]
        lines.append(f"| `{strategy}` | {batch} | {dtype} | " + " | ".join(cells) + " |")
    lines += ["", "### Peak memory above the model's own output (MB)", "",
              head.replace(f" | {lengths[-1]} / {lengths[0]} |", " |"), "|---" * (len(lengths) + 3) + "|"]
    for (strategy, batch, dtype), by_length in sorted(groups.items()):
        cells = ["-" if g not in by_length or by_length[g]["peak_above_output_mb"] is None
                 else f"{by_length[g]['peak_above_output_mb']:.1f}" for g in lengths]
        lines.append(f"| `{strategy}` | {batch} | {dtype} | " + " | ".join(cells) + " |")
    if payload.get("credit_vs_dinfer"):
        lines += ["", "### `credit_decoding` vs dInfer's credit loop (same logits, outputs equal)", "",
                  "| V | gen | batch | dtype | pairs | ours (s) | dInfer (s) | ours / dInfer | outside forward: ours / dInfer |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in payload["credit_vs_dinfer"]:
            lines.append(f"| {c['vocab']} | {c['gen_length']} | {c['batch']} | {c['dtype']} | {c['repeats']} | "
                         f"{c['ours_s']:.2f} | {c['dinfer_s']:.2f} | {c['ratio']:.2f}x | {c['outside_forward_ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def plot_scaling(payload: dict[str, Any], path: Any) -> Any:
    """Loop time per step and peak memory against gen_length, one line per (strategy, batch, dtype)."""
    from .plots import pyplot, save_figure

    plt = pyplot()
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in payload["results"]:
        groups.setdefault((r["strategy"], r["batch"], r["dtype"]), []).append(r)
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    for (strategy, batch, dtype), rows in sorted(groups.items()):
        rows = sorted(rows, key=lambda r: r["gen_length"])
        label = f"{strategy} b{batch} {dtype}"
        style = "-" if dtype == "float32" else "--"
        time_ax.plot([r["gen_length"] for r in rows], [r["loop_ms_per_step_median"] for r in rows], style, marker="o",
                     markersize=3, label=label)
        memory_ax.plot([r["gen_length"] for r in rows], [r["peak_above_output_mb"] or 0 for r in rows], style,
                       marker="o", markersize=3, label=label)
    for ax, ylabel in ((time_ax, "loop time per step, outside the forward (median, ms)"),
                       (memory_ax, "peak memory above the model output (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("gen_length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    time_ax.legend(fontsize=6, ncol=2)
    fig.suptitle(f"the loop's cost vs generation length (synthetic model, V = {payload['meta']['vocab']})")
    return save_figure(fig, path, dpi=110)
