"""Load the shipped (or any saved) reference checkpoint, with one clear error per failure."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..errors import ModelError
from .modeling import MODEL_TYPE, ReferenceModelForMaskedLM

REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


def checkpoint_dir() -> Path:
    """The checkpoint shipped inside the package."""
    return Path(str(resources.files("dllm_decoding.reference") / "checkpoint"))


def load_reference_model(path: str | Path | None = None):
    """``(model, tokenizer)`` from ``path`` (default: the shipped checkpoint), in eval mode,
    without network access."""
    from transformers import AutoTokenizer

    where = Path(path) if path is not None else checkpoint_dir()
    if not where.is_dir():
        raise ModelError(f"reference checkpoint {str(where)!r} is not a directory")
    missing = [name for name in REQUIRED if not (where / name).is_file()]
    if missing:
        raise ModelError(f"reference checkpoint {str(where)!r} is missing {', '.join(missing)}")
    try:
        config = json.loads((where / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{str(where / 'config.json')!r} is not valid JSON: {exc}") from None
    if config.get("model_type") != MODEL_TYPE:
        raise ModelError(f"{str(where)!r} holds a model of type {config.get('model_type')!r}, not "
                         f"{MODEL_TYPE!r}: it is not a dllm-decoding reference checkpoint")
    try:
        model = ReferenceModelForMaskedLM.from_pretrained(where, local_files_only=True)
    except Exception as exc:  # safetensors / shape errors: name the file and the cause
        raise ModelError(f"cannot load the weights in {str(where / 'model.safetensors')!r}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
    except Exception as exc:
        raise ModelError(f"cannot load the tokenizer in {str(where)!r}: {type(exc).__name__}: {exc}") from None
    cfg = model.config
    ids = {"vocab size": (len(tokenizer), cfg.vocab_size),
           "mask id": (tokenizer.mask_token_id, cfg.mask_token_id),
           "pad id": (tokenizer.pad_token_id, cfg.pad_token_id),
           "eos id": (tokenizer.eos_token_id, cfg.eos_token_id)}
    wrong = [f"{k}: tokenizer {a} vs model {b}" for k, (a, b) in ids.items() if a != b]
    if wrong:
        raise ModelError(f"the tokenizer in {str(where)!r} does not match the model ({'; '.join(wrong)})")
    return model.eval(), tokenizer
