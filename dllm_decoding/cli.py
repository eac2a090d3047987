"""``dllm-decode``: list and inspect strategies, decode, evaluate, benchmark, train.

Every subcommand takes ``--set key=value`` overrides with the same dotted keys as Python
(``select.threshold=0.8``, ``fuse.credit.alpha=0.5``, ``steps=64``) and ``--json`` for machines.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

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
"""


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a strategy option with a dotted key, e.g. select.threshold=0.8 "
                             "or fuse.credit.alpha=0.5 (repeatable)")


def _cmd_strategies(args: argparse.Namespace) -> int:
    import dllm_decoding as dd
    from dllm_decoding.config import parse_overrides

    registry = dd.get_registry()
    if args.name is None:
        rows = []
        for name in dd.list_strategies(registry):
            strat = dd.load_strategy(name, registry=registry)
            rows.append({"name": name, "origin": registry.preset_origin[name],
                         "description": strat.description})
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            width = max(len(r["name"]) for r in rows)
            for r in rows:
                print(f"{r['name']:<{width}}  {r['description']}")
        return 0
    strat = dd.load_strategy(args.name, parse_overrides(args.overrides), registry)
    resolved = strat.resolved(registry)
    if args.json:
        print(json.dumps(resolved, indent=2))
    else:
        print(_as_toml(resolved))
    return 0


def _as_toml(data: dict[str, Any]) -> str:
    """Render a resolved strategy as TOML (scalars first, then components)."""
    def scalar(v: Any) -> str:
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    lines = [f"{k} = {scalar(v)}" for k, v in data.items()
             if not isinstance(v, (dict, list)) and v is not None]
    for key in ("fuse", "score", "select", "remask", "observers"):
        value = data.get(key)
        for entry in value if isinstance(value, list) else ([value] if value else []):
            lines.append(f"\n[[{key}]]" if isinstance(value, list) else f"\n[{key}]")
            lines += [f"{k} = {scalar(v)}" for k, v in entry.items() if v is not None]
    return "\n".join(lines)


def _cmd_plugins(args: argparse.Namespace) -> int:
    import dllm_decoding as dd

    registry = dd.get_registry()
    rows = [{"component": name, "hook_point": cls.hook_point, "plugin": registry.component_origin[name],
             "options": list(cls.Options.model_fields)} for name, cls in sorted(registry.components.items())]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['component']:<22} {r['hook_point']:<9} {r['plugin']:<28} options: {', '.join(r['options']) or '-'}")
    return 0


def _load_model(name: str) -> tuple[Any, Any]:
    """(model, tokenizer-or-None) for ``reference``, ``toy`` or a local Hugging Face path."""
    if name == "toy":
        from dllm_decoding.testing import ContextModel

        return ContextModel(vocab_size=16), None
    from dllm_decoding.reference import load_reference_model

    return load_reference_model(None if name == "reference" else name)


def _cmd_generate(args: argparse.Namespace) -> int:
    import torch

    import dllm_decoding as dd
    from dllm_decoding.config import parse_overrides

    overrides = parse_overrides(args.overrides)
    model, tokenizer = _load_model(args.model)
    examples = None
    if args.task:
        from dllm_decoding.tasks import encode_batch, get_task

        if tokenizer is None:
            raise dd.InputError("--task needs a model with a tokenizer (e.g. --model reference)")
        task = get_task(args.task)
        examples = task.examples("test", args.n, seed=args.seed)
        prompt_ids, attention_mask = encode_batch(tokenizer, examples, task)
        overrides.setdefault("gen_length", task.gen_length)
        overrides.setdefault("block_length", task.gen_length)
    elif args.prompt_ids:
        prompt_ids = torch.tensor([[int(t) for t in args.prompt_ids.split(",")]])
        attention_mask = None
    elif args.prompt:
        if tokenizer is None:
            raise dd.InputError("--prompt needs a model with a tokenizer; use --prompt-ids for the toy model")
        prompt_ids = torch.tensor([tokenizer.encode(args.prompt, add_special_tokens=False)])
        attention_mask = None
    else:
        raise dd.InputError("give --task NAME, --prompt TEXT or --prompt-ids 1,2,3")
    if args.gen_length:
        overrides["gen_length"] = args.gen_length
    if args.block_length:
        overrides["block_length"] = args.block_length
    out = dd.generate(model, prompt_ids, args.strategy, overrides=overrides,
                      attention_mask=attention_mask, seed=args.seed)
    rows = []
    for i in range(out.sequences.shape[0]):
        row: dict[str, Any] = {"answer_ids": out.answers[i].tolist(), "nfe": int(out.nfe[i])}
        if tokenizer is not None:
            from dllm_decoding.tasks import decode_answer

            row["answer"] = decode_answer(tokenizer, out.answers[i])
        if examples is not None:
            row["prompt"] = examples[i].prompt
            row["expected"] = examples[i].answer
            row["correct"] = task.check(row["answer"], examples[i])
        rows.append(row)
    if args.json:
        print(json.dumps({"strategy": args.strategy, "overrides": overrides, "results": rows}, indent=2))
    else:
        for row in rows:
            shown = row.get("answer", row["answer_ids"])
            extra = f"  expected {row['expected']!r} {'ok' if row['correct'] else 'WRONG'}" if "expected" in row else ""
            print(f"nfe={row['nfe']:<4} {shown!r}{extra}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The three reference presets side by side on the reference model."""
    import dllm_decoding as dd
    from dllm_decoding.tasks import TASKS, decode_answer, encode_batch, get_task

    model, tokenizer = _load_model(args.model)
    presets = ["llada_low_confidence", "fast_dllm_threshold", "credit_decoding"]
    results = []
    tasks = args.tasks or list(TASKS)
    for task_name in tasks:
        task = get_task(task_name)
        examples = task.examples("test", args.n, seed=args.seed)
        prompt_ids, attention_mask = encode_batch(tokenizer, examples, task)
        for preset in presets:
            out = dd.generate(model, prompt_ids, preset, attention_mask=attention_mask,
                              gen_length=task.gen_length, block_length=task.gen_length)
            answers = [decode_answer(tokenizer, a) for a in out.answers]
            correct = [task.check(a, e) for a, e in zip(answers, examples)]
            results.append({"task": task.name, "strategy": preset, "prompt": examples[0].prompt,
                            "answer": answers[0], "expected": examples[0].answer,
                            "accuracy": sum(correct) / len(correct),
                            "mean_nfe": float(out.nfe.double().mean()), "gen_length": task.gen_length})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"reference model, {args.n} test examples per task; first example shown\n")
    print("| task | strategy | first answer | expected | accuracy | mean NFE |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['task']} | {r['strategy']} | `{r['answer']}` | `{r['expected']}` | "
              f"{100 * r['accuracy']:.0f}% | {r['mean_nfe']:.1f} / {r['gen_length']} |")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from dllm_decoding.reference import train

    return train.main(args.train_args) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dllm-decode", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("strategies", help="list presets, or show one with every option resolved")
    p.add_argument("name", nargs="?", help="a preset name or a .toml path")
    _add_overrides(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_strategies)

    p = sub.add_parser("plugins", help="list every registered component and the plugin it comes from")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("generate", help="decode prompts with a strategy and print answers and NFE")
    p.add_argument("--model", default="reference", help="'reference', 'toy' or a local model directory")
    p.add_argument("--strategy", default="credit_decoding", help="preset name or .toml path")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--task", help="decode test examples of this task (reference model)")
    src.add_argument("--prompt", help="a text prompt (models with a tokenizer)")
    src.add_argument("--prompt-ids", help="comma-separated token ids, e.g. 1,2,3")
    p.add_argument("--n", type=int, default=4, help="examples with --task (default 4)")
    p.add_argument("--gen-length", type=int, help="answer length (default: the task's, or the strategy's)")
    p.add_argument("--block-length", type=int, help="semi-autoregressive block length")
    p.add_argument("--seed", type=int, default=0)
    _add_overrides(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("demo", help="the three reference presets side by side on the reference model")
    p.add_argument("--model", default="reference", help="'reference' or a local model directory")
    p.add_argument("--tasks", nargs="*", help="tasks to show (default: all)")
    p.add_argument("--n", type=int, default=32, help="test examples per task (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_demo)

    try:
        from dllm_decoding import evaluate

        p = sub.add_parser("eval", help="accuracy, NFE and speed of one strategy on one task")
        evaluate.configure_eval_parser(p)
        p.set_defaults(func=evaluate.run_eval)
    except ImportError:
        pass
    try:
        from dllm_decoding import bench

        p = sub.add_parser("bench", help="sweep strategies x settings x tasks; JSON, Markdown, plots")
        bench.configure_bench_parser(p)
        p.set_defaults(func=bench.run_bench)
    except ImportError:
        pass

    p = sub.add_parser("train-reference", help="train the reference model (arguments go to the trainer; "
                                               "see dllm-decode train-reference --help)", add_help=False)
    p.add_argument("train_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from dllm_decoding.errors import DecodingError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DecodingError as exc:
        print(f"dllm-decode {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
