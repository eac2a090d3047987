"""The noisy-credit failure analysis (``dllm-decode bench --credit-noise``): how often does credit
commit a wrong token that threshold decoding alone would not, when wrong tokens accumulate credit?

For each model and task, the same test examples are decoded with ``fast_dllm_threshold`` and
with ``credit_decoding`` at the same threshold, the latter with its credit component swapped for
``credit_noise`` (plugins/credit_noise.py: each step, at each open position with probability
``p``, a wrong token earns the step's credit too). Per noise level, over every answer position
(the EOS fill included, as NFE and TPF count it):

* ``differs_from_threshold``: credit's token is not threshold's;
* ``differs_from_reference``: credit's token is not the reference answer's;
* ``credit_caused``: credit's token differs from threshold's in an example that credit gets
  wrong and threshold right (the task's own check): the errors credit adds (``credit_fixed``:
  the reverse);
* per example: accuracy (the task's own check), mean NFE, and ``examples_lost`` / ``examples_won``
  (credit wrong where threshold is right, and the reverse).

``differs_from_reference`` counts raw token differences: tasks that accept other answers
(``latin_square``, ``complement``) make it non-zero even for correct decodes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.config import load_strategy
from ..core.errors import ConfigError
from ..core.loop import generate
from ..models.placement import model_device
from ..tasks import decode_answer, encode_answers, encode_batch, get_task

NOISE_LEVELS = (0.0, 0.1, 0.2, 0.4)
NOISE_TARGETS = ("random", "runner_up")
NOISE_SCALES = (1.0, 4.0)
THRESHOLD = 0.9
COUNTS = ("differs_from_threshold", "differs_from_reference", "credit_caused", "credit_fixed")


def credit_overrides(threshold: float, p: float, target: str, scale: float = 1.0) -> dict[str, Any]:
    """``credit_decoding``'s overrides for noise ``p`` on ``target``, the wrong token earning ``scale``
    times the step's credit (p = 0: plain credit)."""
    noise = {} if p == 0 else {"fuse.0.use": "credit_noise", "fuse.0.p": p, "fuse.0.target": target,
                               "fuse.0.scale": scale}
    return {"select.threshold": threshold, **noise}


def validate(tasks: Sequence[str], levels: Sequence[float], targets: Sequence[str], threshold: float,
             scales: Sequence[float] = (1.0,)) -> None:
    """Every task, level, target, scale and the threshold checked before any model loads."""
    for name in tasks:
        get_task(name)
    if not levels:
        raise ConfigError("--noise-levels: give at least one level, e.g. 0 0.1 0.2 0.4")
    for target in targets:
        if target not in NOISE_TARGETS:
            raise ConfigError(f"--noise-targets {target!r}: choose from {', '.join(NOISE_TARGETS)}")
    if not targets or not scales:
        raise ConfigError("--noise-targets / --noise-scales: give at least one of each")
    for p in levels:
        for scale in scales:
            try:
                load_strategy("credit_decoding", credit_overrides(threshold, p or 0.5, targets[0], scale))
                load_strategy("credit_decoding", credit_overrides(threshold, p, targets[0], scale))
            except ConfigError as exc:
                raise ConfigError(f"--noise-levels {p} / --noise-scales {scale} / --noise-threshold {threshold}: "
                                  f"{exc}") from None


def _decode(model: Any, tokenizer: Any, task: Any, examples: list, strategy: str, overrides: Mapping[str, Any],
            seed: int, batch_size: int) -> tuple[torch.Tensor, list[bool], list[int]]:
    """Answer tokens ``(n, gen_length)`` on the CPU, per-example correctness and NFE."""
    answers, correct, nfe = [], [], []
    device = model_device(model)
    fixed = {"gen_length": task.gen_length, "block_length": task.gen_length, **overrides}
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        prompt, mask = encode_batch(tokenizer, batch, task)
        with torch.no_grad():
            out = generate(model, prompt.to(device), strategy, attention_mask=mask.to(device), overrides=fixed,
                           seed=seed + start)
        tokens = out.answers.cpu()
        answers.append(tokens)
        correct += [task.check(decode_answer(tokenizer, a), e) for a, e in zip(tokens, batch)]
        nfe += out.nfe.tolist()
    return torch.cat(answers), correct, nfe


def compare(credit: torch.Tensor, threshold: torch.Tensor, reference: torch.Tensor,
            credit_ok: Sequence[bool], threshold_ok: Sequence[bool]) -> dict[str, int]:
    """Position counts of credit's answer tokens against threshold's and the reference's. A
    credit-caused error is a position where credit's token differs from threshold's in an example
    credit gets wrong and threshold right (the task's own check, so answers other than the
    reference that the task accepts are not errors); credit-fixed: the reverse."""
    differs = credit != threshold
    lost = torch.tensor([t and not c for c, t in zip(credit_ok, threshold_ok)], dtype=torch.bool)[:, None]
    won = torch.tensor([c and not t for c, t in zip(credit_ok, threshold_ok)], dtype=torch.bool)[:, None]
    return {"positions": credit.numel(), "differs_from_threshold": int(differs.sum()),
            "differs_from_reference": int((credit != reference).sum()),
            "credit_caused": int((differs & lost).sum()), "credit_fixed": int((differs & won).sum()),
            "threshold_differs_from_reference": int((threshold != reference).sum())}


def analyse(models: Mapping[str, tuple[Any, Any]], tasks: Sequence[str], n: int, *,
            levels: Sequence[float] = NOISE_LEVELS, targets: Sequence[str] = NOISE_TARGETS,
            scales: Sequence[float] = (1.0,), threshold: float = THRESHOLD, seed: int = 0, batch_size: int = 64,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Per (model, target, level, task) counts and the pooled rows (positions summed over tasks,
    accuracy and NFE averaged over tasks). ``models``: label -> (model, tokenizer)."""
    validate(tasks, levels, targets, threshold, scales)
    per_task, pooled = [], []
    for label, (model, tokenizer) in models.items():
        rows: dict[tuple[str, float, float], list[dict[str, Any]]] = {}
        for name in tasks:
            task = get_task(name)
            examples = task.examples("test", n, seed=seed)
            reference = encode_answers(tokenizer, examples, task)
            base, base_ok, base_nfe = _decode(model, tokenizer, task, examples, "fast_dllm_threshold",
                                              {"select.threshold": threshold}, seed, batch_size)
            plain = None
            for target, scale, p in [(t, s, p) for t in targets for s in scales for p in levels]:
                if progress:
                    progress(f"{label} {name} {target} x{scale:g} p={p}")
                if p == 0 and plain is not None:
                    result = plain  # p = 0 is plain credit, whatever the target
                else:
                    result = _decode(model, tokenizer, task, examples, "credit_decoding",
                                     credit_overrides(threshold, p, target, scale), seed, batch_size)
                    plain = result if p == 0 else plain
                tokens, ok, nfe = result
                row = {"model": label, "target": target, "scale": scale, "p": p, "task": name, "n": n,
                       "threshold_accuracy": sum(base_ok) / n, "threshold_nfe": sum(base_nfe) / n,
                       "credit_accuracy": sum(ok) / n, "credit_nfe": sum(nfe) / n,
                       "examples_lost": sum(b and not c for b, c in zip(base_ok, ok)),
                       "examples_won": sum(c and not b for b, c in zip(base_ok, ok)),
                       **compare(tokens, base, reference, ok, base_ok)}
                per_task.append(row)
                rows.setdefault((target, scale, p), []).append(row)
        for (target, scale, p), group in rows.items():
            k = len(group)
            summed = {key: sum(r[key] for r in group) for key in
                      ("positions", *COUNTS, "threshold_differs_from_reference", "examples_lost", "examples_won")}
            pooled.append({"model": label, "target": target, "scale": scale, "p": p, "tasks": len(group),
                           **{key: sum(r[key] for r in group) / k for key in
                              ("threshold_accuracy", "threshold_nfe", "credit_accuracy", "credit_nfe")},
                           **summed,
                           **{f"{key}_rate": summed[key] / summed["positions"] for key in COUNTS}})
    return {"meta": {"tasks": list(tasks), "n": n, "levels": list(levels), "targets": list(targets),
                     "scales": list(scales), "threshold": threshold, "seed": seed, "models": list(models)},
            "pooled": pooled, "per_task": per_task}


def markdown(payload: dict[str, Any]) -> str:
    meta = payload["meta"]
    lines = [f"Noisy credit: `fast_dllm_threshold` and `credit_decoding` at threshold {meta['threshold']:g}, "
             f"{len(meta['tasks'])} tasks ({', '.join(meta['tasks'])}), n = {meta['n']} test examples each; "
             f"noise p = probability per step and open position that a wrong token earns the step's credit (times "
             f"the credit scale) too. "
             f"Accuracy % (mean NFE) averaged over tasks; position rates pooled over every answer position.", "",
             "| model | wrong token | credit scale | p | threshold | credit | differs from threshold | differs from reference "
             "| credit-caused errors | credit-fixed | examples lost / won |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["pooled"]:
        lines.append(f"| {r['model']} | {r['target']} | {r['scale']:g}x | {r['p']:g} | {100 * r['threshold_accuracy']:.1f} "
                     f"({r['threshold_nfe']:.2f}) | {100 * r['credit_accuracy']:.1f} ({r['credit_nfe']:.2f}) | "
                     f"{100 * r['differs_from_threshold_rate']:.2f}% | {100 * r['differs_from_reference_rate']:.2f}% | "
                     f"{100 * r['credit_caused_rate']:.2f}% ({r['credit_caused']}) | "
                     f"{100 * r['credit_fixed_rate']:.2f}% ({r['credit_fixed']}) | "
                     f"{r['examples_lost']} / {r['examples_won']} |")
    return "\n".join(lines) + "\n"


def plot(payload: dict[str, Any], path: Path) -> Path:
    """Credit-caused error rate and accuracy against the noise level, one line per (model, target)."""
    from .plots import pyplot, save_figure

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in payload["pooled"]:
        series.setdefault((r["model"], f"{r['target']} x{r['scale']:g}"), []).append(r)
    for (model, target), rows in series.items():
        rows.sort(key=lambda r: r["p"])
        ps = [r["p"] for r in rows]
        line = left.plot(ps, [100 * r["credit_caused_rate"] for r in rows], marker="o", label=f"{model}, {target}")
        right.plot(ps, [100 * r["credit_accuracy"] for r in rows], marker="o", color=line[0].get_color(),
                   label=f"credit: {model}, {target}")
        right.axhline(100 * rows[0]["threshold_accuracy"], color=line[0].get_color(), ls=":", lw=1)
    left.set_xlabel("noise p (wrong token earns credit)")
    left.set_ylabel("credit-caused errors (% of answer positions)")
    left.set_title("tokens credit gets wrong that threshold gets right", fontsize=9)
    right.set_xlabel("noise p")
    right.set_ylabel("accuracy (%), dotted: threshold alone")
    right.set_title("accuracy, mean over tasks", fontsize=9)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def write(payload: dict[str, Any], out_dir: Path) -> list[Path]:
    """``credit_noise.json``, ``.md`` and ``.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "credit_noise.json", out_dir / "credit_noise.md", out_dir / "credit_noise.png"]
    paths[0].write_text(json.dumps(payload, indent=1) + "\n")
    paths[1].write_text(markdown(payload))
    plot(payload, paths[2])
    return paths
