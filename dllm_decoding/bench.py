"""``dllm-decode bench``: strategies x settings x tasks -> JSON, Markdown, PNG.

    dllm-decode bench --out docs/benchmarks --report docs/benchmarks.md   # the page, regenerated
    dllm-decode bench --quick                          # < 2 minutes on 2 cores
    dllm-decode bench --overhead                       # framework vs a bare hand-written loop

Every strategy, override key and task is validated before the first decode. Results are written
after every finished setting, so an interrupted run (Ctrl-C) keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import load_strategy, parse_override_value
from .errors import ConfigError
from .evaluate import (add_blocks_argument, add_model_arguments, block_length, evaluate, model_from_args,
                       model_options)
from .plots import pareto_front
from .tasks import TASKS, get_task


@dataclass(frozen=True)
class Setting:
    strategy: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        opts = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in self.overrides.items())
        return f"{self.strategy}({opts})" if opts else self.strategy


def _sweep(strategy: str, key: str, values: list[Any], **fixed: Any) -> list[Setting]:
    return [Setting(strategy, {**fixed, key: v}) for v in values]


SWEEPS: dict[str, list[Setting]] = {
    "full": [
        *_sweep("llada_low_confidence", "select.k", [1, 2, 4, 8]),
        *_sweep("fast_dllm_threshold", "select.threshold", [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]),
        *_sweep("credit_decoding", "select.threshold", [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]),
        *_sweep("credit_decoding", "fuse.credit.alpha", [0.3, 1.5], **{"select.threshold": 0.9}),
        *_sweep("credit_decoding", "fuse.credit.beta", [0.5, 0.95], **{"select.threshold": 0.9}),
        *_sweep("credit_decoding", "fuse.credit.gamma", [0.05, 1.0], **{"select.threshold": 0.9}),
        *_sweep("fast_dllm_factor", "select.factor", [0.5, 1.0, 2.0]),
        *_sweep("entropy_bounded", "select.gamma", [0.01, 0.1, 0.5]),
        *_sweep("dinfer_hierarchy", "select.low_threshold", [0.3, 0.5, 0.7]),
    ],
    "quick": [
        *_sweep("llada_low_confidence", "select.k", [1, 8]),
        *_sweep("fast_dllm_threshold", "select.threshold", [0.5, 0.9]),
        *_sweep("credit_decoding", "select.threshold", [0.5, 0.9]),
    ],
}
QUICK_TASKS = ["sort", "addition", "latin_square"]


# --------------------------------------------------------------------------- AUP


def aup_weight(y: float, y_max: float, alpha: float = 3.0) -> float:
    """d3LLM's quality weight W(y) = min(exp(-alpha * (1 - y / y_max)), 1)."""
    return min(math.exp(-alpha * (1 - y / y_max)), 1.0) if y_max > 0 else 0.0


def aup(points: list[tuple[float, float]], y_max: float, alpha: float = 3.0, offset: float = 5.0) -> float:
    """Accuracy under parallelism (d3LLM; accuracy in percent, parallelism = TPF).

    Points are sorted by TPF; points more than ``offset`` points below the accuracy of the
    least parallel point are dropped; then AUP = rho_1 * y_1 * W(y_1) + the trapezoid area of
    y * W(y) over the remaining TPF range.
    """
    if not points:
        return 0.0
    pts = sorted(points)
    floor = pts[0][1] - offset
    pts = [(r, y) for r, y in pts if y >= floor]
    weighted = [(r, y * aup_weight(y, y_max, alpha)) for r, y in pts]
    area = weighted[0][0] * weighted[0][1]
    for (r0, y0), (r1, y1) in zip(weighted, weighted[1:]):
        area += (r1 - r0) * (y0 + y1) / 2
    return area


# --------------------------------------------------------------------------- running


def parse_settings(items: list[str]) -> list[Setting]:
    """``preset`` or ``preset:key=value,key=value`` -> settings."""
    out = []
    for item in items:
        name, _, rest = item.partition(":")
        overrides = {}
        for pair in filter(None, rest.split(",")):
            key, sep, value = pair.partition("=")
            if not sep:
                raise ConfigError(f"--setting {item!r}: expected preset:key=value,...")
            overrides[key.strip()] = parse_override_value(value.strip())
        out.append(Setting(name.strip(), overrides))
    return out


def validate(settings: list[Setting], tasks: list[str], blocks: int = 1) -> None:
    """Every strategy, override and task name (and the block split) checked before any
    decoding starts."""
    for name in tasks:
        block_length(get_task(name), blocks)
    for s in settings:
        try:
            load_strategy(s.strategy, s.overrides)
        except ConfigError as exc:
            raise ConfigError(f"setting {s.label}: {exc}") from None


def _write(out_dir: Path, payload: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "bench.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(out_dir / "bench.json")


def run(model: Any, tokenizer: Any, settings: list[Setting], tasks: list[str], n: int, out_dir: Path,
        batch_size: int = 64, progress: bool = True, meta: dict[str, Any] | None = None,
        blocks: int = 1) -> dict[str, Any]:
    """Run the sweep; ``bench.json`` is rewritten after every finished (task, setting)."""
    from tqdm import tqdm

    validate(settings, tasks, blocks)
    payload: dict[str, Any] = {"meta": {**(meta or {}), "n": n, "tasks": tasks,
                                        "settings": [asdict(s) for s in settings]},
                               "results": [], "interrupted": False}
    jobs = [(t, s) for t in tasks for s in settings]
    bar = tqdm(jobs, desc="bench", disable=not progress)
    try:
        for task, setting in bar:
            bar.set_postfix_str(f"{task} {setting.label}"[:60])
            with torch.no_grad():
                r = evaluate(model, tokenizer, setting.strategy, task, n, batch_size=batch_size,
                             overrides=setting.overrides, blocks=blocks)
            r["label"] = setting.label
            payload["results"].append(r)
            _write(out_dir, payload)
    except KeyboardInterrupt:
        payload["interrupted"] = True
        _write(out_dir, payload)
        raise
    return payload


# --------------------------------------------------------------------------- reporting


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per setting: mean accuracy over tasks, mean NFE, mean TPF; AUP per strategy per task."""
    by_label: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_label[r["label"]].append(r)
    tasks = sorted({r["task"] for r in results})
    complete = {k: v for k, v in by_label.items() if len(v) == len(tasks)}
    settings = [{"label": k, "strategy": v[0]["strategy"], "overrides": v[0]["overrides"],
                 "accuracy": statistics.mean(r["accuracy"] for r in v),
                 "nfe_mean": statistics.mean(r["nfe_mean"] for r in v),
                 "tpf": statistics.mean(r["tpf"] for r in v)} for k, v in complete.items()]
    aups: dict[str, dict[str, float]] = defaultdict(dict)
    for task in tasks:
        rows = [r for r in results if r["task"] == task]
        y_max = 100 * max(r["accuracy"] for r in rows)
        for strategy in sorted({r["strategy"] for r in rows}):
            pts = [(r["tpf"], 100 * r["accuracy"]) for r in rows if r["strategy"] == strategy]
            aups[strategy][task] = aup(pts, y_max)
    return {"tasks": tasks, "settings": settings, "aup": dict(aups)}


def claims(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The CreditDecoding claims, checked on these results (mean over tasks)."""
    summary = {s["label"]: s for s in summarise(results)["settings"]}
    base = summary.get("llada_low_confidence(k=1)")
    credit = [s for s in summary.values() if s["strategy"] == "credit_decoding" and set(s["overrides"]) == {"select.threshold"}]
    fast = sorted((s for s in summary.values() if s["strategy"] == "fast_dllm_threshold"), key=lambda s: s["nfe_mean"])
    out: dict[str, Any] = {}
    if base and credit:
        ok = [s for s in credit if s["accuracy"] >= base["accuracy"] - 0.01]
        best = min(ok, key=lambda s: s["nfe_mean"]) if ok else max(credit, key=lambda s: s["accuracy"])
        out["speedup_vs_one_token_per_step"] = {
            "baseline": base["label"], "baseline_accuracy": base["accuracy"], "baseline_nfe": base["nfe_mean"],
            "credit": best["label"], "credit_accuracy": best["accuracy"], "credit_nfe": best["nfe_mean"],
            "forward_reduction": base["nfe_mean"] / best["nfe_mean"],
            "accuracy_within_1_point": best["accuracy"] >= base["accuracy"] - 0.01}
    if credit and fast:
        matches = []
        for c in sorted(credit, key=lambda s: s["nfe_mean"]):
            same = [f for f in fast if abs(f["accuracy"] - c["accuracy"]) <= 0.005]
            interp = _nfe_at_accuracy(fast, c["accuracy"])
            matches.append({"credit": c["label"], "accuracy": c["accuracy"], "credit_nfe": c["nfe_mean"],
                            "fast_dllm_at_same_accuracy_within_0.5": [(f["label"], f["nfe_mean"]) for f in same],
                            "fast_dllm_nfe_interpolated": interp})
        out["credit_vs_fast_dllm"] = matches
        by_threshold = {s["overrides"]["select.threshold"]: s for s in fast
                        if set(s["overrides"]) == {"select.threshold"}}
        out["credit_vs_fast_dllm_same_threshold"] = [
            {"threshold": t, "credit_accuracy": c["accuracy"], "credit_nfe": c["nfe_mean"],
             "fast_dllm_accuracy": f["accuracy"], "fast_dllm_nfe": f["nfe_mean"]}
            for c in sorted(credit, key=lambda s: s["overrides"]["select.threshold"])
            if (f := by_threshold.get(t := c["overrides"]["select.threshold"]))]
    return out


def _nfe_at_accuracy(points: list[dict], accuracy: float) -> float | None:
    """The fewest forwards Fast-dLLM needs for ``accuracy``: linear between neighbouring points of
    its Pareto front (settings no other setting beats on both accuracy and NFE), so a setting
    that costs more for less accuracy never sets the price. None outside the front's range."""
    front = sorted((a, -x) for x, a in pareto_front([(-p["nfe_mean"], p["accuracy"]) for p in points]))
    for a, n in front:
        if a == accuracy:
            return n
    for (a0, n0), (a1, n1) in zip(front, front[1:]):
        if a0 <= accuracy <= a1:
            return n0 + (n1 - n0) * (accuracy - a0) / (a1 - a0)
    return None


def _by_strategy_then_cost(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(summary["settings"], key=lambda s: (s["strategy"], -s["nfe_mean"]))


def _overhead_table(over: dict[str, Any]) -> list[str]:
    lines = ["| batch | pairs | forward (ms): framework / bare | framework (ms) | bare loop (ms) | overhead | "
             "outside forwards per step: framework / bare (us) | overhead outside forwards |",
             "|---|---|---|---|---|---|---|---|"]
    for r in over.values():
        iqr, outside, forward = (r.get(k) for k in ("overhead_percent_iqr", "outside_forward_us_per_step",
                                                    "forward_ms"))
        own = r.get("outside_forward_overhead_percent")
        lines.append(f"| {r['batch']} | {r.get('repeats', '?')} | "
                     + (f"{forward['framework']:.2f} / {forward['bare']:.2f}" if isinstance(forward, dict) else "n/a")
                     + f" | {r['framework_ms']:.1f} | {r['bare_ms']:.1f} | {r['overhead_percent']:+.1f}%"
                     + (f" [{iqr[0]:+.1f}, {iqr[1]:+.1f}]" if iqr else "") + " | "
                     + (f"{outside['framework']:.0f} / {outside['bare']:.0f}" if outside else "n/a") + " | "
                     + (f"{own:+.1f}%" if own is not None else "n/a") + " |")
    return lines


def _run_conditions(meta: dict[str, Any], lead: str) -> str:
    """How this run differs from the defaults (--logit-temperature, --logit-noise, --kv-cache, --blocks), or ''."""
    parts = []
    if meta.get("logit_temperature", 1.0) != 1.0:
        parts.append(f"logits divided by {meta['logit_temperature']:g}")
    if meta.get("logit_noise"):
        parts.append(f"Gaussian noise of std {meta['logit_noise']:g} added to the logits at every forward")
    if meta.get("blocks", 1) != 1:
        parts.append(f"answers decoded in {meta['blocks']} blocks")
    if meta.get("kv_cache"):
        refresh = f", refreshed after every {meta['kv_refresh']} cached forwards" if meta.get("kv_refresh") else ""
        parts.append(f"key-value cache {meta['kv_cache']!r}{refresh}")
    return lead + " and ".join(parts) if parts else ""


def _mean_table(summary: dict[str, Any]) -> list[str]:
    lines = ["| setting | accuracy | mean NFE | TPF |", "|---|---|---|---|"]
    for s in _by_strategy_then_cost(summary):
        lines.append(f"| `{s['label']}` | {100 * s['accuracy']:.1f} | {s['nfe_mean']:.2f} | {s['tpf']:.2f} |")
    return lines


def _aup_table(summary: dict[str, Any]) -> list[str]:
    lines = ["| strategy | " + " | ".join(summary["tasks"]) + " | mean |", "|---" * (len(summary["tasks"]) + 2) + "|"]
    for strategy, per_task in sorted(summary["aup"].items()):
        vals = [per_task.get(t, float("nan")) for t in summary["tasks"]]
        lines.append(f"| `{strategy}` | " + " | ".join(f"{v:.0f}" for v in vals) + f" | {statistics.mean(vals):.0f} |")
    return lines


def markdown(payload: dict[str, Any]) -> str:
    results = payload["results"]
    summary = summarise(results)
    meta = payload["meta"]
    lines = [f"Model `{meta.get('model', 'reference')}`, test split, n = {meta['n']} per task"
             + _run_conditions(meta, ", ")
             + (" (INTERRUPTED: partial)" if payload.get("interrupted") else ""), "",
             "### Mean over tasks", "", *_mean_table(summary),
             "", "### AUP per strategy (d3LLM definition, alpha = 3)", "", *_aup_table(summary)]
    lines += ["", "### Per task", "", "| task | setting | accuracy | mean NFE | TPF | tokens/s | latency/sample (ms) |",
              "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['task']} | `{r['label']}` | {100 * r['accuracy']:.1f} | {r['nfe_mean']:.2f} | "
                     f"{r['tpf']:.2f} | {r['tokens_per_second']:.0f} | {1000 * r['latency_per_sample_s']:.2f} |")
    return "\n".join(lines) + "\n"


def make_plots(payload: dict[str, Any], model: Any, tokenizer: Any, out_dir: Path, task: str = "latin_square",
               n: int = 64) -> dict[str, str]:
    """Pareto plot, NFE histogram and trace figures (commit gap, one decode)."""
    from . import plots

    summary = summarise(payload["results"])
    paths = {"pareto": plots.plot_accuracy_vs_tpf(summary["settings"], out_dir / "pareto.png",
                                                   "accuracy vs tokens per forward (mean over tasks)")}
    rows = [r for r in payload["results"] if r["task"] == task]
    hist = {r["label"]: r["nfe"] for r in rows if r["label"] in (
        "llada_low_confidence(k=1)", "fast_dllm_threshold(threshold=0.9)", "credit_decoding(threshold=0.9)")}
    if hist:
        paths["nfe_histogram"] = plots.plot_nfe_histogram(hist, out_dir / "nfe_histogram.png", f"NFE per sample, {task}")
    gaps, first_trace = {}, None
    for label, strategy, overrides in (("llada one token/step", "llada_low_confidence", {}),
                                       ("fast_dllm 0.9", "fast_dllm_threshold", {}),
                                       ("credit 0.9", "credit_decoding", {})):
        with torch.no_grad():
            r = evaluate(model, tokenizer, strategy, task, n, overrides=overrides, trace=True)
        trace = r["traces"][0]
        gaps[label] = torch.cat([t.commit_gap() for t in r["traces"]])
        payload.setdefault("trace_analysis", {})[label] = {
            "task": task, "n": n, "mean_commit_gap": float(gaps[label].double().mean()),
            "mean_commit_step": float(torch.cat([t.commit_step() for t in r["traces"]]).double().mean())}
        if first_trace is None:
            first_trace = trace
        paths[f"decode_{strategy}"] = plots.plot_decode(trace, 0, out_dir / f"decode_{strategy}.png",
                                                        f"{label} on {task}, sample 0")
    paths["commit_gap"] = plots.plot_commit_gap(gaps, out_dir / "commit_gap.png",
                                                f"earliest-correct to commit gap, {task}")
    return {k: str(v) for k, v in paths.items()}


# --------------------------------------------------------------------------- overhead


def bare_low_confidence_loop(model: Any, prompt: torch.Tensor, attention_mask: torch.Tensor, gen_length: int,
                             mask_id: int) -> tuple[torch.Tensor, int]:
    """Reference baseline for the overhead measurement only: LLaDA's low-confidence rule with one
    token per step, written as one bare loop (one block). Every row takes exactly ``gen_length``
    forwards on both sides, and the model gets an attention mask only when there is padding, as
    the framework does, so the comparison is the same forwards and the same arithmetic."""
    b, p = prompt.shape
    x = torch.cat([prompt, torch.full((b, gen_length), mask_id)], dim=1)
    am = torch.cat([attention_mask, torch.ones(b, gen_length, dtype=torch.long)], dim=1)
    am = am if bool((am == 0).any()) else None
    rows = torch.arange(b)
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
    from .loop import generate
    from .tasks import encode_batch

    t = get_task(task)
    prompt, mask = encode_batch(tokenizer, t.examples("test", n), t)
    if batch_size:
        prompt, mask = prompt[:batch_size], mask[:batch_size]
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


# --------------------------------------------------------------------------- CLI


def configure_bench_parser(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--tasks", nargs="*", help=f"tasks (default: all; --quick: {' '.join(QUICK_TASKS)})")
    p.add_argument("--setting", dest="settings", action="append", default=[], metavar="PRESET[:K=V,...]",
                   help="a setting to run instead of the built-in sweep, e.g. credit_decoding:select.threshold=0.8 (repeatable)")
    p.add_argument("--n", type=int, help="test examples per task (default 200; --quick 32)")
    p.add_argument("--batch-size", type=int, default=64)
    add_blocks_argument(p)
    p.add_argument("--quick", action="store_true", help="3 tasks, 6 settings, n=32: under 2 minutes")
    p.add_argument("--overhead", action="store_true", help="only measure framework vs bare-loop decode time")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots and trace figures")
    p.add_argument("--out", default="bench-results", help="output directory (bench.json, bench.md, PNGs)")
    p.add_argument("--report", metavar="PAGE.md",
                   help="also measure the framework overhead and write the full benchmarks page "
                        "(docs/benchmarks.md: verdicts on CreditDecoding's claims, tables, plots from --out)")


def run_bench(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    if args.overhead:
        if model_options(args):
            raise ConfigError("--overhead times the loop on the model as it is: drop --logit-temperature, "
                              "--logit-noise and --kv-cache (the bare loop has none of them)")
        model, tokenizer = model_from_args(args, decodes_tasks="bench --overhead")
        results = measure_overhead(model, tokenizer)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "overhead.json").write_text(json.dumps(results, indent=2))
        (out_dir / "overhead.md").write_text("\n".join(_overhead_table(results)) + "\n")
        print("\n".join(_overhead_table(results)))
        print(f"wrote {out_dir / 'overhead.json'} and {out_dir / 'overhead.md'}")
        return 0
    settings = parse_settings(args.settings) if args.settings else SWEEPS["quick" if args.quick else "full"]
    tasks = args.tasks or (QUICK_TASKS if args.quick else list(TASKS))
    n = args.n or (32 if args.quick else 200)
    validate(settings, tasks, args.blocks)  # before loading anything
    model, tokenizer = model_from_args(args, decodes_tasks="bench")
    meta = {"model": args.model, "quick": args.quick, "threads": torch.get_num_threads(), "blocks": args.blocks,
            **model_options(args)}
    start = time.time()
    try:
        payload = run(model, tokenizer, settings, tasks, n, out_dir, batch_size=args.batch_size, meta=meta,
                      blocks=args.blocks)
    except KeyboardInterrupt:
        print(f"interrupted: finished results kept in {out_dir / 'bench.json'}")
        raise
    payload["claims"] = claims(payload["results"])
    if not args.no_plots:
        payload["plots"] = make_plots(payload, model, tokenizer, out_dir,
                                      task="latin_square" if "latin_square" in tasks else tasks[0],
                                      n=min(n, 64))
    if args.report:
        payload["overhead"] = measure_overhead(model, tokenizer)
    payload["meta"]["seconds"] = round(time.time() - start, 1)
    _write(out_dir, payload)
    (out_dir / "bench.md").write_text(markdown(payload))
    if args.report:
        write_report(payload, Path(args.report), out_dir)
        print(f"wrote {args.report}")
    print(markdown(payload))
    print(json.dumps(payload["claims"], indent=2))
    return 0


def measure_overhead(model: Any, tokenizer: Any) -> dict[str, Any]:
    """Overhead at batch 1, 16 and 64; more pairs where a decode is short (its noise is larger)."""
    return {f"batch {b}": overhead(model, tokenizer, batch_size=b, repeats=repeats)
            for b, repeats in ((1, 61), (16, 11), (64, 5))}


NOTES_START, NOTES_END = "<!-- notes: kept when the page is regenerated -->", "<!-- /notes -->"


def write_report(payload: dict[str, Any], page: Path, image_dir: Path) -> None:
    """Write the benchmarks page; a hand-written notes block already on the page (between the
    notes markers) is carried over, so analysis survives regeneration."""
    import os
    import shlex
    import sys

    notes = ""
    if page.is_file():
        old = page.read_text()
        if NOTES_START in old and NOTES_END in old:
            notes = old[old.index(NOTES_START) + len(NOTES_START):old.index(NOTES_END)].strip()
    payload = {**payload, "notes": f"{NOTES_START}\n{notes}\n{NOTES_END}" if notes else
               f"{NOTES_START}\n{NOTES_END}"}
    command = "dllm-decode bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 1 and sys.argv[1] == "bench" else f"dllm-decode bench --out {image_dir} --report {page}"
    relative = os.path.relpath(image_dir, page.parent)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(report(payload, command, relative))


# --------------------------------------------------------------------------- the benchmarks page


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"about {minutes} minutes" if minutes > 1 else "about a minute"


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def report(payload: dict[str, Any], command: str, image_dir: str) -> str:
    """The whole ``docs/benchmarks.md`` page: method, verdicts on the claims, tables, plots.

    ``image_dir`` is the PNG folder relative to the page."""
    meta = payload["meta"]
    summary = summarise(payload["results"])
    found = payload.get("claims") or claims(payload["results"])
    lines = ["# Benchmarks", "",
             f"Regenerate this page ({_duration(meta.get('seconds', 0))} on 2 CPU cores):", "",
             "```bash", command, "```", "",
             f"Model: `{meta.get('model', 'reference')}`; test split; n = {meta['n']} examples per task; "
             + ("one block of the task's answer length; " if meta.get("blocks", 1) == 1 else "")
             + f"temperature 0; torch threads: {meta.get('threads', '?')}"
             + _run_conditions(meta, "; ") + "."
             + (" **Interrupted run: partial results.**" if payload.get("interrupted") else ""), "",
             "Definitions: **NFE** = model forwards a sample cost; **TPF** = answer tokens (EOS fill "
             "included) / NFE, averaged over samples; **AUP** = accuracy under parallelism (d3LLM): the "
             "area under accuracy-vs-TPF of one strategy's settings, each point weighted by "
             "`min(exp(-3 (1 - acc / best_acc)), 1)`, points more than 5 points below the strategy's "
             "least parallel one dropped; tokens/s and latency are wall-clock of the batched decode "
             "calls (batch 64) on this machine.", ""]
    lines += ["## CreditDecoding's claims on the reference model", ""]
    speed = found.get("speedup_vs_one_token_per_step")
    if speed:
        verdict = "holds" if speed["forward_reduction"] >= 4 and speed["accuracy_within_1_point"] else "does not hold"
        lines += [f"- **Forwards vs one token per step** (target: >= 4x fewer at <= 1 point lower accuracy): "
                  f"{verdict}. `{speed['credit']}` needs {speed['credit_nfe']:.2f} forwards per sample at "
                  f"{100 * speed['credit_accuracy']:.1f}% against {speed['baseline_nfe']:.2f} at "
                  f"{100 * speed['baseline_accuracy']:.1f}% for `{speed['baseline']}`: "
                  f"**{speed['forward_reduction']:.2f}x fewer forwards** (mean over tasks)."]
    matches = found.get("credit_vs_fast_dllm") or []
    if matches:
        lines += ["- **Credit vs plain threshold at equal accuracy** (the fewest forwards Fast-dLLM needs for "
                  "each credit setting's accuracy: linear between neighbouring settings on its Pareto front):", "",
                  "| credit setting | accuracy | credit NFE | Fast-dLLM NFE at that accuracy | credit saves |",
                  "|---|---|---|---|---|"]
        for m in matches:
            interp = m["fast_dllm_nfe_interpolated"]
            saves = f"{100 * (1 - m['credit_nfe'] / interp):+.1f}%" if interp else "outside Fast-dLLM's range"
            lines.append(f"| `{m['credit']}` | {100 * m['accuracy']:.1f} | {m['credit_nfe']:.2f} | "
                         f"{interp:.2f} | {saves} |" if interp else
                         f"| `{m['credit']}` | {100 * m['accuracy']:.1f} | {m['credit_nfe']:.2f} | - | {saves} |")
        lines.append("")
    same = found.get("credit_vs_fast_dllm_same_threshold") or []
    if same:
        lines += ["- **Credit vs plain threshold at the same threshold** (how the comparison is usually "
                  "reported; it credits to the rule what a lower threshold would also buy):", "",
                  "| threshold | Fast-dLLM accuracy (NFE) | credit accuracy (NFE) | credit saves |", "|---|---|---|---|"]
        for m in same:
            lines.append(f"| {m['threshold']:g} | {100 * m['fast_dllm_accuracy']:.1f} ({m['fast_dllm_nfe']:.2f}) | "
                         f"{100 * m['credit_accuracy']:.1f} ({m['credit_nfe']:.2f}) | "
                         f"{100 * (1 - m['credit_nfe'] / m['fast_dllm_nfe']):+.1f}% |")
        lines.append("")
    lines += ["## Mean over tasks", "", *_mean_table(summary)]
    lines += ["", f"![accuracy vs TPF]({image_dir}/pareto.png)", ""]
    lines += ["## Accuracy per task (%)", "",
              "| setting | " + " | ".join(summary["tasks"]) + " |", "|---" * (len(summary["tasks"]) + 1) + "|"]
    cell = {(r["label"], r["task"]): r for r in payload["results"]}
    for s in _by_strategy_then_cost(summary):
        vals = [cell.get((s["label"], t)) for t in summary["tasks"]]
        lines.append(f"| `{s['label']}` | " + " | ".join(
            f"{100 * v['accuracy']:.1f} ({v['nfe_mean']:.1f})" if v else "-" for v in vals) + " |")
    lines += ["", "Cells: accuracy (mean NFE).", "",
              "## AUP per strategy and task", "", *_aup_table(summary)]
    lines += ["", "## Speed and memory per task and setting", "",
              "Decode peak: the resident-memory high-water mark during the evaluation minus the "
              "resident size before it (" + str(payload["results"][0].get("memory_method", "?")) + ").", "",
              "| task | setting | tokens/s | latency/sample (ms) | NFE p50 / p90 / max | decode peak (MB) | logits per step (MB) |",
              "|---|---|---|---|---|---|---|"]
    for r in payload["results"]:
        nfe = sorted(r["nfe"])
        q = lambda f: nfe[min(len(nfe) - 1, int(f * len(nfe)))]  # noqa: E731
        lines.append(f"| {r['task']} | `{r['label']}` | {r['tokens_per_second']:.0f} | "
                     f"{1000 * r['latency_per_sample_s']:.2f} | {q(0.5)} / {q(0.9)} / {nfe[-1]} | "
                     f"{_mb(r.get('decode_peak_mb'))} | {r.get('logits_mb_per_step', 0):.2f} |")
    if payload.get("plots", {}).get("nfe_histogram"):
        lines += ["", f"![NFE histogram]({image_dir}/nfe_histogram.png)"]
    analysis = payload.get("trace_analysis")
    if analysis:
        lines += ["", "## When is a token right, and when is it committed?", "",
                  "From the trace recorder: for every answer token, the earliest step from which its "
                  "argmax already equalled its final value (and stayed so), and the step it was "
                  "committed. The gap is what credit accumulation tries to close.", "",
                  "| decode | task | n | mean commit step | mean gap (steps) |", "|---|---|---|---|---|"]
        for label, a in analysis.items():
            lines.append(f"| {label} | {a['task']} | {a['n']} | {a['mean_commit_step']:.2f} | {a['mean_commit_gap']:.2f} |")
        lines += ["", f"![commit gap]({image_dir}/commit_gap.png)", ""]
        for key in sorted(payload.get("plots", {})):
            if key.startswith("decode_"):
                lines.append(f"![{key}]({image_dir}/{key}.png)")
    over = payload.get("overhead")
    if over:
        lines += ["", "## Framework overhead", "",
                  "`dd.generate` with `llada_low_confidence` (one token per step on `latin_square`: every "
                  "row takes exactly 16 forwards on both sides) against a bare hand-written loop doing the "
                  "same forwards and the same rule (outputs checked identical first), in pairs run back "
                  "to back in one process on one model. Overhead is the median over pairs of framework / "
                  "bare - 1 (interquartile range in brackets). The model's forwards are clocked on both "
                  "sides: the time outside them per step is the loop's own cost, and that difference "
                  "over the bare decode time is the overhead free of the forward's run-to-run noise:", "",
                  *_overhead_table(over)]
    notes = payload.get("notes")
    if notes:
        lines += ["", "## Notes", "", notes]
    return "\n".join(lines).rstrip() + "\n"
