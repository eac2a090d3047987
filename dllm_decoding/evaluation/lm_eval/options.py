"""The ``--model_args`` of the ``dllm`` lm-eval model, parsed and checked before any model loads.

This module does not import lm-eval: the CLI checks a command line with it before starting the
harness, and the tests check bad input without the harness installed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...core.config import load_strategy, parse_override_value
from ...core.errors import ConfigError, did_you_mean
from ...models import KV_CACHE_MODES
from ..loading import is_reference_checkpoint

#: the prefix of a strategy override in model_args: ``set.select.threshold=0.8``
OVERRIDE_PREFIX = "set."

#: every key ``--model_args`` takes, with what it means (the docs table and error hints)
MODEL_ARGS: dict[str, str] = {
    "pretrained": "'reference' (the shipped model), a reference checkpoint directory or a local Hugging Face "
                  "masked-diffusion checkpoint (LLaDA, Dream, ...)",
    "strategy": "a preset name (dllm-decode strategies) or a .toml path (default credit_decoding)",
    "set.KEY": "a strategy override with a dotted key, e.g. set.select.threshold=0.8 (repeatable)",
    "gen_length": "answer tokens decoded per request (default: the request's max_gen_toks, which lm-eval "
                  "sets to 256 for tasks that give none)",
    "block_length": "semi-autoregressive block length (default: gen_length, one block)",
    "steps": "decoding steps over the whole answer (default: the strategy's)",
    "kv_cache": "Fast-dLLM's key-value cache: prefix or dual (default none)",
    "kv_refresh": "with kv_cache: a full forward after every N cached forwards",
    "batch_size": "requests decoded together (default: lm-eval's --batch_size, 1); also the rows of one "
                  "loglikelihood forward",
    "device": "auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda, cuda:N",
    "dtype": "auto (as loaded), float32, bfloat16 or float16",
    "seed": "row seed base: request doc_id d decodes with seed + d (default 0)",
    "chat_template": "true: wrap each request as one user turn in the tokenizer's chat template (default false; "
                     "lm-eval's --apply_chat_template instead builds the few-shot turns itself)",
    "early_stop": "true: a row whose finished blocks hold EOS stops (fewer forwards; default false, exact presets)",
    "mc_num": "loglikelihood: Monte-Carlo samples per request (LLaDA's estimator; default 128)",
    "check_greedy": "loglikelihood: also decode the continuation greedily and report whether it is reproduced "
                    "(default false: is_greedy is reported as false)",
    "mask_id": "a checkpoint whose config has no mask_token_id: the [MASK] id (LLaDA: 126336)",
    "shift_logits": "true for checkpoints whose logits[:, i] predict token i + 1 (Dream)",
    "trust_remote_code": "let a checkpoint with its own modeling code (LLaDA, Dream) run it",
    "max_batch_size": "not supported (no automatic batch size); give batch_size",
}

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class LmEvalOptions:
    pretrained: str = "reference"
    strategy: str = "credit_decoding"
    overrides: dict[str, Any] = field(default_factory=dict)
    gen_length: int | None = None
    block_length: int | None = None
    steps: int | None = None
    kv_cache: str | None = None
    kv_refresh: int | None = None
    batch_size: int = 1
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    chat_template: bool = False
    early_stop: bool = False
    mc_num: int = 128
    check_greedy: bool = False
    mask_id: int | None = None
    shift_logits: bool = False
    trust_remote_code: bool = False

    @classmethod
    def from_model_args(cls, model_args: Mapping[str, Any], *, check_model: bool = True) -> LmEvalOptions:
        """Options from ``--model_args`` (as lm-eval parses them: values may be str, int, float,
        bool or None); every mistake is one :class:`ConfigError` naming the key and the fix.
        ``check_model=False`` skips the checks of ``pretrained`` (a path that exists here, what
        the reference model takes): for commands written for another machine."""
        values: dict[str, Any] = {}
        overrides: dict[str, Any] = {}
        for key, value in model_args.items():
            if key.startswith(OVERRIDE_PREFIX):
                dotted = key[len(OVERRIDE_PREFIX):]
                if not dotted:
                    raise ConfigError("model_args: 'set.' needs a strategy option after it, e.g. set.select.threshold=0.8")
                overrides[dotted] = parse_override_value(value) if isinstance(value, str) else value
                continue
            if key not in MODEL_ARGS or key == "set.KEY":
                raise ConfigError(f"model_args: unknown key {key!r}; {did_you_mean(key, _choices())} "
                                  f"(strategy options go as set.KEY=VALUE, e.g. set.select.threshold=0.8)")
            values[key] = value
        if values.get("max_batch_size") is not None:
            raise ConfigError("max_batch_size: the dllm model has no automatic batch size; give batch_size=N")
        values.pop("max_batch_size", None)
        options = cls(
            pretrained=_text(values, "pretrained", cls.pretrained),
            strategy=_text(values, "strategy", cls.strategy),
            overrides=overrides,
            gen_length=_integer(values, "gen_length", None, low=1),
            block_length=_integer(values, "block_length", None, low=1),
            steps=_integer(values, "steps", None, low=1),
            kv_cache=_kv_cache(values.get("kv_cache")),
            kv_refresh=_integer(values, "kv_refresh", None, low=1),
            batch_size=_batch_size(values.get("batch_size", 1)),
            device=_device(values.get("device", "auto")),
            dtype=_choice(values, "dtype", "auto", DTYPES),
            seed=_integer(values, "seed", 0, low=0),
            chat_template=_boolean(values, "chat_template", False),
            early_stop=_boolean(values, "early_stop", False),
            mc_num=_integer(values, "mc_num", 128, low=1),
            check_greedy=_boolean(values, "check_greedy", False),
            mask_id=_integer(values, "mask_id", None, low=0),
            shift_logits=_boolean(values, "shift_logits", False),
            trust_remote_code=_boolean(values, "trust_remote_code", False),
        )
        options.check(check_model=check_model)
        return options

    def check(self, *, check_model: bool = True) -> None:
        """Everything that can be known without loading the model."""
        if self.kv_refresh is not None and self.kv_cache is None:
            raise ConfigError(f"kv_refresh={self.kv_refresh}: it refreshes the key-value cache; add kv_cache=prefix or dual")
        if check_model:
            self._check_model()
        self.strategy_for(self.gen_length or self.block_length)

    def _check_model(self) -> None:
        reference = is_reference_checkpoint(self.pretrained)
        if not reference and not Path(self.pretrained).is_dir():
            raise ConfigError(f"pretrained={self.pretrained!r} is neither 'reference' nor a local checkpoint directory; "
                              f"download the checkpoint first (e.g. `hf download GSAI-ML/LLaDA-8B-Instruct --local-dir "
                              f"./LLaDA-8B-Instruct`) and pass its path")
        foreign = [k for k in ("mask_id", "shift_logits", "trust_remote_code") if getattr(self, k) not in (None, False)]
        if reference and foreign:
            raise ConfigError(f"{', '.join(foreign)}: for checkpoints other than the reference model; "
                              f"pretrained={self.pretrained!r} needs none")
        if reference and self.chat_template:
            raise ConfigError("chat_template=true: the reference model's tokenizer has no chat template; "
                              "use chat_template=false")

    def strategy_for(self, gen_length: int | None):
        """The strategy a request with this answer length decodes with (checked: an override that
        does not fit the strategy, or lengths that do not fit each other, are ConfigErrors)."""
        lengths = {"gen_length": gen_length, "block_length": self.block_length, "steps": self.steps}
        try:
            return load_strategy(self.strategy, {**{k: v for k, v in lengths.items() if v is not None},
                                                 **self.overrides})
        except ConfigError as exc:
            where = f" (gen_length={gen_length})" if gen_length is not None and self.gen_length is None else ""
            raise ConfigError(f"model_args strategy={self.strategy!r}{where}: {exc}") from None

    def gen_length_for(self, max_gen_toks: int | None, task: str) -> int:
        """The answer length of a request whose task asks for at most ``max_gen_toks`` tokens."""
        if self.gen_length is None:
            return int(max_gen_toks) if max_gen_toks is not None else DEFAULT_MAX_GEN_TOKS
        if max_gen_toks is not None and int(max_gen_toks) > self.gen_length:
            raise ConfigError(f"task {task!r} asks for up to max_gen_toks={max_gen_toks} tokens, but gen_length="
                              f"{self.gen_length} decodes only {self.gen_length}; raise gen_length, or lower the "
                              f"task's limit with --gen_kwargs max_gen_toks={self.gen_length}")
        return self.gen_length

    def summary(self) -> dict[str, Any]:
        """What the results JSON records about the run (the resolved strategies are per task)."""
        return {"pretrained": self.pretrained, "strategy": self.strategy, "overrides": dict(self.overrides),
                "gen_length": self.gen_length, "block_length": self.block_length, "steps": self.steps,
                "kv_cache": self.kv_cache, "kv_refresh": self.kv_refresh, "batch_size": self.batch_size,
                "dtype": self.dtype, "seed": self.seed, "chat_template": self.chat_template,
                "early_stop": self.early_stop, "mc_num": self.mc_num}


#: lm-eval's answer budget for a generate_until task that sets no max_gen_toks
DEFAULT_MAX_GEN_TOKS = 256


def _choices() -> list[str]:
    return [k for k in MODEL_ARGS if k != "set.KEY"]


def _text(values: Mapping[str, Any], key: str, default: str) -> str:
    value = values.get(key, default)
    if value is None or isinstance(value, bool) or str(value).strip() == "":
        raise ConfigError(f"{key}={value!r}: give a value ({MODEL_ARGS[key]})")
    return str(value).strip()


def _integer(values: Mapping[str, Any], key: str, default: int | None, *, low: int) -> int | None:
    value = values.get(key, default)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(f"{key}={value!r}: give a whole number >= {low}") from None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key}={value!r}: give a whole number >= {low}")
    return value


def _boolean(values: Mapping[str, Any], key: str, default: bool) -> bool:
    value = values.get(key, default)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(f"{key}={value!r}: give true or false")


def _choice(values: Mapping[str, Any], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = str(values.get(key, default)).strip()
    if value not in choices:
        raise ConfigError(f"{key}={value!r}: {did_you_mean(value, choices)}")
    return value


def _kv_cache(value: Any) -> str | None:
    if value in (None, False) or (isinstance(value, str) and value.strip().lower() in ("none", "false", "")):
        return None
    if value not in KV_CACHE_MODES:
        raise ConfigError(f"kv_cache={value!r}: use one of {', '.join(KV_CACHE_MODES)} or none")
    return value


def _batch_size(value: Any) -> int:
    if isinstance(value, str) and value.strip().startswith("auto"):
        raise ConfigError(f"batch_size={value!r}: the dllm model has no automatic batch size; give a number, "
                          f"e.g. batch_size=16")
    return _integer({"batch_size": value}, "batch_size", 1, low=1)  # type: ignore[return-value]


def _device(value: Any) -> str:
    text = str(value).strip() if value is not None else "auto"
    base, _, index = text.partition(":")
    if base not in ("auto", "cpu", "cuda", "mps") or (index and (base != "cuda" or not index.isdigit())):
        raise ConfigError(f"device={value!r}: use auto, cpu, cuda, cuda:N or mps")
    return text
