"""``dllm-decode tune``: the fastest setting of a strategy that meets an accuracy target on the
validation split (or the accuracy/NFE front), measured on the test split.

    dllm-decode tune --task sort --strategy fast_dllm_threshold --target-accuracy 0.98
    dllm-decode tune --task addition --strategy credit_decoding --space select.threshold=0.5:0.99 --pareto
"""

from __future__ import annotations

import argparse
import json
import sys

from ..core.config import parse_overrides
from ..core.errors import ConfigError
from ..evaluation.tune import default_space, markdown, parse_space, plot, tune, validate_space
from ..tasks import get_task
from .common import (add_blocks_argument, add_model_arguments, add_overrides, check_batch_size, check_example_count,
                     check_writable_dir, model_from_args, model_options, placement_record)


def configure_tune_parser(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--task", required=True, help="task name (see dllm_decoding.tasks.TASKS)")
    p.add_argument("--strategy", default="fast_dllm_threshold", help="preset name or .toml path")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-accuracy", type=float, metavar="ACC",
                      help="find the setting with the fewest mean forwards whose validation accuracy is >= ACC "
                           "(a fraction, e.g. 0.98)")
    goal.add_argument("--pareto", action="store_true", help="report the accuracy/NFE front instead")
    p.add_argument("--space", action="append", default=[], metavar="KEY=LO:HI[:log] | KEY=V1,V2,...",
                   help="an option to search, over a range (log scale with :log) or a list of values "
                        "(repeatable; default: every numeric option the strategy's components expose, over "
                        "their bounds)")
    p.add_argument("--budget", type=int, default=24, help="validation evaluations at most (default 24)")
    p.add_argument("--n", type=int, default=100, help="validation examples per evaluation (default 100)")
    p.add_argument("--test-n", type=int, default=200, help="test examples for the final report (default 200)")
    p.add_argument("--seed", type=int, default=0, help="examples, decode and the search's own draws")
    add_blocks_argument(p)
    p.add_argument("--batch-size", type=int, default=64)
    add_overrides(p)
    p.add_argument("--out", default="tune-results", help="output directory: tune.json (the trace) and tune.png")
    p.add_argument("--json", action="store_true", help="print JSON instead of the Markdown summary")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_tune(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    get_task(args.task)
    check_example_count(args.n)
    check_example_count(args.test_n, "--test-n")
    check_batch_size(args.batch_size)
    if args.budget < 2:
        raise ConfigError(f"--budget {args.budget}: give at least 2 evaluations")
    if args.target_accuracy is not None and not 0 < args.target_accuracy <= 1:
        raise ConfigError(f"--target-accuracy {args.target_accuracy}: give an accuracy in (0, 1], e.g. 0.98")
    fixed = parse_overrides(args.overrides)
    if args.space:
        dims, skipped = parse_space(args.space), []
        clash = [d.key for d in dims if d.key in fixed]
        if clash:
            raise ConfigError(f"--space {clash[0]} and --set {clash[0]}: an option is either searched or fixed")
    else:
        dims, skipped = default_space(args.strategy, fixed)
    validate_space(args.strategy, dims, args.task, args.blocks, fixed)  # before any model loads
    out_dir = check_writable_dir(args.out, "--out")
    model, tokenizer = model_from_args(args, decodes_tasks="tune")
    bar = tqdm(total=args.budget, desc="tune", disable=args.no_progress, file=sys.stderr)

    def progress(trial) -> None:
        bar.update(1)
        bar.set_postfix_str(f"acc {trial.accuracy:.3f} nfe {trial.nfe_mean:.2f}")

    try:
        result = tune(model, tokenizer, args.strategy, args.task, dims=dims, target=args.target_accuracy,
                      budget=args.budget, n=args.n, test_n=args.test_n, seed=args.seed,
                      batch_size=args.batch_size, blocks=args.blocks, overrides=fixed, progress=progress)
    finally:
        bar.close()
    result.update(model=args.model, **model_options(args), **placement_record(model, args), not_searched=skipped)
    (out_dir / "tune.json").write_text(json.dumps(result, indent=1) + "\n")
    result["plot"] = str(plot(result, out_dir / "tune.png"))
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(markdown(result))
        print(f"wrote {out_dir / 'tune.json'} and {out_dir / 'tune.png'}")
    return 0 if args.pareto or result.get("chosen") else 1
