"""Metrics over evaluation results: AUP (accuracy under parallelism), per-setting summaries,
and CreditDecoding's claims checked on a sweep."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (tpf, accuracy) not dominated by another (higher or equal in both, one strictly),
    sorted by tpf."""
    front = []
    for x, y in points:
        dominated = any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for x2, y2 in points)
        if not dominated:
            front.append((x, y))
    return sorted(set(front))

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
