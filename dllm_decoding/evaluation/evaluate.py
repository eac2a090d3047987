"""Accuracy, forwards and speed of one strategy on one task: ``evaluate``.

Definitions (also in docs/benchmarks.md):

* **NFE** per sample: model forwards the row cost (``out.nfe``).
* **TPF** (tokens per forward): ``gen_length / NFE`` per sample, averaged; the answer region
  including its EOS fill, as the LLaDA / Fast-dLLM / d3LLM papers count it.
* **tokens/s**: ``n * gen_length / wall seconds`` of the decode calls (batched).
* **latency/sample**: wall seconds of the decode calls / n.
* **memory**: see :mod:`dllm_decoding.evaluation.memory`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..core.config import load_strategy
from ..core.errors import ConfigError
from ..core.loop import generate
from ..tasks import Task, decode_answer, encode_batch, get_task
from ..models.placement import model_device
from .memory import MemoryWatch


def evaluate(model: Any, tokenizer: Any, strategy: Any, task: Task | str, n: int, *,
             split: str = "test", batch_size: int = 64, overrides: Mapping[str, Any] | None = None,
             seed: int = 0, trace: bool = False, keep_predictions: bool = False,
             blocks: int = 1) -> dict[str, Any]:
    """Decode ``n`` examples of ``task`` with ``strategy`` and measure everything; the answer
    is decoded in ``blocks`` equal blocks."""
    task = get_task(task) if isinstance(task, str) else task
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}: give a number of rows per decode call >= 1")
    overrides = {"gen_length": task.gen_length, "block_length": block_length(task, blocks), **(overrides or {})}
    load_strategy(strategy, overrides)  # fail before any work
    examples = task.examples(split, n, seed=seed)
    memory = MemoryWatch()
    device = model_device(model)
    correct, nfe, predictions, traces = [], [], [], []
    seconds = 0.0
    calls = 0
    for start in range(0, n, batch_size):
        batch = examples[start:start + batch_size]
        prompt, mask = encode_batch(tokenizer, batch, task)
        prompt, mask = prompt.to(device), mask.to(device)  # the model's device (--device)
        t0 = time.perf_counter()
        out = generate(model, prompt, strategy, attention_mask=mask, overrides=overrides,
                       seed=seed + start, trace=trace)
        seconds += time.perf_counter() - t0
        calls += out.stats["forward_calls"]
        answers = [decode_answer(tokenizer, a) for a in out.answers]
        correct += [task.check(a, e) for a, e in zip(answers, batch)]
        nfe += out.nfe.tolist()
        if keep_predictions:
            predictions += answers
        if trace:
            traces.append(out.trace)
    gen = task.gen_length
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or getattr(model, "vocab_size", 0)
    width = prompt.shape[1] + gen
    result: dict[str, Any] = {
        "task": task.name, "strategy": strategy if isinstance(strategy, str) else "custom",
        "overrides": {k: v for k, v in overrides.items() if k not in ("gen_length", "block_length")},
        "n": n, "gen_length": gen, "blocks": blocks, "accuracy": sum(correct) / n,
        "nfe_mean": sum(nfe) / n, "nfe": nfe,
        "tpf": sum(gen / x for x in nfe) / n,
        "forward_calls": calls,
        "tokens_per_second": n * gen / seconds if seconds else float("inf"),
        "latency_per_sample_s": seconds / n, "seconds": seconds,
        **memory.finish(),
        "logits_mb_per_step": min(batch_size, n) * width * vocab * 4 / 2**20,
    }
    if keep_predictions:
        result["predictions"] = predictions
        result["correct"] = correct
    if trace:
        result["traces"] = traces
    return result


def block_length(task: Task, blocks: int) -> int:
    """The block length that splits ``task``'s answer into ``blocks`` equal blocks."""
    if blocks < 1 or task.gen_length % blocks:
        raise ConfigError(f"--blocks {blocks}: task {task.name!r} has {task.gen_length}-token answers, which "
                          f"do not split into {blocks} equal blocks; use a divisor of {task.gen_length}")
    return task.gen_length // blocks
