"""PNG plots for benchmarks and traces (matplotlib, Agg backend)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from .metrics import pareto_front


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (imported when a plot is asked for)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    """Lay out ``fig``, write it as PNG to ``path`` and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def plot_accuracy_vs_tpf(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """One line per strategy over its settings (mean over tasks), Pareto front of all in black."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_strategy: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        by_strategy[r["strategy"]].append((r["tpf"], 100 * r["accuracy"]))
    for name, pts in sorted(by_strategy.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name, alpha=0.85)
    front = pareto_front([p for pts in by_strategy.values() for p in pts])
    ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, label="Pareto front")
    ax.set_xlabel("tokens per forward (TPF)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_nfe_histogram(nfe_by_label: dict[str, list[int]], path: Path, title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    top = max(max(v) for v in nfe_by_label.values())
    bins = range(0, top + 2)
    for label, values in nfe_by_label.items():
        ax.hist(values, bins=bins, alpha=0.5, label=label)
    return _finish(fig, ax, path, "forwards per sample (NFE)", "samples", title)


def plot_commit_gap(gaps_by_label: dict[str, torch.Tensor], path: Path, title: str) -> Path:
    """Histogram of (commit step - earliest step from which the token was already final)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    top = int(max(int(g.max()) for g in gaps_by_label.values())) if gaps_by_label else 1
    for label, gaps in gaps_by_label.items():
        ax.hist(gaps.flatten().tolist(), bins=range(0, top + 2), alpha=0.5,
                label=f"{label} (mean {gaps.double().mean():.2f})")
    return _finish(fig, ax, path, "steps between 'already right' and 'committed'", "tokens", title)


def _finish(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Label a histogram, write it as PNG and free the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_decode(trace: Any, row: int, path: Path, title: str) -> Path:
    """Positions x steps: masked & wrong proposal / masked & right proposal / committed now /
    decided earlier."""
    plt = pyplot()
    from matplotlib.colors import ListedColormap

    steps, _, g = trace.argmax.shape
    decided = torch.zeros(g, dtype=torch.bool)
    grid = torch.zeros(steps, g)
    for s in range(steps):
        right = trace.argmax[s, row] == trace.final[row]
        now = trace.committed[s, row]
        state = torch.where(right, 1.0, 0.0)
        state = torch.where(now, 2.0, state)
        state = torch.where(decided & ~now, 3.0, state)
        grid[s] = state
        decided = (decided | now) & ~trace.reopened[s, row]
    fig, ax = plt.subplots(figsize=(max(4, g * 0.3), max(3, steps * 0.25)))
    cmap = ListedColormap(["#d9d9d9", "#9ecae1", "#e6550d", "#31a354"])
    ax.imshow(grid.numpy(), cmap=cmap, vmin=0, vmax=3, aspect="auto", interpolation="nearest")
    ax.set_xlabel("answer position")
    ax.set_ylabel("step")
    ax.set_title(title, fontsize=9)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=l) for c, l in zip(
        cmap.colors, ["masked, argmax wrong", "masked, argmax already final", "committed now", "decided"])],
        fontsize=7, loc="upper right", bbox_to_anchor=(1.0, -0.12), ncol=2)
    return save_figure(fig, path)
