"""Train the reference model with LLaDA's objective on the task suite.

    python -m dllm_decoding.reference.train --steps 6000 --out runs/reference
    dllm-decode train-reference --steps 6000 --out runs/reference

LLaDA's SFT objective: sample t ~ U(eps, 1] per sequence, mask each answer token (EOS fill
included) with probability t, never the prompt; cross-entropy on masked positions weighted by
1/t, normalised by the number of answer tokens. Each step draws one task (by the mixture
weights) and a batch of its training split. Seeded: the same seed gives the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..tasks import TASKS, encode_answers, encode_batch
from .modeling import ReferenceConfig, ReferenceModelForMaskedLM
from .tokenizer import build_tokenizer

DEFAULT_MIX = {"copy": 0.6, "reverse": 0.8, "sort": 1.2, "insert": 1.2, "addition": 2.4,
               "complement": 1.0, "latin_square": 2.8}


def masked_diffusion_loss(model, prompt, attention_mask, answers, generator, eps=1e-3):
    """LLaDA's loss for one batch; returns (loss, number of masked tokens)."""
    b, g = answers.shape
    t = eps + (1 - eps) * torch.rand(b, 1, generator=generator)
    masked = torch.rand(b, g, generator=generator) < t
    noisy = torch.where(masked, torch.full_like(answers, model.config.mask_token_id), answers)
    ids = torch.cat([prompt, noisy], dim=1)
    mask = torch.cat([attention_mask, torch.ones_like(answers)], dim=1)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, prompt.shape[1]:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), answers.reshape(-1), reduction="none").view(b, g)
    loss = (ce * masked / t).sum() / (b * g)
    return loss, int(masked.sum())


def evaluate_accuracy(model, tokenizer, n: int, settings: dict[str, dict], seed: int = 0) -> dict:
    """Exact-match accuracy per task on the test split for each named decoding setting."""
    import dllm_decoding as dd
    from ..tasks import decode_answer

    results: dict[str, dict[str, float]] = {}
    for name, task in TASKS.items():
        examples = task.examples("test", n, seed=seed)
        prompt, mask = encode_batch(tokenizer, examples, task)
        for label, setting in settings.items():
            out = dd.generate(model, prompt, setting["strategy"], attention_mask=mask,
                              gen_length=task.gen_length, block_length=task.gen_length,
                              overrides=setting.get("overrides", {}))
            correct = [task.check(decode_answer(tokenizer, a), e) for a, e in zip(out.answers, examples)]
            results.setdefault(label, {})[name] = sum(correct) / len(correct)
            results.setdefault(label + " mean NFE", {})[name] = float(out.nfe.double().mean())
    return results


EVAL_SETTINGS = {
    "one token per step": {"strategy": "llada_low_confidence"},
    "threshold 0.5": {"strategy": "fast_dllm_threshold", "overrides": {"select.threshold": 0.5}},
    "top-k k=8": {"strategy": "llada_low_confidence", "overrides": {"select.k": 8}},
}


def train(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    tokenizer = build_tokenizer()
    config = ReferenceConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
                             num_attention_heads=args.heads, intermediate_size=args.ff,
                             mask_token_id=tokenizer.mask_token_id, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
    model = ReferenceModelForMaskedLM(config)
    optim = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    mix = {k: v for k, v in DEFAULT_MIX.items()}
    names, weights = list(mix), list(mix.values())
    warmup = min(300, args.steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    from tqdm import tqdm

    curve, start, window = [], time.time(), []
    bar = tqdm(range(args.steps), desc="train", mininterval=5, disable=args.quiet)
    step = 0
    for step in bar:
        if args.minutes and time.time() - start > 60 * args.minutes:
            break
        task = TASKS[rng.choices(names, weights)[0]]
        examples = [task.sample(rng) for _ in range(args.batch_size)]
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
        if (step + 1) % 50 == 0:
            curve.append({"step": step + 1, "loss": sum(window) / len(window), "seconds": time.time() - start})
            bar.set_postfix(loss=f"{curve[-1]['loss']:.3f}")
            window = []
    wall = time.time() - start
    model.eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    with torch.no_grad():
        accuracy = evaluate_accuracy(model, tokenizer, args.eval_n, EVAL_SETTINGS)
    report = {
        "seed": args.seed, "steps": step + 1, "batch_size": args.batch_size, "lr": args.lr,
        "threads": args.threads, "train_seconds": round(wall, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": {k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                    "intermediate_size", "vocab_size")},
        "task_mix": mix, "final_loss": curve[-1]["loss"] if curve else None,
        "eval_examples_per_task": args.eval_n, "test_accuracy": accuracy, "loss_curve": curve,
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2))
    _plot(curve, out / "loss_curve.png")
    return report


def _plot(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([c["step"] for c in curve], [c["loss"] for c in curve])
    ax.set_xlabel("step")
    ax.set_ylabel("masked-diffusion loss")
    ax.set_yscale("log")
    ax.set_title("reference model training")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dllm-decode train-reference",
                                description="Train the reference masked-diffusion model on the task suite.")
    p.add_argument("--out", default="runs/reference", help="output directory (checkpoint + report)")
    p.add_argument("--steps", type=int, default=6000, help="optimiser steps (the LR schedule spans them)")
    p.add_argument("--minutes", type=float, default=0, help="stop early after this many minutes (0 = no limit)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--ff", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (2 cores here)")
    p.add_argument("--eval-n", type=int, default=200, help="test examples per task for the report")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    report = train(build_parser().parse_args(argv))
    acc = report["test_accuracy"]
    print(json.dumps({k: acc[k] for k in EVAL_SETTINGS}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
