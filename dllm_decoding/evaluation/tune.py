"""Strategy search (``dllm-decode tune``): the fastest setting of a strategy's numeric options that
meets an accuracy target on the validation split, or the accuracy/NFE front, then the chosen
setting(s) measured once on the test split (the honest number: the search never sees it).

The search is deterministic and budgeted (``budget`` validation evaluations, each on the same
``n`` validation examples): the preset's own setting first, then a coarse grid over the space
(a seeded Latin hypercube when a grid with two levels per option would not fit half the budget),
then refinement: a pattern search around the best feasible point (one option at a time, steps
halved when no neighbour improves), or, in Pareto mode, the midpoints between neighbours on the
front. Settings that round to one already measured are not measured again.

Options are searched in a unit cube: ``u`` in [0, 1] maps to ``lo + u (hi - lo)``, to
``lo (hi / lo) ** u`` on a log scale, to an integer by rounding, or to one of a list of values.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import _base_types, load_strategy, parse_override_value
from ..core.errors import ConfigError
from ..tasks import get_task
from .evaluate import block_length, evaluate

# a decade either side of the preset's value where an option's bounds are missing or span more
DECADES_AROUND_VALUE = 1.0
# bounds wider than this many times the option's value are treated as missing (alpha <= 1000)
WIDE_BOUNDS = 10.0
# an exclusive bound (gt / lt) is moved inwards by this fraction of the range
OPEN_BOUND_MARGIN = 0.01
# the smallest refinement step in the unit cube
MIN_STEP = 1 / 512


@dataclass(frozen=True)
class Dimension:
    """One searched option: ``key`` (a dotted override key) over a range or a list of values."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def value(self, u: float) -> Any:
        """The option's value at ``u`` in [0, 1]."""
        u = min(1.0, max(0.0, u))
        if self.choices is not None:
            return self.choices[round(u * (len(self.choices) - 1))]
        x = self.low * (self.high / self.low) ** u if self.log else self.low + u * (self.high - self.low)
        return int(round(x)) if self.integer else float(f"{x:.4g}")

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.key} in {{{', '.join(map(str, self.choices))}}}"
        return f"{self.key} in [{self.low:g}, {self.high:g}]" + (" (log)" if self.log else "") + \
            (" (integer)" if self.integer else "")


# --------------------------------------------------------------------------- the space


def parse_space(items: Sequence[str]) -> list[Dimension]:
    """``key=lo:hi[:log]`` or ``key=v1,v2,...`` (the ``--space`` syntax) -> dimensions."""
    dims = []
    for item in items:
        key, sep, spec = item.partition("=")
        key, spec = key.strip(), spec.strip()
        if not sep or not key or not spec:
            raise ConfigError(f"--space {item!r}: expected key=lo:hi[:log] or key=v1,v2,... "
                              f"(e.g. select.threshold=0.5:0.99)")
        if any(d.key == key for d in dims):
            raise ConfigError(f"--space {item!r}: {key!r} is given twice; give each option once")
        if "," in spec:
            values = tuple(parse_override_value(v.strip()) for v in spec.split(",") if v.strip())
            if len(values) < 2 or len(set(map(repr, values))) != len(values):
                raise ConfigError(f"--space {item!r}: give at least two different values")
            dims.append(Dimension(key, choices=values))
            continue
        parts = spec.split(":")
        log = parts[-1] == "log"
        if log:
            parts = parts[:-1]
        if len(parts) != 2:
            raise ConfigError(f"--space {item!r}: a range is lo:hi or lo:hi:log, e.g. {key}=0.5:0.99")
        lo, hi = (parse_override_value(p.strip()) for p in parts)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (lo, hi)):
            raise ConfigError(f"--space {item!r}: the bounds must be finite numbers")
        if not lo < hi:
            raise ConfigError(f"--space {item!r}: the lower bound must be below the upper one")
        if log and lo <= 0:
            raise ConfigError(f"--space {item!r}: a log range needs a lower bound > 0")
        dims.append(Dimension(key, float(lo), float(hi), log, isinstance(lo, int) and isinstance(hi, int)))
    return dims


def _bounds(info: Any) -> tuple[float | None, bool, float | None, bool]:
    """(low, low exclusive, high, high exclusive) from a pydantic field's metadata."""
    lo = hi = None
    lo_open = hi_open = False
    for m in info.metadata:
        if getattr(m, "ge", None) is not None:
            lo = m.ge
        if getattr(m, "gt", None) is not None:
            lo, lo_open = m.gt, True
        if getattr(m, "le", None) is not None:
            hi = m.le
        if getattr(m, "lt", None) is not None:
            hi, hi_open = m.lt, True
    return lo, lo_open, hi, hi_open


def _number_kind(annotation: Any) -> type | None:
    """int or float for a plain number field (None allowed beside it), else None."""
    kinds = _base_types(annotation) - {type(None)}
    return kinds.pop() if len(kinds) == 1 and kinds <= {int, float} else None


def default_space(strategy: Any, overrides: Mapping[str, Any] | None = None) -> tuple[list[Dimension], list[str]]:
    """The numeric options the strategy's components expose, each over its pydantic Field bounds,
    or (bounds missing, or wider than ``WIDE_BOUNDS`` times the preset's value) a decade either
    side of the preset's value on a log scale, clipped to the bounds. Returns (dimensions, the
    options left out and why)."""
    strat = load_strategy(strategy, overrides)
    dims, skipped = [], []
    for (where, cfg), comp in zip(strat.components(), strat.instantiate()):
        for name, info in type(comp.options).model_fields.items():
            key = f"{where}.{name}"
            kind = _number_kind(info.annotation)
            value = getattr(comp.options, name)
            if kind is None or isinstance(value, bool):
                continue  # a switch or a choice of names: not a number to search
            if value is None:
                skipped.append(f"{key} (none in this preset: give --space {key}=lo:hi to search it)")
                continue
            lo, lo_open, hi, hi_open = _bounds(info)
            if lo is not None and hi is not None and (hi - lo) <= WIDE_BOUNDS * max(abs(value), 1.0):
                span = hi - lo
                lo = lo + OPEN_BOUND_MARGIN * span if lo_open else lo
                hi = hi - OPEN_BOUND_MARGIN * span if hi_open else hi
                dims.append(Dimension(key, float(lo), float(hi), integer=kind is int))
                continue
            if value <= 0:
                skipped.append(f"{key} (unbounded and {value} in this preset: give --space {key}=lo:hi)")
                continue
            low, high = value / 10 ** DECADES_AROUND_VALUE, value * 10 ** DECADES_AROUND_VALUE
            if lo is not None:
                low = max(low, lo * (1 + OPEN_BOUND_MARGIN) if lo_open and lo > 0 else lo)
            if hi is not None:
                high = min(high, hi)
            if kind is int:
                low, high = max(1, math.floor(low)), max(2, math.ceil(high))
            if low <= 0 or not low < high:
                skipped.append(f"{key} (no usable range from its bounds: give --space {key}=lo:hi)")
                continue
            dims.append(Dimension(key, float(low), float(high), log=True, integer=kind is int))
    return dims, skipped


def validate_space(strategy: Any, dims: Sequence[Dimension], task: str, blocks: int = 1,
                   overrides: Mapping[str, Any] | None = None) -> None:
    """Every key and both ends of every range (every value of a list) checked against the strategy
    before any model loads: an unknown key or an out-of-bounds value is one clear error."""
    if not dims:
        raise ConfigError("nothing to search: the strategy exposes no numeric option with a usable range; "
                          "give --space key=lo:hi (e.g. --space select.threshold=0.5:0.99)")
    fixed = {"gen_length": get_task(task).gen_length, "block_length": block_length(get_task(task), blocks),
             **(overrides or {})}
    for d in dims:
        probes = d.choices if d.choices is not None else (d.value(0.0), d.value(1.0))
        for v in probes:
            try:
                load_strategy(strategy, {**fixed, d.key: v})
            except ConfigError as exc:
                raise ConfigError(f"--space {d.key}: the value {v!r} is not valid for this strategy: {exc}") from None


# --------------------------------------------------------------------------- the search


@dataclass
class Trial:
    """One evaluated setting (validation split)."""

    index: int
    phase: str
    overrides: dict[str, Any]
    accuracy: float
    nfe_mean: float
    feasible: bool
    seconds: float
    point: tuple[float, ...] = field(default=(), repr=False)

    def record(self) -> dict[str, Any]:
        return {"index": self.index, "phase": self.phase, "overrides": self.overrides,
                "accuracy": self.accuracy, "nfe_mean": self.nfe_mean, "feasible": self.feasible,
                "seconds": round(self.seconds, 3)}


def _preference(t: Trial) -> tuple:
    """Feasible first, then fewest forwards; infeasible by accuracy; ties: more accurate, earlier."""
    return (0, t.nfe_mean, -t.accuracy, t.index) if t.feasible else (1, -t.accuracy, t.nfe_mean, t.index)


def pareto(trials: Sequence[Trial]) -> list[Trial]:
    """Trials no other beats on both accuracy (higher) and NFE (lower), by NFE."""
    front = [t for t in trials if not any(
        o.accuracy >= t.accuracy and o.nfe_mean <= t.nfe_mean and (o.accuracy > t.accuracy or o.nfe_mean < t.nfe_mean)
        for o in trials)]
    seen, out = set(), []
    for t in sorted(front, key=lambda t: (t.nfe_mean, -t.accuracy, t.index)):
        if (t.accuracy, t.nfe_mean) not in seen:
            seen.add((t.accuracy, t.nfe_mean))
            out.append(t)
    return out


def _coarse_points(dims: Sequence[Dimension], count: int, seed: int) -> list[tuple[float, ...]]:
    """A full grid when ``levels ** d <= count`` with at least two levels, else a seeded Latin
    hypercube of ``count`` points (each option's range cut into ``count`` strata)."""
    d = len(dims)
    levels = max(2, int(math.floor(count ** (1 / d) + 1e-9)))
    if levels ** d <= count:
        axis = [i / (levels - 1) for i in range(levels)]
        grid = [()]
        for _ in dims:
            grid = [g + (u,) for g in grid for u in axis]
        return grid
    rng = random.Random(f"tune/{seed}")
    columns = []
    for _ in dims:
        strata = [(i + 0.5) / count for i in range(count)]
        rng.shuffle(strata)
        columns.append(strata)
    return [tuple(col[i] for col in columns) for i in range(count)]


class Search:
    """The budgeted search over ``dims``: ``evaluate_setting(overrides) -> (accuracy, nfe_mean)``
    on the validation split, ``budget`` calls at most."""

    def __init__(self, dims: Sequence[Dimension], evaluate_setting: Callable[[dict[str, Any]], tuple[float, float]],
                 target: float | None, budget: int, seed: int = 0, start: Mapping[str, Any] | None = None,
                 progress: Callable[[Trial], None] | None = None) -> None:
        self.dims, self.evaluate_setting, self.target, self.budget = list(dims), evaluate_setting, target, budget
        self.seed, self.start, self.progress = seed, dict(start or {}), progress
        self.trials: list[Trial] = []
        self._by_setting: dict[tuple, Trial] = {}

    def setting(self, point: Sequence[float]) -> dict[str, Any]:
        return {d.key: d.value(u) for d, u in zip(self.dims, point)}

    def _try(self, point: Sequence[float], phase: str, overrides: dict[str, Any] | None = None) -> Trial | None:
        """Evaluate ``point`` unless the budget is spent; a setting measured before is returned as is."""
        overrides = overrides if overrides is not None else self.setting(point)
        key = tuple(sorted((k, repr(v)) for k, v in overrides.items()))
        if key in self._by_setting:
            return self._by_setting[key]
        if len(self.trials) >= self.budget:
            return None
        t0 = time.perf_counter()
        accuracy, nfe = self.evaluate_setting(overrides)
        trial = Trial(len(self.trials), phase, overrides, accuracy, nfe,
                      self.target is None or accuracy >= self.target - 1e-12, time.perf_counter() - t0,
                      tuple(point))
        self.trials.append(trial)
        self._by_setting[key] = trial
        if self.progress:
            self.progress(trial)
        return trial

    @property
    def spent(self) -> bool:
        return len(self.trials) >= self.budget

    def best(self) -> Trial | None:
        """The fastest feasible trial, or (none feasible) the most accurate; None before any."""
        return min(self.trials, key=_preference) if self.trials else None

    def _start_point(self) -> tuple[float, ...] | None:
        """The preset's own values in the unit cube, when every one lies in its range."""
        point = []
        for d in self.dims:
            v = self.start.get(d.key)
            if v is None or isinstance(v, bool):
                return None
            if d.choices is not None:
                if v not in d.choices:
                    return None
                point.append(d.choices.index(v) / (len(d.choices) - 1))
                continue
            if not d.low <= v <= d.high:
                return None
            point.append(math.log(v / d.low) / math.log(d.high / d.low) if d.log else (v - d.low) / (d.high - d.low))
        return tuple(point)

    def run(self, pareto_mode: bool = False) -> list[Trial]:
        start = self._start_point()
        if start is not None:
            self._try(start, "preset", {d.key: self.start[d.key] for d in self.dims})
        coarse = max(len(self.dims) + 1, (self.budget - len(self.trials)) // 2)
        points = _coarse_points(self.dims, coarse, self.seed)
        for p in points:
            self._try(p, "coarse")
        step = 0.5 / max(1, round(len(points) ** (1 / len(self.dims))) - 1)
        if pareto_mode:
            self._refine_front()
        else:
            self._refine_best(step)
        return self.trials

    def _refine_best(self, step: float) -> None:
        """Pattern search around the best trial: each option one step up and down; move to a better
        neighbour, halve the step when none is better."""
        while not self.spent and step >= MIN_STEP:
            best = self.best()
            improved = False
            for i in range(len(self.dims)):
                for sign in (-1, 1):
                    p = list(best.point or self._start_point() or [0.5] * len(self.dims))
                    p[i] = min(1.0, max(0.0, p[i] + sign * step))
                    trial = self._try(p, "refine")
                    if trial is None:
                        return
                    if _preference(trial) < _preference(best):
                        improved = True
                        break
                if improved:
                    break
            if not improved:
                step /= 2

    def _refine_front(self) -> None:
        """Midpoints (in the unit cube) between neighbours on the accuracy/NFE front, until the
        budget is spent or every midpoint was measured."""
        while not self.spent:
            front = [t for t in pareto(self.trials) if t.point]
            new = 0
            for a, b in zip(front, front[1:]):
                mid = tuple((x + y) / 2 for x, y in zip(a.point, b.point))
                before = len(self.trials)
                if self._try(mid, "refine") is None:
                    return
                new += len(self.trials) - before
            if not new:
                return


# --------------------------------------------------------------------------- the whole run


def tune(model: Any, tokenizer: Any, strategy: str, task: str, *, dims: Sequence[Dimension],
         target: float | None, budget: int = 24, n: int = 100, test_n: int = 200, seed: int = 0,
         batch_size: int = 64, blocks: int = 1, overrides: Mapping[str, Any] | None = None,
         progress: Callable[[Trial], None] | None = None,
         evaluate_fn: Callable[..., dict[str, Any]] = evaluate) -> dict[str, Any]:
    """Search ``dims`` on ``n`` validation examples, then measure the chosen setting (``target``
    given) or every front setting (``target`` None: Pareto mode) on ``test_n`` test examples."""
    import torch

    if target is not None and not 0 < target <= 1:
        raise ConfigError(f"--target-accuracy {target}: give an accuracy in (0, 1], e.g. 0.98")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 2:
        raise ConfigError(f"--budget {budget}: give at least 2 evaluations")
    fixed = dict(overrides or {})
    validate_space(strategy, dims, task, blocks, fixed)

    def run_on(split: str, count: int, setting: Mapping[str, Any]) -> dict[str, Any]:
        with torch.no_grad():
            return evaluate_fn(model, tokenizer, strategy, task, count, split=split, batch_size=batch_size,
                               overrides={**fixed, **setting}, seed=seed, blocks=blocks)

    def on_validation(setting: dict[str, Any]) -> tuple[float, float]:
        r = run_on("validation", n, setting)
        return r["accuracy"], r["nfe_mean"]

    resolved = load_strategy(strategy, {"gen_length": get_task(task).gen_length,
                                        "block_length": block_length(get_task(task), blocks), **fixed})
    start = {d.key: _resolved_value(resolved, d.key) for d in dims}
    t0 = time.perf_counter()
    search = Search(dims, on_validation, target, budget, seed=seed, start=start, progress=progress)
    trials = search.run(pareto_mode=target is None)
    search_seconds = time.perf_counter() - t0
    front = pareto(trials)
    chosen = search.best() if target is not None else None

    def measured(t: Trial) -> dict[str, Any]:
        r = run_on("test", test_n, t.overrides)
        return {"overrides": t.overrides, "validation": {"accuracy": t.accuracy, "nfe_mean": t.nfe_mean},
                "test": {"accuracy": r["accuracy"], "nfe_mean": r["nfe_mean"], "tpf": r["tpf"]},
                "trial": t.index, "feasible": t.feasible}

    result: dict[str, Any] = {
        "task": task, "strategy": strategy, "fixed_overrides": fixed, "mode": "pareto" if target is None else "target",
        "target_accuracy": target, "budget": budget, "evaluations": len(trials), "n_validation": n,
        "n_test": test_n, "seed": seed, "blocks": blocks, "space": [d.describe() for d in dims],
        "trace": [t.record() for t in trials], "front": [t.index for t in front],
        "search_seconds": round(search_seconds, 2)}
    if target is not None:
        result["chosen"] = measured(chosen) if chosen.feasible else None
        if not chosen.feasible:  # nothing met the target: the most accurate, for the message
            result["most_accurate"] = chosen.record()
    else:
        result["front_test"] = [measured(t) for t in front]
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def _resolved_value(strategy: Any, key: str) -> Any:
    """The value the loaded strategy gives a dotted key (defaults filled in; None when unset)."""
    data = strategy.resolved()
    head, *rest = key.split(".")
    node = data.get(head)
    if head in ("fuse", "observers") and len(rest) == 2:
        name, option = rest
        entries = node or []
        matches = [entries[int(name)]] if name.isdigit() and int(name) < len(entries) else \
            [e for e in entries if e.get("use") == name]
        return matches[0].get(option) if len(matches) == 1 else None
    if rest:
        return node.get(rest[0]) if isinstance(node, dict) and len(rest) == 1 else None
    return node


# --------------------------------------------------------------------------- reporting


def _fmt_setting(overrides: Mapping[str, Any]) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in overrides.items())


def markdown(result: dict[str, Any]) -> str:
    trace = result["trace"]
    head = (f"### tune: `{result['strategy']}` on `{result['task']}`\n\n"
            f"{result['evaluations']} evaluations (budget {result['budget']}) on n = {result['n_validation']} "
            f"validation examples, {result['search_seconds']:.1f} s; searched: {'; '.join(result['space'])}.\n")
    lines = [head]
    if result["mode"] == "target":
        chosen = result["chosen"]
        feasible = sum(t["feasible"] for t in trace)
        lines.append(f"Target: accuracy >= {result['target_accuracy']:g} on validation ({feasible} of "
                     f"{len(trace)} settings meet it).\n")
        if chosen is None:
            best = result["most_accurate"]
            lines.append(f"**No setting met the target.** The most accurate: {_fmt_setting(best['overrides'])} "
                         f"at {100 * best['accuracy']:.1f}% ({best['nfe_mean']:.2f} NFE). Lower the target, "
                         f"widen the space (--space) or raise --budget.")
        else:
            v, t = chosen["validation"], chosen["test"]
            lines += ["| chosen setting | split | n | accuracy | mean NFE |", "|---|---|---|---|---|",
                      f"| {_fmt_setting(chosen['overrides'])} | validation | {result['n_validation']} | "
                      f"{100 * v['accuracy']:.1f} | {v['nfe_mean']:.2f} |",
                      f"| | test | {result['n_test']} | {100 * t['accuracy']:.1f} | {t['nfe_mean']:.2f} |"]
    else:
        lines += ["The accuracy/NFE front on validation, each setting then measured on test:\n",
                  "| setting | validation accuracy | validation NFE | test accuracy | test NFE |", "|---|---|---|---|---|"]
        for f in result["front_test"]:
            lines.append(f"| {_fmt_setting(f['overrides'])} | {100 * f['validation']['accuracy']:.1f} | "
                         f"{f['validation']['nfe_mean']:.2f} | {100 * f['test']['accuracy']:.1f} | "
                         f"{f['test']['nfe_mean']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path:
    """Accuracy vs mean NFE of every evaluated setting (validation), the front, the target and the
    chosen point."""
    from .plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    trace = result["trace"]
    for phase, marker in (("preset", "s"), ("coarse", "o"), ("refine", "^")):
        pts = [t for t in trace if t["phase"] == phase]
        if pts:
            ax.scatter([t["nfe_mean"] for t in pts], [100 * t["accuracy"] for t in pts], marker=marker,
                       alpha=0.7, label=f"{phase} ({len(pts)})")
    front = [trace[i] for i in result["front"]]
    ax.plot([t["nfe_mean"] for t in front], [100 * t["accuracy"] for t in front], "k--", lw=1, label="front")
    if result.get("target_accuracy") is not None:
        ax.axhline(100 * result["target_accuracy"], color="grey", lw=0.8, ls=":", label="target")
    chosen = result.get("chosen")
    if chosen:
        ax.scatter([chosen["validation"]["nfe_mean"]], [100 * chosen["validation"]["accuracy"]], s=160,
                   facecolors="none", edgecolors="red", lw=2, label="chosen (validation)")
        ax.scatter([chosen["test"]["nfe_mean"]], [100 * chosen["test"]["accuracy"]], marker="x", color="red",
                   s=80, label="chosen (test)")
    ax.set_xlabel("mean forwards per sample (NFE)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"tune {result['strategy']} on {result['task']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
