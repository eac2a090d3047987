"""Markdown for people: the sweep's tables (``bench.md``) and the whole benchmarks page."""

from __future__ import annotations

import os
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from .metrics import claims, summarise


def _by_strategy_then_cost(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(summary["settings"], key=lambda s: (s["strategy"], -s["nfe_mean"]))


def overhead_table(over: dict[str, Any]) -> list[str]:
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


NOTES_START, NOTES_END = "<!-- notes: kept when the page is regenerated -->", "<!-- /notes -->"


def write_report(payload: dict[str, Any], page: Path, image_dir: Path) -> None:
    """Write the benchmarks page; a hand-written notes block already on the page (between the
    notes markers) is carried over, so analysis survives regeneration."""
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
                  *overhead_table(over)]
    notes = payload.get("notes")
    if notes:
        lines += ["", "## Notes", "", notes]
    return "\n".join(lines).rstrip() + "\n"
