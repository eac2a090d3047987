"""``dllm-decode generate`` and ``dllm-decode demo``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

import dllm_decoding as dd
from ..core.config import parse_overrides
from ..evaluation.loading import is_reference_checkpoint
from ..streaming import StepStreamer, TerminalText
from ..tasks import ALPHABET, TASKS, decode_answer, encode_batch, get_task
from .common import check_example_count, model_from_args


def parse_prompt_ids(text: str) -> torch.Tensor:
    """``--prompt-ids 1,2,3`` as a (1, P) LongTensor; anything else one InputError."""
    items = [t.strip() for t in text.split(",")]
    bad = [t for t in items if not (t.isdigit() or (t[:1] == "-" and t[1:].isdigit()))]
    if bad or not items:
        raise dd.InputError(f"--prompt-ids {text!r}: expected comma-separated integer token ids, e.g. 1,2,3 "
                            f"(not {', '.join(repr(t) for t in bad)})")
    return torch.tensor([[int(t) for t in items]])


def cmd_generate(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.overrides)
    for flag, value in (("--gen-length", args.gen_length), ("--block-length", args.block_length)):
        if value is not None and value < 1:  # checked here: 0 used to be silently ignored
            raise dd.ConfigError(f"{flag} {value}: give a positive number of positions")
    if args.task:
        check_example_count(args.n)
    prompt_ids = parse_prompt_ids(args.prompt_ids) if args.prompt_ids else None
    model, tokenizer = model_from_args(args)
    examples = None
    if args.task:
        if tokenizer is None:
            raise dd.InputError("--task needs a model with a tokenizer (e.g. --model reference)")
        task = get_task(args.task)
        examples = task.examples("test", args.n, seed=args.seed)
        prompt_ids, attention_mask = encode_batch(tokenizer, examples, task)
        overrides.setdefault("gen_length", task.gen_length)
        overrides.setdefault("block_length", task.gen_length)
    elif prompt_ids is not None:
        attention_mask = None
    elif args.prompt:
        if tokenizer is None:
            raise dd.InputError("--prompt needs a model with a tokenizer; use --prompt-ids for the toy model")
        if is_reference_checkpoint(args.model):  # its tokenizer maps unknown characters to [PAD]
            unknown = sorted(set(args.prompt) - set(ALPHABET))
            if unknown:
                raise dd.InputError(f"--prompt {args.prompt!r} has characters the reference tokenizer does "
                                    f"not know: {''.join(unknown)!r}; it knows {''.join(ALPHABET)!r}")
        prompt_ids = torch.tensor([tokenizer.encode(args.prompt, add_special_tokens=False)])
        if prompt_ids.shape[1] == 0:
            raise dd.InputError("--prompt is empty after tokenization; give at least one token")
        attention_mask = None
    else:
        raise dd.InputError("give --task NAME, --prompt TEXT or --prompt-ids 1,2,3")
    if args.gen_length is not None:
        overrides["gen_length"] = args.gen_length
    if args.block_length is not None:
        overrides["block_length"] = args.block_length
    reference_tokens = tokenizer is not None and is_reference_checkpoint(args.model)
    observers = [_terminal_streamer(tokenizer, reference_tokens)] if args.stream else []
    out = dd.generate(model, prompt_ids, args.strategy, overrides=overrides,
                      attention_mask=attention_mask, seed=args.seed, observers=observers)
    rows = []
    for i in range(out.sequences.shape[0]):
        row: dict[str, Any] = {"answer_ids": out.answers[i].tolist(), "nfe": int(out.nfe[i])}
        if tokenizer is not None:
            row["answer"] = (decode_answer(tokenizer, out.answers[i]) if reference_tokens
                             else tokenizer.decode(row["answer_ids"], skip_special_tokens=True))
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


def cmd_demo(args: argparse.Namespace) -> int:
    """The three reference presets side by side on the reference model."""
    check_example_count(args.n)
    for name in args.tasks or ():
        get_task(name)  # an unknown task before loading anything
    model, tokenizer = model_from_args(args, decodes_tasks="demo")
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
                            "answer_correct": correct[0], "accuracy": sum(correct) / len(correct),
                            "mean_nfe": float(out.nfe.double().mean()), "gen_length": task.gen_length})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"reference model, {args.n} test examples per task; first example shown\n")
    print("| task | strategy | first answer | reference answer | accuracy | mean NFE |")
    print("|---|---|---|---|---|---|")
    for r in results:
        verdict = "right" if r["answer_correct"] else "wrong"
        print(f"| {r['task']} | {r['strategy']} | `{r['answer']}` ({verdict}) | `{r['expected']}` | "
              f"{100 * r['accuracy']:.0f}% | {r['mean_nfe']:.1f} / {r['gen_length']} |")
    other_valid = sorted({r["task"] for r in results if r["answer_correct"] and r["answer"] != r["expected"]})
    if other_valid:  # tasks with several valid answers: the reference is only one of them
        print(f"\n{', '.join(other_valid)}: several answers are valid; the reference is one of them.")
    return 0


def _terminal_streamer(tokenizer: Any, reference_tokens: bool) -> StepStreamer:
    """``--stream``: the answers forming, one line per row, redrawn in place on a terminal
    (provisional tokens dimmed), one block of lines per step otherwise."""
    if tokenizer is None:
        def decode(ids: list[int]) -> str:
            return " ".join(map(str, ids)) + " "
    elif reference_tokens:
        def decode(ids: list[int]) -> str:
            return tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "")
    else:
        def decode(ids: list[int]) -> str:
            return tokenizer.decode(ids, skip_special_tokens=False)
    tty = sys.stdout.isatty()
    text = TerminalText(decode, ansi=tty)
    drawn = [0]

    def show(update: Any) -> None:
        lines = [text.row(update, row) for row in range(update.tokens.shape[0])]
        if tty and drawn[0]:
            sys.stdout.write(f"\x1b[{drawn[0]}F")  # back to the first line of the last drawing
        prefix = "done" if update.done else f"step {update.step}"
        for row, line in enumerate(lines):
            sys.stdout.write(("\x1b[2K" if tty else "") + f"{prefix} row {row}: {line}\n")
        sys.stdout.flush()
        drawn[0] = len(lines)

    return StepStreamer(show)
