"""The ``dllm`` model for lm-evaluation-harness: every strategy of ours behind ``--model_args``.

``generate_until`` decodes batches of requests with :func:`dllm_decoding.generate`;
``loglikelihood`` uses LLaDA's Monte-Carlo estimator (:mod:`.likelihood`), so multiple-choice
tasks run too; ``loglikelihood_rolling`` (perplexity tasks) is refused. The model loads at the
first request, after every request has been checked, so bad input fails before any model loads.

Under ``torchrun`` / ``accelerate launch`` each process is one rank: lm-eval gives each rank its
share of the documents and gathers the per-sample metrics on rank 0 through
:meth:`DllmLM.gather_object`, which also carries our speed statistics there.
"""

from __future__ import annotations

import os
import time
import warnings
import zlib
from collections import Counter, defaultdict
from typing import Any

import torch

from ...core.denoiser import as_denoiser
from ...core.errors import ConfigError
from ...core.loop import generate
from ...models import HFMaskedDiffusionModel
from ...text import left_pad, padding_id
from ..loading import is_reference_checkpoint, load_model
from . import require_lm_eval
from .likelihood import mc_loglikelihood
from .options import LmEvalOptions

lm_eval = require_lm_eval()
from lm_eval.api.model import LM  # noqa: E402  (after the check that names the install command)
from lm_eval.api.registry import register_model  # noqa: E402

#: the name lm-eval knows the model by: ``--model dllm``
MODEL_NAME = "dllm"

#: generation_kwargs the model reads; others are reported once and ignored (the strategy decides)
_GENERATION_KEYS = {"until", "max_gen_toks"}

#: row seed of repeat r of document d: seed + d + r * _REPEAT_SEED_STRIDE
_REPEAT_SEED_STRIDE = 1 << 20


class UnsupportedRequest(ConfigError, NotImplementedError):
    """A request type the dllm model does not implement."""


class UnsupportedGeneration(ConfigError):
    """generation_kwargs the dllm model cannot honour."""


@register_model(MODEL_NAME)
class DllmLM(LM):
    """lm-eval model: decode with a dllm-decoding strategy (see ``MODEL_ARGS`` in :mod:`.options`)."""

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        self.options = LmEvalOptions.from_model_args(model_args)
        self._rank, self._world_size = _start_distributed(self.options.device)
        self._device = _resolve_device(self.options.device)
        self._model: Any = None
        self._tokenizer: Any = None
        self._lm_eval_chat_template = False
        self._warned: set[str] = set()
        # (task, doc_id, idx, repeat) -> (kind, forwards, answer tokens, seconds): one record per
        # request; lm-eval's padding copies (ranks with fewer documents) are not recorded
        self._records: dict[tuple[str, int, int, int], tuple[str, int, int, float]] = {}
        self._strategies: dict[str, dict[str, Any]] = {}

    # --- how lm-eval builds the model --------------------------------------------------

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> DllmLM:
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> DllmLM:
        """``--batch_size`` and ``--device`` apply unless model_args gives them (lm-eval passes both
        as extra arguments; its default cuda:0 device is not a choice the user made)."""
        merged = {k: v for k, v in (additional_config or {}).items() if v is not None and k != "max_batch_size"}
        if merged.get("device") == "cuda:0" and not torch.cuda.is_available():
            merged.pop("device")
        return cls(**{**merged, **arg_dict})

    # --- distributed primitives the evaluator calls ------------------------------------

    @property
    def device(self) -> torch.device:
        return self._device

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._world_size == 1:
            return tensor
        import torch.distributed as dist

        local = tensor.reshape(1) if tensor.dim() == 0 else tensor
        parts = [torch.empty_like(local) for _ in range(self._world_size)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        if self._world_size == 1:
            return [obj]
        import torch.distributed as dist

        gathered: list[Any] | None = [None] * self._world_size if self._rank == dst else None
        # every gather also carries this rank's speed records, so rank 0 reports all of them
        dist.gather_object((obj, self._records, self._strategies), gathered, dst=dst)
        if gathered is None:
            return None
        for _, records, strategies in gathered:
            self._records.update(records)
            self._strategies.update(strategies)
        return [part for part, _, _ in gathered]

    def barrier(self) -> None:
        if self._world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    # --- chat templates ------------------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        return str(self.options.pretrained).replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """lm-eval's ``--apply_chat_template``: the tokenizer's template over lm-eval's turns."""
        if self.options.chat_template:
            raise ConfigError("--apply_chat_template and model_args chat_template=true both wrap the prompt; "
                              "use one of them")
        if is_reference_checkpoint(self.options.pretrained):
            raise ConfigError("--apply_chat_template: the reference model's tokenizer has no chat template")
        self._lm_eval_chat_template = True
        return self._load()[1].apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt,
                                                   tokenize=False)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if not chat_template or is_reference_checkpoint(self.options.pretrained):
            return None
        return getattr(self._load()[1], "chat_template", None)

    # --- requests ------------------------------------------------------------------------

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        # every request is checked before the model loads
        plans = [self._generation_plan(req, key) for req, key in zip(requests, _request_keys(requests))]
        if not plans:
            return []
        model, tokenizer = self._load()
        # a model that decodes fixed blocks (DiffusionGemma's canvas) decodes whole blocks; the
        # answer is cut to max_gen_toks as always
        fixed = as_denoiser(model).block_length
        contexts = [self._encode(req.args[0]) for req in requests]
        outputs: list[str | None] = [None] * len(requests)
        groups: dict[tuple[str, int], list[int]] = defaultdict(list)
        for i, plan in enumerate(plans):
            groups[(plan["task"], plan["gen_length"])].append(i)
        batches = []
        for (task, gen_length), members in groups.items():
            members.sort(key=lambda i: -len(contexts[i]))  # similar lengths together: less padding
            size = self.options.batch_size
            batches += [(task, gen_length, members[s:s + size]) for s in range(0, len(members), size)]
        eos = getattr(tokenizer, "eos_token_id", None)
        for task, gen_length, rows in _progress(batches, "dllm generate_until", disable_tqdm or self._rank != 0):
            prompt, mask = left_pad([contexts[i] for i in rows], padding_id(tokenizer), self._device)
            strategy = self.options.strategy_for(gen_length if fixed is None else -(-gen_length // fixed) * fixed)
            started = time.perf_counter()
            out = generate(model, prompt, strategy, attention_mask=mask, seed=[plans[i]["seed"] for i in rows],
                           eos_id=eos if self.options.early_stop else None)
            seconds = (time.perf_counter() - started) / len(rows)
            for row, i in enumerate(rows):
                plan = plans[i]
                text = _decode(tokenizer, out.answers[row][: plan["max_gen_toks"]], eos, plan["until"])
                outputs[i] = text
                if plan["key"] is not None:
                    self._records[plan["key"]] = ("generate_until", int(out.nfe[row]), gen_length, seconds)
                self._strategies.setdefault(task, strategy.resolved())
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return outputs  # type: ignore[return-value]

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        keys = _request_keys(requests)
        if not requests:
            return []
        model, tokenizer = self._load()
        denoiser = as_denoiser(model)
        if denoiser.mask_id is None:
            tasks = sorted({getattr(r, "task_name", None) or "?" for r in requests})
            raise UnsupportedRequest(f"task {', '.join(tasks)}: loglikelihood needs a [MASK] token (the Monte-Carlo "
                                     f"estimator masks the continuation); {denoiser.name!r} is a uniform-noise model "
                                     f"without one. Run generate_until tasks")
        results = []
        for req, key in _progress(list(zip(requests, keys)), "dllm loglikelihood", disable_tqdm or self._rank != 0):
            context, continuation = self._encode_pair(*req.args)
            seed = self.options.seed + zlib.crc32(f"{req.task_name}|{req.doc_id}|{req.idx}".encode())
            generator = torch.Generator().manual_seed(seed)
            started = time.perf_counter()
            logits_fn = _full_logits(denoiser, self._device)
            with torch.no_grad():
                value, forwards = mc_loglikelihood(
                    logits_fn, context.to(self._device), continuation.to(self._device), mask_id=denoiser.mask_id,
                    mc_num=self.options.mc_num, rows_per_forward=min(self.options.batch_size, self.options.mc_num),
                    generator=generator)
                is_greedy = False
                if self.options.check_greedy:
                    forwards_greedy, is_greedy = self._reproduces(model, context, continuation)
                    forwards += forwards_greedy
            if key is not None:
                self._records[key] = ("loglikelihood", forwards, int(continuation.numel()),
                                      time.perf_counter() - started)
            results.append((value, is_greedy))
            self.cache_hook.add_partial("loglikelihood", req.args, (value, is_greedy))
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        tasks = sorted({getattr(r, "task_name", None) or "?" for r in requests})
        raise UnsupportedRequest(f"task {', '.join(tasks)}: loglikelihood_rolling (perplexity) is not supported by the "
                                 f"dllm model; a masked-diffusion model gives no left-to-right token probabilities. "
                                 f"Run generate_until or multiple-choice tasks")

    # --- what the results JSON carries -----------------------------------------------------

    def get_model_info(self) -> dict[str, Any]:
        return {"dllm": {**self.options.summary(), "device": str(self._device), "world_size": self._world_size,
                         "tasks": speed_summary(self._records, self._strategies)}}

    # --- internals -------------------------------------------------------------------------

    def _generation_plan(self, req: Any, key: tuple[str, int, int, int] | None) -> dict[str, Any]:
        context, kwargs = req.args
        kwargs = dict(kwargs or {})
        task = getattr(req, "task_name", None) or "?"
        ignored = sorted(set(kwargs) - _GENERATION_KEYS - {"do_sample", "temperature"})
        samples = kwargs.get("do_sample") or (kwargs.get("temperature") or 0) > 0
        if (ignored or samples) and task not in self._warned:
            self._warned.add(task)
            what = ", ".join(ignored + (["do_sample/temperature (sampling)"] if samples else []))
            warnings.warn(f"task {task!r}: generation_kwargs {what} ignored; the strategy decides how tokens are "
                          f"chosen (sample with set.temperature=...)", stacklevel=2)
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        if not all(isinstance(s, str) for s in until):
            raise UnsupportedGeneration(f"task {task!r}: generation_kwargs until={until!r} must be strings")
        max_gen_toks = kwargs.get("max_gen_toks")
        if max_gen_toks is not None and (isinstance(max_gen_toks, bool) or not isinstance(max_gen_toks, int)
                                         or max_gen_toks < 1):
            raise UnsupportedGeneration(f"task {task!r}: max_gen_toks={max_gen_toks!r} is not a number of tokens >= 1")
        gen_length = self.options.gen_length_for(max_gen_toks, task)
        self.options.strategy_for(gen_length)  # the lengths fit the strategy (ConfigError otherwise)
        repeat = key[3] if key is not None else 0
        return {"task": task, "gen_length": gen_length, "max_gen_toks": max_gen_toks or gen_length, "until": until,
                "key": key, "seed": self.options.seed + int(getattr(req, "doc_id", 0) or 0)
                + repeat * _REPEAT_SEED_STRIDE}

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            o = self.options
            model, tokenizer = load_model(o.pretrained, kv_cache=o.kv_cache, kv_refresh=o.kv_refresh, mask_id=o.mask_id,
                                          shift_logits=o.shift_logits, trust_remote_code=o.trust_remote_code)
            if tokenizer is None:
                raise ConfigError(f"pretrained={o.pretrained!r} has no tokenizer files; lm-eval sends text, so the "
                                  f"checkpoint directory needs its tokenizer")
            module = model.model if isinstance(model, HFMaskedDiffusionModel) else model
            module.to(device=self._device, **({} if o.dtype == "auto" else {"dtype": getattr(torch, o.dtype)}))
            self._model, self._tokenizer = model, tokenizer
        return self._model, self._tokenizer

    def _encode(self, text: str) -> list[int]:
        tokenizer = self._load()[1]
        if self.options.chat_template:
            if self._lm_eval_chat_template:
                raise ConfigError("--apply_chat_template and model_args chat_template=true both wrap the prompt; "
                                  "use one of them")
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                 tokenize=False)
            return tokenizer(text, add_special_tokens=False)["input_ids"]
        return tokenizer(text)["input_ids"]

    def _encode_pair(self, context: str, continuation: str) -> tuple[torch.Tensor, torch.Tensor]:
        # trailing spaces of the context belong to the continuation (as lm-eval's own models do), and
        # the continuation's ids are those of the whole text after the context's: tokenizers merge
        # across the boundary
        stripped = context.rstrip(" ")
        continuation = context[len(stripped):] + continuation
        whole = self._encode(stripped + continuation)
        context_ids = self._encode(stripped)
        continuation_ids = whole[len(context_ids):]
        if not continuation_ids:
            raise ConfigError(f"loglikelihood request with an empty continuation after context {stripped[-40:]!r}")
        return torch.tensor(context_ids, dtype=torch.long), torch.tensor(continuation_ids, dtype=torch.long)

    def _reproduces(self, model: Any, context: torch.Tensor, continuation: torch.Tensor) -> tuple[int, bool]:
        """Whether decoding the continuation one token per step (most confident first, LLaDA's
        greedy rule) gives exactly the continuation: lm-eval's ``is_greedy``."""
        length = int(continuation.numel())
        out = generate(model, context[None].to(self._device), "llada_low_confidence", gen_length=length,
                       block_length=length, steps=length)
        return int(out.nfe[0]), bool(torch.equal(out.answers[0].cpu(), continuation))


def _request_keys(requests: list[Any]) -> list[tuple[str, int, int, int] | None]:
    counts: Counter = Counter()
    keys = []
    for req in requests:
        repeat = counts[id(req)]
        counts[id(req)] += 1
        keys.append(None if repeat >= int(getattr(req, "repeats", 1) or 1) else
                    (getattr(req, "task_name", None) or "?", int(getattr(req, "doc_id", 0) or 0),
                     int(getattr(req, "idx", 0) or 0), repeat))
    return keys


def speed_summary(records: dict[tuple[str, int, int, int], tuple[str, int, int, float]],
                  strategies: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task: requests, NFE (mean forwards per request), tokens per forward (mean of answer
    tokens / NFE, as ``evaluate`` counts it), tokens/s (answer tokens / decode seconds of one
    process; summed over ranks, so multiply by the process count for the whole run's rate)."""
    by_task: dict[str, list[tuple[str, int, int, float]]] = defaultdict(list)
    for key in sorted(records):
        by_task[key[0]].append(records[key])
    out: dict[str, dict[str, Any]] = {}
    for task, rows in sorted(by_task.items()):
        n = len(rows)
        seconds = sum(r[3] for r in rows)
        tokens = sum(r[2] for r in rows)
        entry: dict[str, Any] = {"request_type": rows[0][0], "requests": n,
                                 "nfe_mean": sum(r[1] for r in rows) / n, "decode_seconds": seconds}
        if rows[0][0] == "generate_until":
            entry.update(gen_length=rows[0][2], tokens_per_forward=sum(r[2] / r[1] for r in rows) / n,
                         tokens_per_second=tokens / seconds if seconds else None)
        if task in strategies:
            entry["resolved_strategy"] = strategies[task]
        out[task] = entry
    return out


def _start_distributed(device: str) -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (torchrun and accelerate launch set
    RANK / WORLD_SIZE / LOCAL_RANK), starting the process group when there are several ranks."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _resolve_device(device: str) -> torch.device:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(device)


def _full_logits(denoiser: Any, device: torch.device):
    def logits_fn(ids: torch.Tensor) -> torch.Tensor:
        session = denoiser.start_session(torch.ones_like(ids))
        return session.forward(ids, None)
    return logits_fn



def _decode(tokenizer: Any, ids: torch.Tensor, eos: int | None, until: list[str]) -> str:
    """The answer text: tokens before the first EOS, special tokens dropped, cut before the first
    stop sequence."""
    ids = [int(i) for i in ids]
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def _progress(items: list[Any], desc: str, disable: bool):
    from tqdm import tqdm

    return tqdm(items, desc=desc, disable=disable)
