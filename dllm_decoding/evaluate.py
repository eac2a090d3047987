"""Accuracy, forwards and speed of one strategy on one task: ``dllm-decode eval``.

Definitions (also in docs/benchmarks.md):

* **NFE** per sample: model forwards the row cost (``out.nfe``).
* **TPF** (tokens per forward): ``gen_length / NFE`` per sample, averaged; the answer region
  including its EOS fill, as the LLaDA / Fast-dLLM / d3LLM papers count it.
* **tokens/s**: ``n * gen_length / wall seconds`` of the decode calls (batched).
* **latency/sample**: wall seconds of the decode calls / n.
* **memory**: on Linux the kernel's resident-set high-water mark is reset before each
  evaluation (``/proc/self/clear_refs``), so ``peak_rss_mb`` is this evaluation's own peak and
  ``decode_peak_mb`` = peak - resident size at the start: the working memory of decoding
  (logits, fused copies, credit tables, model activations). Where the reset is not allowed,
  ``peak_rss_mb`` is the process-lifetime ``ru_maxrss``, ``decode_peak_mb`` is ``None`` and
  ``memory_method`` says so. ``logits_mb_per_step`` is one step's float32 logits for one batch.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from .config import load_strategy, parse_overrides
from .errors import ConfigError, ModelError
from .models import KV_CACHE_MODES, HFMaskedDiffusionModel
from .loop import generate
from .tasks import Task, decode_answer, encode_batch, get_task


def evaluate(model: Any, tokenizer: Any, strategy: Any, task: Task | str, n: int, *,
             split: str = "test", batch_size: int = 64, overrides: Mapping[str, Any] | None = None,
             seed: int = 0, trace: bool = False, keep_predictions: bool = False,
             blocks: int = 1) -> dict[str, Any]:
    """Decode ``n`` examples of ``task`` with ``strategy`` and measure everything; the answer
    is decoded in ``blocks`` equal blocks."""
    task = get_task(task) if isinstance(task, str) else task
    overrides = {"gen_length": task.gen_length, "block_length": block_length(task, blocks), **(overrides or {})}
    load_strategy(strategy, overrides)  # fail before any work
    examples = task.examples(split, n, seed=seed)
    memory = MemoryWatch()
    correct, nfe, predictions, traces = [], [], [], []
    seconds = 0.0
    calls = 0
    for start in range(0, n, batch_size):
        batch = examples[start:start + batch_size]
        prompt, mask = encode_batch(tokenizer, batch, task)
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


class MemoryWatch:
    """Peak resident memory of a stretch of work (see the module docstring)."""

    def __init__(self) -> None:
        self.start_mb = _status_mb("VmRSS")
        self.resettable = False
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # 5 = reset the peak RSS to the current RSS
            self.resettable = self.start_mb is not None and _status_mb("VmHWM") is not None
        except OSError:
            pass

    def finish(self) -> dict[str, Any]:
        if self.resettable:
            peak = _status_mb("VmHWM")
            return {"peak_rss_mb": peak, "decode_peak_mb": max(0.0, peak - self.start_mb),
                    "memory_method": "VmHWM reset per evaluation"}
        return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "decode_peak_mb": None, "memory_method": "ru_maxrss (process lifetime)"}


def add_blocks_argument(p: argparse.ArgumentParser) -> None:
    """``--blocks N`` for the commands that decode task answers (eval, bench)."""
    p.add_argument("--blocks", type=int, default=1, metavar="N",
                   help="decode each answer in this many equal blocks (default 1)")


def block_length(task: Task, blocks: int) -> int:
    """The block length that splits ``task``'s answer into ``blocks`` equal blocks."""
    if blocks < 1 or task.gen_length % blocks:
        raise ConfigError(f"--blocks {blocks}: task {task.name!r} has {task.gen_length}-token answers, which "
                          f"do not split into {blocks} equal blocks; use a divisor of {task.gen_length}")
    return task.gen_length // blocks


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


class PerturbedLogits(torch.nn.Module):
    """The wrapped model with its logits divided by ``tau`` and, with ``noise > 0``, Gaussian
    noise of that standard deviation added at every forward (seeded, so a run repeats exactly).

    ``tau > 1`` keeps every argmax and flattens every distribution: a uniformly under-confident
    model. ``noise`` makes confidence fluctuate from step to step, as it does on large models,
    which is what a rule that remembers past steps (credit) could exploit. The CLI's
    ``--logit-temperature`` and ``--logit-noise`` use it to stress-test confidence rules."""

    def __init__(self, model: Any, tau: float = 1.0, noise: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        self.inner, self.config, self.tau, self.noise = model, model.config, tau, noise
        self.generator = torch.Generator().manual_seed(seed)
        self.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                use_cache: bool = False, key_values: Any = None, window_start: int = 0) -> Any:
        cache_args = {"use_cache": True} if use_cache else {}
        if key_values is not None:  # a cached window (HFMaskedDiffusionModel(kv_cache=...))
            cache_args.update(key_values=key_values, window_start=window_start)
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, **cache_args)
        logits = out.logits / self.tau
        if self.noise:
            jitter = torch.randn(logits.shape, generator=self.generator, dtype=logits.dtype)
            # keep -inf entries (tokens the model rules out, e.g. [MASK]) ruled out
            logits = logits + self.noise * jitter.masked_fill(torch.isinf(logits), 0.0)
        return SimpleNamespace(logits=logits, key_values=getattr(out, "key_values", None))


def add_model_arguments(p: argparse.ArgumentParser, *, toy: bool = False) -> None:
    """``--model``, the logit perturbations and the key-value cache, the same for every command that decodes."""
    p.add_argument("--model", default="reference",
                   help="'reference', 'toy' or a local checkpoint directory (the reference architecture, "
                        "or any Hugging Face masked-diffusion model)" if toy
                   else "'reference' or a local checkpoint directory (the reference architecture, or any "
                        "Hugging Face masked-diffusion model: generate only)")
    p.add_argument("--logit-temperature", type=float, default=1.0, metavar="TAU",
                   help="divide the model's logits by TAU before any strategy sees them: TAU > 1 makes an "
                        "under-confident model with the same argmax (stress-tests confidence rules)")
    p.add_argument("--logit-noise", type=float, default=0.0, metavar="SIGMA",
                   help="add Gaussian noise of this standard deviation to the logits at every forward "
                        "(seeded): confidence that fluctuates from step to step")
    p.add_argument("--mask-id", type=int, default=None, metavar="ID",
                   help="a checkpoint other than the reference model: its [MASK] token id, when its config has "
                        "no mask_token_id (LLaDA: 126336)")
    p.add_argument("--shift-logits", action="store_true",
                   help="a checkpoint whose logits[:, i] predict token i + 1 (Dream)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let a checkpoint that ships its own modeling code (LLaDA, Dream) run it")
    p.add_argument("--kv-cache", choices=KV_CACHE_MODES, default=None,
                   help="Fast-dLLM's key-value cache: each block's first step runs the whole sequence, later "
                        "steps compute only the block ('dual') or the block and what follows ('prefix') "
                        "against the cached keys and values; approximate, faster (default: no cache)")
    p.add_argument("--kv-refresh", type=int, default=None, metavar="N",
                   help="with --kv-cache: refresh the cache with a full forward after every N cached forwards "
                        "(default: at block starts only)")


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """How the arguments change the model ({} for none: logit perturbations and the key-value
    cache), checked before any work."""
    tau, noise, kv_cache, kv_refresh = args.logit_temperature, args.logit_noise, args.kv_cache, args.kv_refresh
    if not (math.isfinite(tau) and tau > 0):
        raise ConfigError(f"--logit-temperature must be a positive number, got {tau}")
    if not (math.isfinite(noise) and noise >= 0):
        raise ConfigError(f"--logit-noise must be a number >= 0, got {noise}")
    options: dict[str, Any] = {}
    if tau != 1.0 or noise != 0.0:
        options.update(logit_temperature=tau, logit_noise=noise)
    if kv_refresh is not None and (kv_cache is None or kv_refresh < 1):
        raise ConfigError(f"--kv-refresh {kv_refresh}: give a number >= 1 of cached forwards between refreshes, "
                          f"together with --kv-cache prefix or dual")
    if kv_cache is not None:
        options.update(kv_cache=kv_cache)
    if kv_refresh is not None:
        options.update(kv_refresh=kv_refresh)
    if options and args.model == "toy":
        raise ConfigError("--logit-temperature, --logit-noise and --kv-cache need a checkpoint model; the "
                          "toy model is a plain function (use --model reference)")
    foreign = {"mask_id": args.mask_id, "shift_logits": args.shift_logits or None,
               "trust_remote_code": args.trust_remote_code or None}
    foreign = {k: v for k, v in foreign.items() if v is not None}
    if foreign and (args.model in ("toy", "reference") or is_reference_checkpoint(args.model)):
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise ConfigError(f"{flags}: for checkpoints other than the reference model; {args.model!r} needs none")
    return {**options, **foreign}


def is_reference_checkpoint(name: str) -> bool:
    """Whether ``name`` is the shipped reference model or a directory holding one (its
    config.json says so), without loading anything."""
    from .reference.modeling import MODEL_TYPE

    if name == "reference":
        return True
    config = Path(name) / "config.json"
    try:
        return json.loads(config.read_text()).get("model_type") == MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def load_model(name: str, *, logit_temperature: float = 1.0, logit_noise: float = 0.0,
               kv_cache: str | None = None, kv_refresh: int | None = None, mask_id: int | None = None,
               shift_logits: bool = False, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for ``reference``, ``toy`` (tokenizer None) or a local checkpoint
    directory (the reference architecture, or any Hugging Face masked-diffusion model), its
    logits perturbed when asked (:class:`PerturbedLogits`) and decoded with a key-value cache
    when asked (``HFMaskedDiffusionModel(kv_cache=...)``)."""
    if name == "toy":
        from .testing import ContextModel

        return ContextModel(vocab_size=16), None
    from .reference import load_reference_model

    if is_reference_checkpoint(name) or not Path(name).is_dir():  # its loader names what is wrong
        model, tokenizer = load_reference_model(None if name == "reference" else name)
    else:
        model, tokenizer = load_hf_checkpoint(name, trust_remote_code=trust_remote_code)
        if mask_id is None and getattr(model.config, "mask_token_id", None) is None:
            raise ConfigError(f"--model {name}: its config has no mask_token_id; pass --mask-id "
                              f"(the [MASK] token's id, e.g. 126336 for LLaDA)")
    if logit_temperature != 1.0 or logit_noise:
        model = PerturbedLogits(model, logit_temperature, logit_noise)
    if kv_cache is not None or mask_id is not None or shift_logits:
        model = HFMaskedDiffusionModel(model, mask_id=mask_id, shift_logits=shift_logits,
                                       kv_cache=kv_cache, kv_refresh=kv_refresh)
    return model, tokenizer


def load_hf_checkpoint(path: str, *, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """A local Hugging Face checkpoint, offline: the model through ``AutoModelForMaskedLM`` or,
    when its config maps no masked-LM class (LLaDA and Dream register theirs as ``AutoModel``),
    ``AutoModel``; its tokenizer when the directory has one, else None."""
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    from .reference import _first_line, _no_progress_bar

    hint = "" if trust_remote_code else " (a checkpoint with its own modeling code needs --trust-remote-code)"
    model, failures = None, []
    with _no_progress_bar():
        for auto in (AutoModelForMaskedLM, AutoModel):
            try:
                model = auto.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
                break
            except Exception as exc:  # transformers raises ValueError, OSError, ImportError...
                failures.append(f"{auto.__name__}: {_first_line(exc)}")
    if model is None and not trust_remote_code and all("custom code" in f for f in failures):
        raise ModelError(f"{path!r} ships its own modeling code; pass --trust-remote-code to run it")
    if model is None:
        raise ModelError(f"cannot load a model from {path!r}{hint}: {'; '.join(failures)}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception:  # a checkpoint without tokenizer files decodes --prompt-ids only
        tokenizer = None
    return model.eval(), tokenizer


def model_from_args(args: argparse.Namespace, *, decodes_tasks: str | None = None) -> tuple[Any, Any]:
    """The model the arguments ask for. ``decodes_tasks``: the command's name when it decodes
    task prompts, which need a tokenizer (so not the toy model)."""
    options = model_options(args)
    if decodes_tasks and args.model == "toy":
        raise ConfigError(f"{decodes_tasks} decodes task prompts: it needs a model with a tokenizer "
                          f"(--model reference or a checkpoint directory), not the toy model")
    if decodes_tasks and Path(args.model).is_dir() and not is_reference_checkpoint(args.model):
        raise ConfigError(f"{decodes_tasks} decodes the reference tasks, whose prompts are written for the "
                          f"reference model's tokenizer; {args.model!r} is another model. Decode your own "
                          f"prompts with `dllm-decode generate --model {args.model} --prompt ...` or dd.generate")
    return load_model(args.model, **options)


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
    overrides = parse_overrides(args.overrides)
    load_strategy(args.strategy, {"gen_length": task.gen_length, "block_length": block_length(task, args.blocks),
                                  **overrides})
    model, tokenizer = model_from_args(args, decodes_tasks="eval")
    with torch.no_grad():
        result = evaluate(model, tokenizer, args.strategy, task, args.n, split=args.split,
                          batch_size=args.batch_size, overrides=overrides, seed=args.seed,
                          keep_predictions=args.predictions, blocks=args.blocks)
    result.update(model=args.model, **model_options(args))
    if not args.predictions:
        result.pop("nfe")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from .cli import main

    sys.exit(main(["eval", *sys.argv[1:]]))
