"""The project's own small masked-diffusion reference model, shipped as package data.

>>> from dllm_decoding.reference import load_reference_model
>>> model, tokenizer = load_reference_model()          # the shipped checkpoint, eval mode, offline

Importing this package registers the ``dllm_reference`` model type with transformers' Auto
classes, so ``AutoModelForMaskedLM.from_pretrained(dir)`` and ``AutoTokenizer.from_pretrained(dir)``
work on any saved checkpoint, offline.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..core.errors import ModelError
from ..models.families import quiet_loading
from .modeling import MODEL_TYPE, ReferenceConfig, ReferenceModelForMaskedLM

__all__ = ["MODEL_TYPE", "REQUIRED_FILES", "ReferenceConfig", "ReferenceModelForMaskedLM", "checkpoint_dir",
           "load_reference_model"]

#: files a checkpoint directory must hold
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def checkpoint_dir() -> Path:
    """The checkpoint shipped inside the package (package data; works from a wheel)."""
    return Path(str(resources.files(__name__).joinpath("checkpoint")))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"



def load_reference_model(path: str | Path | None = None):
    """``(model, tokenizer)`` from ``path`` (default: the shipped checkpoint), model in eval mode,
    never touching the network. Every failure is one :class:`~dllm_decoding.ModelError` naming
    the path and what is wrong."""
    from transformers import AutoTokenizer

    where = Path(path) if path is not None else checkpoint_dir()
    if not where.is_dir():
        raise ModelError(f"reference checkpoint {str(where)!r} is not a directory")
    missing = [name for name in REQUIRED_FILES if not (where / name).is_file()]
    if missing:
        raise ModelError(f"reference checkpoint {str(where)!r} is missing {', '.join(missing)}")
    try:
        config = json.loads((where / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{str(where / 'config.json')!r} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise ModelError(f"{str(where)!r} holds a model of type {kind!r}, not {MODEL_TYPE!r}: "
                         "it is not a dllm-decoding reference checkpoint")
    weights = where / "model.safetensors"
    try:
        with quiet_loading():  # a 7 MB local load: a bar is only noise on the CLI's stderr
            model, info = ReferenceModelForMaskedLM.from_pretrained(where, local_files_only=True,
                                                                    output_loading_info=True)
    except Exception as exc:  # safetensors header / shape errors: name the file and the cause
        raise ModelError(f"cannot load the weights in {str(weights)!r}: {_first_line(exc)}") from None
    problems = [f"{kind.replace('_', ' ')}: {', '.join(sorted(map(str, keys))[:4])}"
                for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") if (keys := info.get(kind))]
    if problems:
        raise ModelError(f"cannot load the weights in {str(weights)!r}: they do not fit config.json "
                         f"({'; '.join(problems)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
    except Exception as exc:
        raise ModelError(f"cannot load the tokenizer in {str(where)!r}: {_first_line(exc)}") from None
    cfg = model.config
    ids = {"vocab size": (len(tokenizer), cfg.vocab_size),
           "mask id": (tokenizer.mask_token_id, cfg.mask_token_id),
           "pad id": (tokenizer.pad_token_id, cfg.pad_token_id),
           "eos id": (tokenizer.eos_token_id, cfg.eos_token_id)}
    wrong = [f"{k}: tokenizer {a} vs model {b}" for k, (a, b) in ids.items() if a != b]
    if wrong:
        raise ModelError(f"the tokenizer in {str(where)!r} does not match the model ({'; '.join(wrong)})")
    return model.eval(), tokenizer
