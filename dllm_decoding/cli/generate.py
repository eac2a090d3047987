"""``dllm-decode generate`` and ``dllm-decode demo``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

import dllm_decoding as dd
from ..core.config import parse_overrides
from ..evaluation.loading import is_reference_checkpoint
from ..streaming import StepStreamer, TerminalText
from ..text import answer_text, encode_prompts, format_prompts, has_chat_template, model_eos_ids
from ..tasks import ALPHABET, TASKS, decode_answer, encode_batch, get_task
from .common import (check_chat_template_before_loading, check_example_count, decode_device, model_from_args,
                     placement_record)


def parse_prompt_ids(text: str) -> torch.Tensor:
    """``--prompt-ids 1,2,3`` as a (1, P) LongTensor; anything else one InputError."""
    items = [t.strip() for t in text.split(",")]
    bad = [t for t in items if not (t.isdigit() or (t[:1] == "-" and t[1:].isdigit()))]
    if bad or not items:
        raise dd.InputError(f"--prompt-ids {text!r}: expected comma-separated integer token ids, e.g. 1,2,3 "
                            f"(not {', '.join(repr(t) for t in bad)})")
    return torch.tensor([[int(t) for t in items]])


def read_prompts_file(path: str) -> list[Any]:
    """``--prompts-file FILE.jsonl``: one ``{\"prompt\": TEXT}`` or ``{\"messages\": [{\"role\": ..., \"content\": ...}, ...]}``
    per line (blank lines skipped), as text or message lists; a bad line is one InputError naming it."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise dd.InputError(f"--prompts-file {path!r}: not UTF-8 text") from None
    except OSError as exc:
        raise dd.InputError(f"--prompts-file {path!r}: cannot read it ({exc.strerror or exc})") from None
    shape = '{"prompt": "TEXT"} or {"messages": [{"role": "user", "content": "TEXT"}]}'
    prompts: list[Any] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"--prompts-file {path} line {number}"
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise dd.InputError(f"{where}: not valid JSON ({getattr(exc, 'msg', exc)}); each line is {shape}") from None
        if not isinstance(item, dict) or len(set(item) & {"prompt", "messages"}) != 1:
            raise dd.InputError(f"{where}: expected an object with one of \"prompt\" or \"messages\": {shape}")
        if "prompt" in item:
            if not isinstance(item["prompt"], str) or not item["prompt"].strip():
                raise dd.InputError(f"{where}: \"prompt\" must be non-empty text, got {item['prompt']!r:.60}")
            prompts.append(item["prompt"])
            continue
        messages = item["messages"]
        if not (isinstance(messages, list) and messages and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages)):
            raise dd.InputError(f"{where}: \"messages\" must be a non-empty list of {{\"role\": ..., \"content\": ...}} "
                                f"strings, got {messages!r:.60}")
        prompts.append(messages)
    if not prompts:
        raise dd.InputError(f"--prompts-file {path!r} has no prompts; write one JSON object per line: {shape}")
    return prompts


def cmd_generate(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.overrides)
    for flag, value in (("--gen-length", args.gen_length), ("--block-length", args.block_length)):
        if value is not None and value < 1:  # checked here: 0 used to be silently ignored
            raise dd.ConfigError(f"{flag} {value}: give a positive number of positions")
    if args.task:
        check_example_count(args.n)
    prompt_ids = parse_prompt_ids(args.prompt_ids) if args.prompt_ids else None
    prompts = read_prompts_file(args.prompts_file) if args.prompts_file else args.prompt  # before loading
    for number, text in enumerate(prompts or (), start=1):
        if isinstance(text, str) and not text.strip():
            raise dd.InputError(f"--prompt {number} is empty; give some text")
    if args.chat and not prompts:
        raise dd.ConfigError("--chat formats text prompts: give --prompt TEXT or --prompts-file FILE.jsonl")
    if args.chat:
        check_chat_template_before_loading(args.model)
    model, tokenizer = model_from_args(args)
    device = decode_device(args, model)
    chat_applied = False
    examples = None
    if args.task:
        if tokenizer is None:
            raise dd.InputError("--task needs a model with a tokenizer (e.g. --model reference)")
        task = get_task(args.task)
        examples = task.examples("test", args.n, seed=args.seed)
        prompt_ids, attention_mask = encode_batch(tokenizer, examples, task)
        prompt_ids, attention_mask = prompt_ids.to(device), attention_mask.to(device)
        overrides.setdefault("gen_length", task.gen_length)
        overrides.setdefault("block_length", task.gen_length)
    elif prompt_ids is not None:
        prompt_ids, attention_mask = prompt_ids.to(device), None
    elif prompts:
        if tokenizer is None:
            raise dd.InputError("--prompt needs a model with a tokenizer; use --prompt-ids for the toy model")
        if is_reference_checkpoint(args.model):  # its tokenizer maps unknown characters to [PAD]
            for text in prompts:
                unknown = sorted(set(text if isinstance(text, str) else "") - set(ALPHABET))
                if unknown:
                    raise dd.InputError(f"--prompt {text!r} has characters the reference tokenizer does "
                                        f"not know: {''.join(unknown)!r}; it knows {''.join(ALPHABET)!r}")
        prompt_texts = format_prompts(tokenizer, prompts, args.chat)
        chat_applied = has_chat_template(tokenizer) if args.chat is None else args.chat
        prompt_ids, attention_mask = encode_prompts(tokenizer, prompt_texts, device)  # one left-padded batch
        if attention_mask.all():
            attention_mask = None
    else:
        raise dd.InputError("give --task NAME, --prompt TEXT or --prompt-ids 1,2,3 (or --prompts-file "
                            "FILE.jsonl; --prompt repeats for a batch)")
    if args.gen_length is not None:
        overrides["gen_length"] = args.gen_length
    if args.block_length is not None:
        overrides["block_length"] = args.block_length
    reference_tokens = tokenizer is not None and is_reference_checkpoint(args.model)
    eos_id, eos_ids = _eos_stop(args, model, tokenizer, reference_tokens)
    observers = [_terminal_streamer(tokenizer, reference_tokens)] if args.stream else []
    out = dd.generate(model, prompt_ids, args.strategy, overrides=overrides,
                      attention_mask=attention_mask, seed=args.seed, observers=observers, eos_id=eos_id)
    rows = []
    for i in range(out.sequences.shape[0]):
        row: dict[str, Any] = {"answer_ids": out.answers[i].tolist(), "nfe": int(out.nfe[i])}
        if tokenizer is not None:
            row["answer"] = (decode_answer(tokenizer, out.answers[i]) if reference_tokens
                             else answer_text(tokenizer, row["answer_ids"], eos_ids))
        if prompts and examples is None:
            row["prompt"] = prompt_texts[i]
        if examples is not None:
            row["prompt"] = examples[i].prompt
            row["expected"] = examples[i].answer
            row["correct"] = task.check(row["answer"], examples[i])
        rows.append(row)
    if args.json:
        print(json.dumps({"strategy": args.strategy, "overrides": overrides, **placement_record(model, args),
                          "chat": chat_applied,
                          "eos_id": eos_id, "results": rows}, indent=2))
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
    device = decode_device(args, model)
    presets = ["llada_low_confidence", "fast_dllm_threshold", "credit_decoding"]
    results = []
    tasks = args.tasks or list(TASKS)
    for task_name in tasks:
        task = get_task(task_name)
        examples = task.examples("test", args.n, seed=args.seed)
        prompt_ids, attention_mask = encode_batch(tokenizer, examples, task)
        prompt_ids, attention_mask = prompt_ids.to(device), attention_mask.to(device)
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


def _eos_stop(args: argparse.Namespace, model: Any, tokenizer: Any,
              reference: bool) -> tuple[list[int] | None, tuple[int, ...]]:
    """``(EOS ids for the early stop or None, every id that ends an answer's text)``. Default: on
    for checkpoints that name their EOS ids (LLaDA, Dream; a generic checkpoint's tokenizer), off
    for the reference and toy models (their presets stay exact); --eos-stop / --no-eos-stop decide."""
    known = model_eos_ids(model)
    if not known and tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        known = (int(tokenizer.eos_token_id),)
    stop = args.eos_stop if args.eos_stop is not None else bool(known) and not reference
    if stop and not known:
        raise dd.ConfigError(f"--eos-stop: the model {args.model!r} names no EOS token (no tokenizer with an "
                             f"eos_token_id, no eos_token_id in its config); drop --eos-stop")
    return (list(known) if stop else None), known


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
