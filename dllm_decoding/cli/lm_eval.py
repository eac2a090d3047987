"""``dllm-decode lm-eval``: lm-evaluation-harness with the ``dllm`` model and our reference tasks;
``dllm-decode lm-eval-report``: several results files as one comparison table and a Pareto plot."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import ConfigError

USAGE = """\
usage: dllm-decode lm-eval --model_args KEY=VALUE,... --tasks TASK[,TASK...] [lm-eval run options]

Runs lm-evaluation-harness's `lm-eval run` with --model dllm (registered first: lm-eval scans no
entry points) and our reference tasks included (dllm_copy, ..., dllm_latin_square, tag
dllm_reference, dllm_copy_choice). Every other option goes to lm-eval unchanged (--limit,
--num_fewshot, --output_path, --log_samples, --gen_kwargs, --apply_chat_template, ...); --threads N|auto
is ours (torch threads, default auto: the cores no other process is busy on). model_args
and the tasks are checked before any model loads. Results JSON: config.dllm.tasks holds each
task's NFE, tokens per forward, tokens/s and resolved strategy. Data parallel: torchrun
--nproc-per-node N -m dllm_decoding.cli lm-eval ... (or accelerate launch).

model_args keys:
"""


def _option(argv: list[str], name: str) -> str | None:
    """The value of ``--name V`` or ``--name=V`` in ``argv`` (the last one), else None."""
    value = None
    for i, word in enumerate(argv):
        if word == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif word.startswith(name + "="):
            value = word[len(name) + 1:]
    return value


def _without(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for i, word in enumerate(argv):
        if skip:
            skip = False
        elif word == name:
            skip = i + 1 < len(argv)
        elif not word.startswith(name + "="):
            out.append(word)
    return out


def _print_usage() -> None:
    from ..evaluation.lm_eval.options import MODEL_ARGS

    print(USAGE + "\n".join(f"  {key:<18} {text}" for key, text in MODEL_ARGS.items() if key != "max_batch_size"))


def prepare(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(argv for lm-eval run, include paths)`` after every check that needs no model: the
    model_args, the tasks' output types and answer lengths. ConfigError on bad input."""
    from ..evaluation.lm_eval import require_lm_eval
    from ..evaluation.lm_eval.harness import check_tasks, include_paths, task_manager_for
    from ..evaluation.lm_eval.options import LmEvalOptions

    require_lm_eval()
    from lm_eval.utils import simple_parse_args_string

    argv = list(argv)
    model = _option(argv, "--model")
    if model not in (None, "dllm"):
        raise ConfigError(f"--model {model}: dllm-decode lm-eval runs the dllm model; drop --model (or use "
                          f"lm-eval itself for other models)")
    tasks = _option(argv, "--tasks")
    if not tasks:
        raise ConfigError("--tasks: give the tasks to run, e.g. --tasks dllm_reference or --tasks gsm8k")
    model_args = simple_parse_args_string(_option(argv, "--model_args") or "")
    cli_values = {"batch_size": _option(argv, "--batch_size"), "device": _option(argv, "--device")}
    options = LmEvalOptions.from_model_args({**{k: v for k, v in cli_values.items() if v is not None}, **model_args})
    gen_kwargs = simple_parse_args_string(_option(argv, "--gen_kwargs") or "")
    user_include = _option(argv, "--include_path")
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    check_tasks(task_manager_for(names, user_include, metadata=model_args), names, options, gen_kwargs)
    run_argv = ["--model", "dllm", *_without(_without(argv, "--model"), "--include_path")]
    if cli_values["device"] is None:
        # lm-eval's default is cuda:0; ours picks cuda:LOCAL_RANK, or cpu without CUDA
        run_argv += ["--device", "auto"]
    return run_argv, include_paths(user_include)


def check_command(argv: Sequence[str]) -> None:
    """What a documented command can be checked for without its machine: lm-eval's parser accepts
    the arguments and the model_args are valid (the checkpoint path is not looked at)."""
    from ..evaluation.lm_eval import require_lm_eval
    from ..evaluation.lm_eval.options import LmEvalOptions

    require_lm_eval()
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import simple_parse_args_string

    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        return
    saved = sys.argv
    sys.argv = ["lm-eval", "run", "--model", "dllm", *_without(_without(argv, "--model"), "--threads")]
    try:
        HarnessCLI().parse_args()
    except SystemExit:
        raise ConfigError(f"lm-eval does not accept: {' '.join(argv)}") from None
    finally:
        sys.argv = saved
    model_args = simple_parse_args_string(_option(argv, "--model_args") or "")
    LmEvalOptions.from_model_args(model_args, check_model=model_args.get("pretrained", "reference") == "reference")


def cmd_lm_eval(args: argparse.Namespace) -> int:
    argv = list(args.lm_eval_args)
    if not argv or argv[0] in ("-h", "--help"):
        _print_usage()
        return 0
    threads = _option(argv, "--threads") or "auto"  # ours, as on every command; not lm-eval's
    if threads != "auto" and not (threads.isdigit() and int(threads) >= 1):
        raise ConfigError(f"--threads {threads!r}: give a positive integer or 'auto'")
    run_argv, include = prepare(_without(argv, "--threads"))
    import torch

    from .common import apply_threads

    threads_before = torch.get_num_threads()
    apply_threads(threads)
    import dllm_decoding.evaluation.lm_eval.model  # noqa: F401  (registers --model dllm)
    from lm_eval._cli import HarnessCLI

    saved = sys.argv
    sys.argv = ["lm-eval", "run", *run_argv]
    try:
        harness = HarnessCLI()
        namespace = harness.parse_args()
    finally:
        sys.argv = saved
    namespace.include_path = include
    try:
        harness.execute(namespace)
    finally:  # an in-process call leaves torch's thread count as it was
        torch.set_num_threads(threads_before)
    return 0


def configure_report_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", type=Path, metavar="RESULTS",
                   help="lm-eval results files (results_*.json) or directories holding them (searched recursively)")
    p.add_argument("--baseline", metavar="LABEL",
                   help="the setting speed-ups are measured against (default: llada_low_confidence without a cache, "
                        "else the first file)")
    p.add_argument("--metric", action="append", default=[], metavar="TASK=METRIC",
                   help="the score of a task, e.g. gsm8k=exact_match,flexible-extract (default: its first metric)")
    p.add_argument("--out", type=Path, metavar="PATH", help="also write the Markdown table to this file")
    p.add_argument("--plot", type=Path, metavar="PNG", help="write the accuracy vs. tokens-per-forward Pareto plot here")


def run_report(args: argparse.Namespace) -> int:
    from ..evaluation.lm_eval.report import comparison_rows, markdown_table, pareto_plot, read_results

    metrics = {}
    for item in args.metric:
        task, sep, metric = item.partition("=")
        if not sep or not task or not metric:
            raise ConfigError(f"--metric {item!r}: give TASK=METRIC, e.g. gsm8k=exact_match,flexible-extract")
        metrics[task] = metric
    runs = read_results(args.results)
    rows = comparison_rows(runs, baseline=args.baseline, metrics=metrics)
    text = markdown_table(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.plot:
        pareto_plot(rows, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0
