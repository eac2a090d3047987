"""Model families by ``config.json`` ``model_type``: which of our classes loads a checkpoint,
its mask id, EOS ids and logit alignment, and the checks that run before any weight is read.

``load_model(path)`` (``dd.load_model``) reads ``config.json``, picks the family, refuses what
the family's class does not implement (naming the field), resolves the mask id, compares the
checkpoint's weight names and shapes (safetensors headers) with what the config implies, and
only then loads the weights with ``from_pretrained`` -- no ``trust_remote_code``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError, ModelError
from . import diffusion_gemma, dream, llada
from .placement import resolve_device, resolve_dtype


@dataclass(frozen=True)
class Family:
    name: str
    model_class: type
    config_class: type
    unsupported_fields: Callable[[dict[str, Any]], list[str]]
    # the published tokenizer's vocabulary size -> its [MASK] id and end-of-text ids; used only
    # when config.json does not say (a config whose vocabulary differs gets no guess)
    published_vocab_size: int
    published_mask_id: int
    published_eos_ids: tuple[int, ...]
    checkpoints: str

    @property
    def logits_predict_next_token(self) -> bool:
        return self.model_class.logits_predict_next_token


FAMILIES: dict[str, Family] = {
    llada.MODEL_TYPE: Family("LLaDA", llada.LLaDAForDiffusionLM, llada.LLaDAConfig, llada.unsupported_fields,
                             published_vocab_size=126464, published_mask_id=126336,
                             published_eos_ids=(126081, 126348),  # <|endoftext|>, <|eot_id|>
                             checkpoints="GSAI-ML/LLaDA-8B-Base, GSAI-ML/LLaDA-8B-Instruct, GSAI-ML/LLaDA-1.5"),
    dream.MODEL_TYPE: Family("Dream", dream.DreamForDiffusionLM, dream.DreamConfig, dream.unsupported_fields,
                             published_vocab_size=152064, published_mask_id=151666,
                             published_eos_ids=(151643, 151645),  # <|endoftext|>, <|im_end|>
                             checkpoints="Dream-org/Dream-v0-Base-7B, Dream-org/Dream-v0-Instruct-7B"),
}


def read_config(path: str | Path) -> dict[str, Any]:
    """``path/config.json`` as a dict, or one error naming the file and what is wrong."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{str(path)!r} is not a checkpoint directory: it has no config.json")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{config_file}: not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{config_file}: expected a JSON object, got {type(config).__name__}")
    return config


def family_of(config: dict[str, Any]) -> Family | None:
    return FAMILIES.get(config.get("model_type"))  # type: ignore[arg-type]


def known_model_types() -> str:
    return ", ".join(f"{t!r} ({f.name})" for t, f in FAMILIES.items())


def resolve_mask_id(path: str | Path, config: dict[str, Any], family: Family, mask_id: int | None = None) -> int:
    """The [MASK] id: ``mask_id`` when given, else config.json's, else the family's published
    one when the vocabulary is the published tokenizer's; never a silent default."""
    vocab_size = config.get("vocab_size")
    if mask_id is None:
        mask_id = config.get("mask_token_id")
    if mask_id is None and vocab_size == family.published_vocab_size:
        mask_id = family.published_mask_id
    if mask_id is None:
        raise ConfigError(f"{Path(path) / 'config.json'} has no mask_token_id, and its vocab_size {vocab_size} is "
                          f"not the published {family.name} tokenizer's ({family.published_vocab_size}, whose "
                          f"[MASK] is {family.published_mask_id}); add \"mask_token_id\": ID to config.json or "
                          f"pass --mask-id ID (mask_id=ID in Python)")
    if isinstance(mask_id, bool) or not isinstance(mask_id, int) or not (
            isinstance(vocab_size, int) and 0 <= mask_id < vocab_size):
        raise ConfigError(f"{path}: mask id {mask_id!r} is not a token of the vocabulary [0, {vocab_size})")
    return mask_id


def eos_ids(config: dict[str, Any], family: Family) -> tuple[int, ...]:
    """config.json's eos_token_id(s), plus the published tokenizer's end-of-turn ids when the
    vocabulary is the published one (Instruct models end an answer with those)."""
    ids = config.get("eos_token_id")
    found = [ids] if isinstance(ids, int) else list(ids or [])
    if config.get("vocab_size") == family.published_vocab_size:
        found += [i for i in family.published_eos_ids if i not in found]
    return tuple(found)


def _checkpoint_tensors(path: Path) -> dict[str, tuple[int, ...]] | None:
    """Weight names and shapes from the safetensors headers (no tensor is read); None when the
    checkpoint is not in safetensors (then ``from_pretrained``'s loading report is checked)."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as handle:
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def _expected_tensors(family: Family, config: Any) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only, no memory
        model = family.model_class(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _list(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _refuse_mismatch(path: Path, family: Family, missing: list[str], unexpected: list[str],
                     mismatched: list[str]) -> None:
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} weight(s) the config implies: {_list(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} weight(s) the config does not explain: {_list(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} of another shape: {_list(mismatched)}")
    if problems:
        raise ModelError(f"{path}: the weights do not fit its config.json as a {family.name} checkpoint "
                         f"({'; '.join(problems)}). Check that config.json belongs to these weights (layers, "
                         f"sizes, weight_tying / tie_word_embeddings); a checkpoint of another architecture "
                         f"with its own code needs --trust-remote-code")


def check_family_checkpoint(path: str | Path, config: dict[str, Any] | None = None) -> tuple[Family, Any]:
    """Everything that can be checked before weights load: family, supported fields, weight
    names and shapes. Returns the family and its config object."""
    path = Path(path)
    config = read_config(path) if config is None else config
    family = family_of(config)
    if family is None:
        raise ModelError(f"{path}: model_type {config.get('model_type')!r} is not a family this package implements "
                         f"({known_model_types()}); to run a checkpoint's own modeling code use the generic path, "
                         f"--trust-remote-code (trust_remote_code=True)")
    unsupported = family.unsupported_fields(config)
    if unsupported:
        raise ConfigError(f"{path / 'config.json'}: our {family.name} class does not implement "
                          f"{'; '.join(unsupported)}; run the checkpoint's own code with --trust-remote-code")
    config_object = family.config_class.from_dict(config)
    found = _checkpoint_tensors(path)
    if found is not None:
        expected = _expected_tensors(family, config_object)
        _refuse_mismatch(path, family, sorted(set(expected) - set(found)), sorted(set(found) - set(expected)),
                         sorted(k for k in set(expected) & set(found) if expected[k] != found[k]))
    return family, config_object


@contextlib.contextmanager
def quiet_loading():
    """transformers' progress bar off for a local load (the switch is global: restored after)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_model(path: str | Path, *, mask_id: int | None = None, dtype: Any = None, device: Any = None) -> Any:
    """Our model class for the checkpoint directory ``path``, picked by config.json's
    ``model_type`` (LLaDA: "llada", Dream: "Dream"; DiffusionGemma, "diffusion_gemma", loads
    through transformers' own class, see :mod:`.diffusion_gemma`), in eval mode, with ``config.mask_token_id``
    and ``eos_token_ids`` set from the family. ``dd.generate(model, ...)`` then decodes with
    the family's logit alignment; ``dd.HFMaskedDiffusionModel(model, kv_cache="dual")`` adds
    Fast-dLLM's key-value cache. ``device``: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``,
    ``"cuda[:N]"`` or a ``torch.device``; ``dtype``: ``"auto"`` (bfloat16 on a GPU that supports
    it, else float32), ``"float32"``, ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``. Both are
    checked against the machine before any weight is read (default: the checkpoint's dtype, CPU)."""
    target_device = resolve_device(device) if device is not None else None
    target_dtype = resolve_dtype(dtype, target_device or torch.device("cpu")) if dtype is not None else None
    path = Path(path)
    config = read_config(path)
    if config.get("model_type") == diffusion_gemma.MODEL_TYPE:  # transformers' own class; no [MASK]
        if mask_id is not None:
            raise ConfigError(f"{path}: mask_id={mask_id}, but DiffusionGemma is a uniform-noise model without a "
                              f"mask token; drop mask_id (--mask-id)")
        return diffusion_gemma.load_diffusion_gemma(path, dtype=target_dtype, device=target_device)
    family, config_object = check_family_checkpoint(path, config)
    config_object.mask_token_id = resolve_mask_id(path, config, family, mask_id)
    with quiet_loading():
        model, info = family.model_class.from_pretrained(path, config=config_object, local_files_only=True,
                                                         output_loading_info=True,
                                                         dtype=target_dtype or "auto")
    _refuse_mismatch(path, family, sorted(info.get("missing_keys", ())), sorted(info.get("unexpected_keys", ())),
                     sorted(str(k) for k in info.get("mismatched_keys", ())))
    model.eos_token_ids = eos_ids(config, family)
    if target_device is not None:
        model = model.to(target_device)
    return model.eval()


def load_tokenizer(path: str | Path, family: Family) -> Any:
    """The checkpoint's tokenizer without remote code, or None when the directory has none.
    Dream's published tokenizer names its own class (``DreamTokenizer``, custom code); it is a
    Qwen2 byte-level BPE over the same vocab.json / merges.txt, so Qwen2's tokenizer reads it."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception:  # custom tokenizer class, or no tokenizer files
        pass
    if family is FAMILIES.get(dream.MODEL_TYPE) and (Path(path) / "vocab.json").is_file():
        from transformers import Qwen2Tokenizer

        try:
            return Qwen2Tokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception:
            return None
    return None


def check_generic_checkpoint(path: str | Path, config: dict[str, Any], trust_remote_code: bool) -> None:
    """Before the generic path (transformers' Auto classes) loads anything: a model_type that
    neither this package nor transformers implements needs the checkpoint's own code."""
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if trust_remote_code or model_type in CONFIG_MAPPING or family_of(config) is not None:
        return
    if config.get("auto_map"):
        raise ModelError(f"{str(path)!r} ships its own modeling code; pass --trust-remote-code to run it "
                         f"(model_type {model_type!r} is not one of the families this package implements: "
                         f"{known_model_types()})")
    raise ModelError(f"{str(path)!r}: model_type {model_type!r} is an unknown family: neither this package "
                     f"({known_model_types()}) nor transformers implements it, and config.json names no code "
                     f"of its own (auto_map); a checkpoint with its own modeling code runs with --trust-remote-code")
