"""lm-eval results files of the dllm model -> our comparison table (Markdown) and a Pareto plot.

One results file is one setting (strategy, overrides, key-value cache, lengths). For every task
(and group: its subtasks' requests pooled) a row gives the score, the mean NFE, tokens per
forward and tokens/s, and the speed-up against a baseline setting of the same task and answer
length: NFE speed-up = baseline NFE / NFE (hardware-free), tokens/s speed-up = tokens/s /
baseline tokens/s (wall clock; compare runs made on the same hardware only).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ...core.errors import ConfigError

DEFAULT_BASELINE_STRATEGY = "llada_low_confidence"


def read_results(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every results file in ``paths`` (files, or directories searched for ``results_*.json``),
    each with its path; a file the dllm model did not write is a ConfigError naming it."""
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = sorted(path.rglob("results_*.json"))
            if not found:
                raise ConfigError(f"{str(path)!r} holds no lm-eval results file (results_*.json)")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"{str(path)!r} does not exist")
    runs = []
    for file in files:
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{str(file)!r} is not a JSON results file: {exc}") from None
        if not isinstance(data, dict) or "dllm" not in (data.get("config") or {}):
            raise ConfigError(f"{str(file)!r} was not written by the dllm model (no config.dllm); run "
                              f"dllm-decode lm-eval ... --output_path DIR")
        runs.append({"path": str(file), **data})
    return runs


def setting_label(dllm: Mapping[str, Any]) -> str:
    """``strategy [key=value ...] [+cache]``: what distinguishes one run's decoding from another's."""
    parts = [str(dllm.get("strategy"))]
    parts += [f"{k}={v}" for k, v in sorted((dllm.get("overrides") or {}).items())]
    if dllm.get("steps"):
        parts.append(f"steps={dllm['steps']}")
    if dllm.get("kv_cache"):
        parts.append(f"+{dllm['kv_cache']} cache")
    return " ".join(parts)


def _score(task_results: Mapping[str, Any], metric: str | None) -> tuple[str, float] | None:
    candidates = [(k, v) for k, v in task_results.items()
                  if "," in k and "_stderr" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)]
    if metric is not None:
        chosen = [(k, v) for k, v in candidates if k == metric or k.split(",")[0] == metric]
        if not chosen:
            raise ConfigError(f"--metric {metric!r}: not among the task's metrics {', '.join(k for k, _ in candidates)}")
        return chosen[0]
    return candidates[0] if candidates else None


def _leaf_stats(name: str, stats: Mapping[str, Any], subtasks: Mapping[str, list[str]]) -> list[dict[str, Any]]:
    if name in stats:
        return [stats[name]]
    return [s for sub in subtasks.get(name, []) for s in _leaf_stats(sub, stats, subtasks)]


def _pooled(parts: list[dict[str, Any]]) -> dict[str, Any]:
    n = sum(p["requests"] for p in parts)
    seconds = sum(p["decode_seconds"] for p in parts)
    pooled = {"requests": n, "nfe_mean": sum(p["nfe_mean"] * p["requests"] for p in parts) / n,
              "gen_length": parts[0].get("gen_length")}
    if all("tokens_per_forward" in p for p in parts):
        pooled["tokens_per_forward"] = sum(p["tokens_per_forward"] * p["requests"] for p in parts) / n
        tokens = sum(p["gen_length"] * p["requests"] for p in parts)
        pooled["tokens_per_second"] = tokens / seconds if seconds else None
    return pooled


def comparison_rows(runs: list[dict[str, Any]], *, baseline: str | None = None,
                    metrics: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per (task, run): score, NFE, TPF, tokens/s and the speed-ups against the baseline
    setting of the same task and answer length."""
    metrics = dict(metrics or {})
    rows = []
    for run in runs:
        dllm = run["config"]["dllm"]
        stats = dllm.get("tasks") or {}
        subtasks = run.get("group_subtasks") or {}
        label = setting_label(dllm)
        for task, task_results in {**run.get("results", {}), **run.get("groups", {})}.items():
            parts = _leaf_stats(task, stats, subtasks)
            score = _score(task_results, metrics.get(task))
            if not parts or score is None:
                continue
            pooled = _pooled(parts)
            rows.append({"task": task, "setting": label, "strategy": dllm.get("strategy"),
                         "kv_cache": dllm.get("kv_cache"), "metric": score[0], "score": float(score[1]),
                         "gen_length": pooled["gen_length"], "requests": pooled["requests"],
                         "nfe": pooled["nfe_mean"], "tpf": pooled.get("tokens_per_forward"),
                         "tokens_per_second": pooled.get("tokens_per_second"), "path": run["path"]})
    if not rows:
        raise ConfigError("the results files hold no task with dllm speed statistics")
    labels = list(dict.fromkeys(r["setting"] for r in rows))
    if baseline is not None and baseline not in labels:
        raise ConfigError(f"--baseline {baseline!r} is none of the settings: {', '.join(map(repr, labels))}")
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["task"], r["gen_length"])].append(r)
    for members in groups.values():
        base = _baseline_of(members, baseline)
        for r in members:
            r["baseline"] = base["setting"] if base else None
            r["speedup_nfe"] = base["nfe"] / r["nfe"] if base and r["nfe"] else None
            r["speedup_tokens_per_second"] = (r["tokens_per_second"] / base["tokens_per_second"]
                                              if base and r["tokens_per_second"] and base["tokens_per_second"] else None)
    return sorted(rows, key=lambda r: (r["task"], r["gen_length"] or 0, -(r["nfe"] or 0)))


def _baseline_of(members: list[dict[str, Any]], baseline: str | None) -> dict[str, Any] | None:
    if baseline is not None:
        return next((r for r in members if r["setting"] == baseline), None)
    plain = [r for r in members if r["strategy"] == DEFAULT_BASELINE_STRATEGY and not r["kv_cache"]]
    return plain[0] if plain else members[0]


def _number(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| task | gen length | setting | score | NFE | TPF | tokens/s | speed-up (NFE) | speed-up (tokens/s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['gen_length'] or 'n/a'} | `{r['setting']}` | {100 * r['score']:.1f} "
                     f"| {r['nfe']:.1f} | {_number(r['tpf'], '.2f')} | {_number(r['tokens_per_second'], '.0f')} "
                     f"| {_number(r['speedup_nfe'], '.2f')}x | {_number(r['speedup_tokens_per_second'], '.2f')}x |")
    metrics = sorted({(r["task"], r["metric"]) for r in rows})
    baselines = sorted({r["baseline"] for r in rows if r["baseline"]})
    lines += ["", "Scores (x100): " + "; ".join(f"{task}: `{metric}`" for task, metric in metrics) + ". "
              + "Speed-ups against " + (", ".join(f"`{b}`" for b in baselines) or "n/a")
              + " on the same task and answer length."]
    return "\n".join(lines)


def pareto_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Mean score over tasks vs. mean tokens per forward, one point per setting and answer length,
    with the Pareto front (generate_until rows only: loglikelihood has no tokens per forward)."""
    from ..plots import plot_accuracy_vs_tpf

    points: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["tpf"] is not None:
            points[f"{r['setting']} (gen {r['gen_length']})"].append(r)
    if not points:
        raise ConfigError("--plot: no generate_until task in the results (nothing has tokens per forward)")
    means = [{"strategy": label, "tpf": sum(r["tpf"] for r in rs) / len(rs),
              "accuracy": sum(r["score"] for r in rs) / len(rs)} for label, rs in sorted(points.items())]
    tasks = sorted({r["task"] for r in rows if r["tpf"] is not None})
    return plot_accuracy_vs_tpf(means, Path(path), f"score vs. tokens per forward ({', '.join(tasks)})")
