"""Train the reference model with LLaDA's objective on the task suite.

    dllm-decode train-reference --steps 12000 --threads 2 --out runs/reference

LLaDA's SFT objective: sample t ~ U(eps, 1] per sequence, mask each answer token (EOS fill
included) with probability t, never the prompt; cross-entropy on masked positions weighted by
1/t, normalised by the number of answer tokens. Each step draws one task and a batch of its
training split; batches hold about ``--batch-tokens`` tokens, so short tasks get more examples
per step. The task mixture starts from fixed base weights and, after every validation pass,
is re-weighted by each task's validation loss (hard tasks get more steps, solved ones fewer,
never zero). Seeded: the same seed (and thread count) gives the same run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..tasks import TASKS, decode_answer, encode_answers, encode_batch
from .modeling import ReferenceConfig, ReferenceModelForMaskedLM
from .tokenizer import build_tokenizer

#: base share of optimiser steps per task (before the validation-loss re-weighting)
BASE_MIX = {"copy": 1.0, "reverse": 1.0, "sort": 1.2, "insert": 1.0, "addition": 2.0,
            "complement": 1.0, "latin_square": 2.0}
#: decoding settings measured in the training report (all through dd.generate)
EVAL_SETTINGS = {
    "one token per step": {"strategy": "llada_low_confidence"},
    "threshold 0.5": {"strategy": "fast_dllm_threshold", "overrides": {"select.threshold": 0.5}},
    "top-k k=8": {"strategy": "llada_low_confidence", "overrides": {"select.k": 8}},
}


def masked_diffusion_loss(model, prompt, attention_mask, answers, generator=None, eps=1e-3, t=None):
    """LLaDA's loss for one batch; returns (loss, number of masked tokens).

    ``t`` (B, 1) may be given (validation uses fixed noise levels); otherwise it is drawn."""
    b, g = answers.shape
    if t is None:
        t = eps + (1 - eps) * torch.rand(b, 1, generator=generator)
    masked = torch.rand(b, g, generator=generator) < t
    noisy = torch.where(masked, torch.full_like(answers, model.config.mask_token_id), answers)
    ids = torch.cat([prompt, noisy], dim=1)
    mask = torch.cat([attention_mask, torch.ones_like(answers)], dim=1)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, prompt.shape[1]:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), answers.reshape(-1), reduction="none").view(b, g)
    loss = (ce * masked / t).sum() / (b * g)
    return loss, int(masked.sum())


class Validation:
    """A fixed validation set per task with fixed noise levels and masks: a deterministic,
    low-variance loss to compare steps and runs."""

    def __init__(self, tokenizer, n: int, seed: int = 1234) -> None:
        self.batches = {}
        for name, task in TASKS.items():
            examples = task.examples("validation", n, seed=0)
            prompt, mask = encode_batch(tokenizer, examples, task)
            t = ((torch.arange(n, dtype=torch.float32) + 0.5) / n)[:, None]  # stratified noise levels
            self.batches[name] = (prompt, mask, encode_answers(tokenizer, examples, task), t)
        self.seed = seed

    @torch.no_grad()
    def losses(self, model) -> dict[str, float]:
        was_training = model.training
        model.eval()
        out = {}
        for name, (prompt, mask, answers, t) in self.batches.items():
            gen = torch.Generator().manual_seed(self.seed)
            out[name] = float(masked_diffusion_loss(model, prompt, mask, answers, gen, t=t)[0])
        model.train(was_training)
        return out


@torch.no_grad()
def evaluate_accuracy(model, tokenizer, n: int, settings: dict[str, dict] = EVAL_SETTINGS,
                      split: str = "test", seed: int = 0) -> dict:
    """Exact-match accuracy (and mean NFE) per task on ``split`` for each decoding setting,
    decoded with ``dd.generate`` (one block of ``gen_length``)."""
    import dllm_decoding as dd

    results: dict[str, dict[str, float]] = {}
    for name, task in TASKS.items():
        examples = task.examples(split, n, seed=seed)
        prompt, mask = encode_batch(tokenizer, examples, task)
        for label, setting in settings.items():
            out = dd.generate(model, prompt, setting["strategy"], attention_mask=mask,
                              gen_length=task.gen_length, block_length=task.gen_length,
                              overrides=setting.get("overrides", {}))
            correct = [task.check(decode_answer(tokenizer, a), e) for a, e in zip(out.answers, examples)]
            results.setdefault(label, {})[name] = sum(correct) / len(correct)
            results.setdefault(label + " mean NFE", {})[name] = float(out.nfe.double().mean())
    return results


def _batch_sizes(tokenizer, budget: int, lo: int = 16, hi: int = 256) -> dict[str, int]:
    """Examples per step for each task so that a batch holds about ``budget`` tokens."""
    sizes = {}
    for name, task in TASKS.items():
        longest = max(len(e.prompt) for e in task.examples("validation", 64, seed=99)) + task.gen_length
        sizes[name] = max(lo, min(hi, budget // longest))
    return sizes


class ThreadGovernor:
    """``--threads auto``: use both cores while nobody else needs them, one when another process
    is busy (two torch processes with two threads each on two cores thrash). Decided at every
    validation pass from /proc/stat: CPU time used by others = machine busy time - ours."""

    def __init__(self, most: int = 2) -> None:
        self.most = most
        self.threads = most
        self.last = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
            busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            busy = None
        return time.time(), busy, time.process_time()

    def update(self) -> int:
        now = self._sample()
        (t0, b0, p0), (t1, b1, p1) = self.last, now
        self.last = now
        if b0 is not None and b1 is not None and t1 > t0:
            others = ((b1 - b0) - (p1 - p0)) / (t1 - t0)  # cores used by other processes
            self.threads = 1 if others > 0.5 else self.most
            torch.set_num_threads(self.threads)
        return self.threads


def build_model(tokenizer, args: Any) -> ReferenceModelForMaskedLM:
    config = ReferenceConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
                             num_attention_heads=args.heads, intermediate_size=args.ff,
                             mask_token_id=tokenizer.mask_token_id, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
    return ReferenceModelForMaskedLM(config)


def train(args: Any) -> dict:
    from tqdm import tqdm

    governor = ThreadGovernor() if args.threads == "auto" else None
    torch.set_num_threads(2 if governor else int(args.threads))
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    tokenizer = build_tokenizer()
    if args.init_from:
        # continue from a saved checkpoint (weights only; optimiser and schedule start afresh)
        from . import load_reference_model

        model, _ = load_reference_model(args.init_from)
    else:
        model = build_model(tokenizer, args)
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    batch_sizes = _batch_sizes(tokenizer, args.batch_tokens)
    validation = Validation(tokenizer, args.val_n)
    base = {**BASE_MIX, **args.mix}
    weights = dict(base)
    names = list(TASKS)

    total = args.steps
    if not total and not args.minutes:
        raise SystemExit("give --steps or --minutes")
    sized_from_time = not total
    if sized_from_time:
        total = 10 ** 9  # sized after the timing probe below

    def lr_at(step: int) -> float:
        warmup = min(args.warmup, max(1, total // 10))
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress_file = out / "progress.jsonl"  # the curve, one line per validation pass, as it happens
    progress_file.write_text("")
    curve: list[dict] = []
    window: list[float] = []
    start = time.time()
    bar = tqdm(total=args.steps or None, desc="train", mininterval=5, disable=args.quiet, file=sys.stderr)
    step = 0
    while step < total:
        if sized_from_time and step == args.probe_steps:
            # --minutes without --steps: fix the step count (and so the LR schedule) from the
            # measured speed of the first steps, keeping ~8% of the budget for validation passes
            per_step = (time.time() - start) / step
            total = max(step + 1, int(0.92 * 60 * args.minutes / per_step))
            bar.reset(total=total)
            bar.update(step)
        task_name = rng.choices(names, [weights[n] for n in names])[0]
        task = TASKS[task_name]
        examples = [task.sample(rng) for _ in range(batch_sizes[task_name])]
        prompt, mask = encode_batch(tokenizer, examples, task)
        answers = encode_answers(tokenizer, examples, task)
        for group in optim.param_groups:
            group["lr"] = lr_at(step)
        loss, _ = masked_diffusion_loss(model, prompt, mask, answers, generator)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        window.append(float(loss.detach()))
        step += 1
        bar.update(1)
        if step % args.eval_every == 0 or step == total:
            val = validation.losses(model)
            threads = governor.update() if governor else int(args.threads)
            mean_val = sum(val.values()) / len(val)
            if not args.fixed_mix:
                # more steps where the validation loss is high; a floor keeps solved tasks alive
                weights = {n: base[n] * (val[n] + args.mix_floor) for n in names}
            curve.append({"step": step, "train_loss": sum(window) / len(window), "val_loss": mean_val,
                          "val_loss_per_task": {k: round(v, 5) for k, v in val.items()},
                          "seconds": round(time.time() - start, 1), "threads": threads})
            with progress_file.open("a") as f:
                f.write(json.dumps(curve[-1]) + "\n")
            bar.set_postfix(train=f"{curve[-1]['train_loss']:.3f}", val=f"{mean_val:.3f}")
            window = []
        if args.save_every and step % args.save_every == 0:
            # an interrupted run still leaves a usable checkpoint (``latest/``)
            model.save_pretrained(out / "latest")
            tokenizer.save_pretrained(out / "latest")
    bar.close()
    wall = time.time() - start
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    t_eval = time.time()
    accuracy = evaluate_accuracy(model, tokenizer, args.eval_n)
    config = model.config
    report = {
        "command": "dllm-decode train-reference " + " ".join(args.argv),
        "init_from": str(args.init_from) if args.init_from else None,
        "seed": args.seed, "steps": step, "threads": args.threads,
        "train_seconds": round(wall, 1), "seconds_per_step": round(wall / max(1, step), 4),
        "eval_seconds": round(time.time() - t_eval, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": {k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                    "intermediate_size", "vocab_size", "mask_token_id",
                                                    "pad_token_id", "eos_token_id")},
        "optimiser": {"name": "AdamW", "lr": args.lr, "betas": [0.9, 0.98], "weight_decay": 0.01,
                      "warmup": min(args.warmup, max(1, total // 10)), "schedule": "cosine to 5%",
                      "grad_clip": 1.0},
        "batch_tokens": args.batch_tokens, "batch_size_per_task": batch_sizes,
        "base_mix": base, "adaptive_mix": not args.fixed_mix, "final_mix": weights,
        "final_train_loss": curve[-1]["train_loss"] if curve else None,
        "final_val_loss": curve[-1]["val_loss"] if curve else None,
        "final_val_loss_per_task": curve[-1]["val_loss_per_task"] if curve else None,
        "eval_split": "test", "eval_examples_per_task": args.eval_n,
        "eval_settings": EVAL_SETTINGS, "test_accuracy": accuracy,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "loss_curve": curve,
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(curve, out / "loss_curve.png")
    return report


def _plot(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = [c["step"] for c in curve]
    ax.plot(steps, [c["train_loss"] for c in curve], label="train (window mean)", alpha=0.7)
    ax.plot(steps, [c["val_loss"] for c in curve], label="validation (mean over tasks)")
    ax.set_title("LLaDA masked-diffusion loss")
    for name in (curve[0]["val_loss_per_task"] if curve else {}):
        bx.plot(steps, [max(c["val_loss_per_task"][name], 1e-4) for c in curve], label=name)
    bx.set_title("validation loss per task")
    for a in (ax, bx):
        a.set_xlabel("optimiser step")
        a.set_yscale("log")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
