"""Sweeps: strategies x settings x tasks, evaluated and written to ``bench.json`` (``dllm-decode bench``).

Every strategy, override key and task is validated before the first decode. While the sweep
runs, results go to ``bench.partial.json`` after every finished setting (``"partial": true``), so
an interrupted run (Ctrl-C, SIGTERM) keeps what it finished, marked ``"interrupted": true``;
``bench.json`` is written (atomically) only once everything is done, so a committed one is never
replaced by partial results.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.config import load_strategy, parse_override_value
from ..core.errors import ConfigError
from ..tasks import get_task
from . import plots
from .evaluate import block_length, evaluate
from .metrics import summarise


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
        *_sweep("klass", "select.threshold", [0.6, 0.9]),
        *_sweep("klass", "select.kl_threshold", [0.001, 0.1], **{"select.threshold": 0.9}),
        *_sweep("prophet_early_commit", "early_commit.late", [1.0, 2.5]),
        *_sweep("dilated_unmasking", "select.base", [2.0, 4.0]),
        *_sweep("pc_sampler", "score.position_decay", [0.0, 0.25]),
        *[Setting("saber", {"select.n": n, "remask.n": n}) for n in (1, 2)],
        *[Setting("remdm_cap", {"select.eta": eta, "remask.eta": eta}) for eta in (0.02, 0.1)],
        *_sweep("joint_threshold", "select.threshold", [0.5, 0.9]),
        *_sweep("freedave", "draft.depth", [4, 8]),
        *_sweep("local_leap", "select.relaxed_threshold", [0.5, 0.75]),
        Setting("slow_fast"),
        Setting("slow_fast", {"select.explore_steps": 8, "select.span_threshold": 0.1, "select.high_threshold": 0.85}),
        *_sweep("wino", "select.wide_in_threshold", [0.6, 0.8]),
    ],
    "quick": [
        *_sweep("llada_low_confidence", "select.k", [1, 8]),
        *_sweep("fast_dllm_threshold", "select.threshold", [0.5, 0.9]),
        *_sweep("credit_decoding", "select.threshold", [0.5, 0.9]),
    ],
}
QUICK_TASKS = ["sort", "addition", "latin_square"]


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


RESULTS_NAME = "bench.json"
PARTIAL_NAME = "bench.partial.json"


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:  # a full disk or a vanished folder: one line, the finished work named
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None


def write_results(out_dir: Path, payload: dict[str, Any]) -> Path:
    """The finished sweep as ``bench.json`` (atomically); the partial file is removed."""
    path = out_dir / RESULTS_NAME
    _write_atomically(path, json.dumps({k: v for k, v in payload.items() if k != "partial"}, indent=1))
    (out_dir / PARTIAL_NAME).unlink(missing_ok=True)
    return path


def write_partial(out_dir: Path, payload: dict[str, Any]) -> Path:
    """Results so far as ``bench.partial.json``, marked ``"partial": true``."""
    path = out_dir / PARTIAL_NAME
    _write_atomically(path, json.dumps({**payload, "partial": True}, indent=1))
    return path


def run(model: Any, tokenizer: Any, settings: list[Setting], tasks: list[str], n: int, out_dir: Path,
        batch_size: int = 64, progress: bool = True, meta: dict[str, Any] | None = None,
        blocks: int = 1) -> dict[str, Any]:
    """Run the sweep; ``bench.partial.json`` is rewritten after every finished (task, setting)
    (and marked interrupted on Ctrl-C / SIGTERM); the caller writes ``bench.json`` at the end."""
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
            write_partial(out_dir, payload)
    except KeyboardInterrupt:
        payload["interrupted"] = True
        write_partial(out_dir, payload)
        raise
    return payload


def make_plots(payload: dict[str, Any], model: Any, tokenizer: Any, out_dir: Path, task: str = "latin_square",
               n: int = 64) -> dict[str, str]:
    """Pareto plot, NFE histogram and trace figures (commit gap, one decode)."""
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
