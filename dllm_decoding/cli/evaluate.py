"""``dllm-decode eval``: accuracy, NFE and speed of one strategy on one task."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..core.config import load_strategy, parse_overrides
from ..core.errors import ConfigError
from ..evaluation.evaluate import block_length, evaluate
from ..tasks import get_task
from .common import (add_blocks_argument, add_model_arguments, check_batch_size, check_example_count,
                     check_writable_file, model_from_args, model_options, placement_record)


def configure_eval_parser(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--strategy", default="credit_decoding", help="preset name or .toml path")
    p.add_argument("--task", required=True, help="task name (see dllm_decoding.tasks.TASKS)")
    p.add_argument("--n", type=int, default=200, help="test examples (default 200)")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    add_blocks_argument(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="strategy override, e.g. select.threshold=0.8 (repeatable)")
    p.add_argument("--predictions", action="store_true", help="include every prediction in the JSON")
    p.add_argument("--json", metavar="PATH", help="also write the JSON to this file")


def run_eval(args: argparse.Namespace) -> int:
    task = get_task(args.task)
    check_example_count(args.n)
    check_batch_size(args.batch_size)
    if args.json:
        check_writable_file(args.json, "--json")  # before the run, not after it
    overrides = parse_overrides(args.overrides)
    load_strategy(args.strategy, {"gen_length": task.gen_length, "block_length": block_length(task, args.blocks),
                                  **overrides})
    model, tokenizer = model_from_args(args, decodes_tasks="eval")
    with torch.no_grad():
        result = evaluate(model, tokenizer, args.strategy, task, args.n, split=args.split,
                          batch_size=args.batch_size, overrides=overrides, seed=args.seed,
                          keep_predictions=args.predictions, blocks=args.blocks)
    result.update(model=args.model, **model_options(args), **placement_record(model, args))
    if not args.predictions:
        result.pop("nfe")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        try:
            Path(args.json).write_text(text + "\n")
        except OSError as exc:
            raise ConfigError(f"--json {args.json!r}: cannot write the results ({exc.strerror or exc}); they "
                              f"are printed above") from None
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
