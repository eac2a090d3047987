"""``dllm-decode``: list and inspect strategies, decode, evaluate, benchmark, train.

Every subcommand takes ``--set key=value`` overrides with the same dotted keys as Python
(``select.threshold=0.8``, ``fuse.credit.alpha=0.5``, ``steps=64``) and ``--json`` for machines.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Sequence

from ..core.errors import DecodingError, PluginWarning
from . import bench, evaluate, generate, lm_eval, strategies, train, tune
from .common import add_model_arguments, add_overrides, add_threads_argument, apply_threads

DESCRIPTION = """\
Decode diffusion language models with composable strategies.

examples:
  dllm-decode strategies                          list the presets
  dllm-decode strategies credit_decoding          show one preset with every option resolved
  dllm-decode demo                                the three reference presets side by side
  dllm-decode generate --model reference --task sort --strategy credit_decoding --set select.threshold=0.8
  dllm-decode generate --model toy --prompt-ids 1,2,3 --gen-length 8 --strategy fast_dllm_threshold
  dllm-decode eval --model reference --strategy credit_decoding --task sort --n 200
  dllm-decode bench --quick
  dllm-decode tune --task sort --strategy fast_dllm_threshold --target-accuracy 0.98
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dllm-decode", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print the full traceback (a raising plugin's included), not one line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("strategies", help="list presets, or show one with every option resolved")
    p.add_argument("name", nargs="?", help="a preset name or a .toml path")
    add_overrides(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--markdown", action="store_true", help="print the Markdown reference of all presets and components")
    p.set_defaults(func=strategies.cmd_strategies)

    p = sub.add_parser("plugins", help="list every registered component and the plugin it comes from")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=strategies.cmd_plugins)

    p = sub.add_parser("generate", help="decode prompts with a strategy and print answers and NFE")
    add_model_arguments(p, toy=True)
    p.add_argument("--strategy", default="credit_decoding", help="preset name or .toml path")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--task", help="decode test examples of this task (reference model)")
    src.add_argument("--prompt", action="append", metavar="TEXT",
                     help="a text prompt (models with a tokenizer); repeat it for a batch (left-padded)")
    src.add_argument("--prompts-file", metavar="FILE.jsonl",
                     help='prompts as one batch, one JSON object per line: {"prompt": TEXT} or '
                          '{"messages": [{"role": "user", "content": TEXT}, ...]}')
    src.add_argument("--prompt-ids", help="comma-separated token ids, e.g. 1,2,3")
    p.add_argument("--n", type=int, default=4, help="examples with --task (default 4)")
    p.add_argument("--gen-length", type=int, help="answer length (default: the task's, or the strategy's)")
    p.add_argument("--block-length", type=int, help="semi-autoregressive block length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="format text prompts with the tokenizer's chat template (a user turn, then the assistant's "
                        "generation prompt), as Instruct checkpoints expect (default: when the tokenizer has one)")
    p.add_argument("--eos-stop", action=argparse.BooleanOptionalAction, default=None,
                   help="stop a row once a finished block holds its EOS token and fill the rest with EOS (default: "
                        "on for checkpoints that name their EOS ids, e.g. LLaDA and Dream; off for the reference "
                        "and toy models)")
    add_overrides(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--stream", action="store_true",
                   help="show the answers forming step by step (provisional tokens dimmed on a terminal, "
                        "in [brackets] otherwise)")
    p.set_defaults(func=generate.cmd_generate)

    p = sub.add_parser("demo", help="the three reference presets side by side on the reference model")
    add_model_arguments(p)
    p.add_argument("--tasks", nargs="*", help="tasks to show (default: all)")
    p.add_argument("--n", type=int, default=32, help="test examples per task (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=generate.cmd_demo)

    p = sub.add_parser("eval", help="accuracy, NFE and speed of one strategy on one task")
    evaluate.configure_eval_parser(p)
    p.set_defaults(func=evaluate.run_eval)

    p = sub.add_parser("bench", help="sweep strategies x settings x tasks; JSON, Markdown, plots")
    bench.configure_bench_parser(p)
    p.set_defaults(func=bench.run_bench)

    p = sub.add_parser("tune", help="search a strategy's options: the fastest setting that meets an accuracy target "
                                    "on the validation split (or the accuracy/NFE front), measured on the test split")
    tune.configure_tune_parser(p)
    p.set_defaults(func=tune.run_tune)

    p = sub.add_parser("train-reference", help="train the reference model (arguments go to the trainer; "
                                               "see dllm-decode train-reference --help)", add_help=False)
    p.add_argument("train_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=train.cmd_train)

    p = sub.add_parser("lm-eval", help="lm-evaluation-harness with the dllm model and the reference tasks (arguments "
                                       "go to lm-eval run; see dllm-decode lm-eval --help)", add_help=False)
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=lm_eval.cmd_lm_eval)

    p = sub.add_parser("lm-eval-report", help="lm-eval results files of the dllm model as one comparison table "
                                              "(score, NFE, TPF, tokens/s, speed-ups) and a Pareto plot")
    lm_eval.configure_report_parser(p)
    p.set_defaults(func=lm_eval.run_report)
    for name, subparser in sub.choices.items():
        if name not in ("train-reference", "lm-eval"):  # --debug after the command too; SUPPRESS keeps the top-level value
            subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                   help="on an error, print the full traceback, not one line")
            add_threads_argument(subparser)  # train-reference and lm-eval take theirs among their own
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line as ``main`` reads it (exits on a bad argument or ``--help``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = argv[:1] == ["--debug"]
    if argv[debug:debug + 1] == ["train-reference"]:
        # the trainer parses its own arguments; argparse's REMAINDER would reject a leading --option
        rest = argv[debug + 1:]
        return argparse.Namespace(command="train-reference", func=train.cmd_train, debug=debug or "--debug" in rest,
                                  train_args=[a for a in rest if a != "--debug"])
    if argv[debug:debug + 1] == ["lm-eval"]:
        # every argument is lm-eval's (REMAINDER would reject a leading --option)
        rest = argv[debug + 1:]
        return argparse.Namespace(command="lm-eval", func=lm_eval.cmd_lm_eval, debug=debug or "--debug" in rest,
                                  lm_eval_args=[a for a in rest if a != "--debug"])
    return build_parser().parse_args(argv)


def _show_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
    """A broken plugin's warning as one line on stderr; other warnings as Python shows them."""
    if issubclass(category, PluginWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    debug = getattr(args, "debug", False)
    threads_before = None
    try:
        if getattr(args, "threads", None) is not None:  # before any torch work
            import torch

            threads_before = torch.get_num_threads()
            apply_threads(args.threads)
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except DecodingError as exc:
        if debug:  # the chain shows the plugin's or library's own traceback under ours
            traceback.print_exception(exc, file=sys.stderr)
        print(f"dllm-decode {args.command}: error: {exc}"
              + ("" if debug else " (--debug shows the traceback)" if exc.__cause__ is not None else ""),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if threads_before is not None:  # main() called in-process (tests, notebooks) leaves torch as it was
            import torch

            torch.set_num_threads(threads_before)

