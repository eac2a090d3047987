"""``dllm-decode train-reference``: the reference model's trainer from the command line."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..core.errors import ConfigError
from ..reference import train as trainer
from ..tasks import TASKS
from .common import add_threads_argument


def _mix_entry(value: str) -> tuple[str, float]:
    name, sep, weight = value.partition("=")
    if not sep or name not in TASKS:
        raise argparse.ArgumentTypeError(f"expected TASK=WEIGHT with TASK one of {', '.join(TASKS)}, got {value!r}")
    try:
        number = float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: weight must be a number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: weight must be > 0")
    return name, number


def build_parser(prog: str = "dllm-decode train-reference") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog,
                                description="Train the reference masked-diffusion model on the task suite "
                                            "(LLaDA objective) and write a checkpoint, training_report.json "
                                            "and loss_curve.png.")
    p.add_argument("--out", default="runs/reference", help="output directory (checkpoint + report)")
    p.add_argument("--steps", type=int, default=0,
                   help="optimiser steps (the LR schedule spans them); 0 = size from --minutes")
    p.add_argument("--minutes", type=float, default=0,
                   help="training time budget: with --steps 0 the step count is set from the speed of the "
                        "first steps (evaluation afterwards takes ~1 more minute)")
    p.add_argument("--batch-tokens", type=int, default=2048, help="tokens (prompt + answer) per batch")
    p.add_argument("--lr", type=float, default=6e-4,
                   help="peak learning rate (2e-3 stalls the task mix: copy and reverse never leave "
                        "a plateau at ~1.3 nats, while each alone is learnt in ~400 steps)")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--ff", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    add_threads_argument(p, default="1",
                         help="torch threads, or 'auto': 2 while no other process is busy, else 1 (re-checked "
                              "at every validation pass; results then match a fixed-thread run only up to float noise)")
    p.add_argument("--init-from", metavar="DIR", help="start from this checkpoint's weights (a continuation run)")
    p.add_argument("--mix", type=_mix_entry, action="append", default=[], metavar="TASK=WEIGHT",
                   help="override a task's base share, e.g. insert=3 (repeatable)")
    p.add_argument("--fixed-mix", action="store_true", help="keep the base task mix (no re-weighting)")
    p.add_argument("--mix-floor", type=float, default=0.05,
                   help="re-weighted share = base * (validation loss + floor)")
    p.add_argument("--probe-steps", type=int, default=40, help="steps timed to size a --minutes run")
    p.add_argument("--eval-every", type=int, default=250, help="validation-loss interval (steps)")
    p.add_argument("--save-every", type=int, default=2000,
                   help="also save the model to OUT/latest every N steps (0 = only at the end)")
    p.add_argument("--val-n", type=int, default=96, help="validation examples per task")
    p.add_argument("--eval-n", type=int, default=200, help="test examples per task for the report")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def validate_train_args(args: argparse.Namespace) -> None:
    """Every number the trainer takes, checked before any work (and before the output folder is
    written): one ConfigError naming the flag, the value and what it must be."""
    positive = {"--batch-tokens": args.batch_tokens, "--hidden": args.hidden, "--layers": args.layers,
                "--heads": args.heads, "--ff": args.ff, "--eval-every": args.eval_every, "--val-n": args.val_n,
                "--eval-n": args.eval_n, "--probe-steps": args.probe_steps}
    at_least_zero = {"--steps": args.steps, "--warmup": args.warmup, "--save-every": args.save_every}
    for flag, value in positive.items():
        if value < 1:
            raise ConfigError(f"{flag} {value}: give a positive integer")
    for flag, value in at_least_zero.items():
        if value < 0:
            raise ConfigError(f"{flag} {value}: give an integer >= 0" + (" (0 = size from --minutes)"
                                                                        if flag == "--steps" else ""))
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ConfigError(f"--lr {args.lr}: give a positive, finite learning rate (default 6e-4)")
    for flag, value in (("--minutes", args.minutes), ("--mix-floor", args.mix_floor)):
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{flag} {value}: give a finite number >= 0")
    if args.hidden % args.heads:
        divisors = [h for h in range(1, min(args.hidden, 64) + 1) if args.hidden % h == 0]
        raise ConfigError(f"--hidden {args.hidden} is not a multiple of --heads {args.heads}: each attention head "
                          f"takes hidden/heads dimensions; use --heads among {', '.join(map(str, divisors))}")
    if not args.steps and not args.minutes:
        raise ConfigError("give --steps N or --minutes M (the run is sized from one of them)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {args.out!r}: it is a file, not a folder")
    if args.init_from and not Path(args.init_from).is_dir():
        raise ConfigError(f"--init-from {args.init_from!r}: no such checkpoint directory")


def main(argv: list[str] | None = None, prog: str = "dllm-decode train-reference") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    args.argv = argv
    args.mix = dict(args.mix)
    validate_train_args(args)
    report = trainer.train(args)
    acc = report["test_accuracy"]
    print(json.dumps({k: acc[k] for k in trainer.EVAL_SETTINGS}, indent=2))
    print(f"steps {report['steps']}, {report['train_seconds']} s, final validation loss "
          f"{report['final_val_loss']:.4f}; checkpoint in {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    return main(args.train_args, prog="dllm-decode train-reference") or 0
