"""Models by name, as the commands take them: ``reference`` (the shipped checkpoint), ``toy`` (a
plain function) or a local checkpoint directory, with logit perturbations and the key-value
cache applied when asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, ModelError
from ..models import HFMaskedDiffusionModel, PerturbedLogits
from ..models.families import check_generic_checkpoint, family_of, load_tokenizer, read_config
from ..models.diffusion_gemma import MODEL_TYPE as DIFFUSION_GEMMA
from ..models.families import load_model as load_family_model
from ..models.placement import resolve_device, resolve_dtype
from ..models.families import quiet_loading
from ..reference import _first_line, load_reference_model
from ..reference.modeling import MODEL_TYPE
from ..testing import ContextModel


def is_reference_checkpoint(name: str) -> bool:
    """Whether ``name`` is the shipped reference model or a directory holding one (its
    config.json says so), without loading anything."""
    if name == "reference":
        return True
    config = Path(name) / "config.json"
    try:
        return json.loads(config.read_text()).get("model_type") == MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def check_checkpoint_dir(path: str | Path) -> dict[str, Any]:
    """A checkpoint directory's config.json, or one ModelError saying why it is not one."""
    config = Path(path) / "config.json"
    if not config.is_file():
        raise ModelError(f"{str(path)!r} is not a model checkpoint: it has no config.json"
                         + ("" if any(Path(path).iterdir()) else " (the folder is empty)"))
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ModelError(f"{str(config)!r} is not valid JSON ({exc}): the checkpoint is corrupt") from None
    if not isinstance(data, dict):
        raise ModelError(f"{str(config)!r} holds a JSON {type(data).__name__}, not an object: the checkpoint "
                         f"is corrupt")
    return data


def load_model(name: str, *, logit_temperature: float = 1.0, logit_noise: float = 0.0,
               kv_cache: str | None = None, kv_refresh: int | None = None, mask_id: int | None = None,
               shift_logits: bool = False, trust_remote_code: bool = False, device: Any = None,
               dtype: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for ``reference``, ``toy`` (tokenizer None) or a local checkpoint
    directory (the reference architecture, or any Hugging Face masked-diffusion model), its
    logits perturbed when asked (:class:`PerturbedLogits`) and decoded with a key-value cache
    when asked (``HFMaskedDiffusionModel(kv_cache=...)``). ``device`` / ``dtype``: where it runs and in
    which dtype (``auto`` = CUDA in bfloat16 when available, else CPU in float32; see
    :mod:`dllm_decoding.models.placement`; default: the CPU, the checkpoint's dtype), checked before
    any weight loads; the model is moved and cast once, here. The toy model has no weights: it
    follows its prompts' device."""
    device = resolve_device("cpu" if device is None else device)
    dtype = None if dtype is None else resolve_dtype(dtype, device)
    if name == "toy":
        return ContextModel(vocab_size=16), None
    if name != "reference" and not Path(name).is_dir():
        raise ModelError(f"model {name!r}: no such checkpoint directory; give 'reference', 'toy' or the path "
                         f"of a local checkpoint directory")
    if name != "reference":
        check_checkpoint_dir(name)
    if is_reference_checkpoint(name) or not Path(name).is_dir():  # its loader names what is wrong
        model, tokenizer = load_reference_model(None if name == "reference" else name)
    elif read_config(name).get("model_type") == DIFFUSION_GEMMA:
        refused = [flag for flag, given in (("--kv-cache", kv_cache is not None), ("--mask-id", mask_id is not None),
                                            ("--shift-logits", shift_logits),
                                            ("--logit-temperature / --logit-noise",
                                             logit_temperature != 1.0 or bool(logit_noise))) if given]
        if refused:
            raise ConfigError(f"--model {name}: DiffusionGemma is a uniform-noise model with its own encoder cache "
                              f"and no mask token; {', '.join(refused)} appl{'y' if len(refused) > 1 else 'ies'} to "
                              f"masked-diffusion models only: drop {'them' if len(refused) > 1 else 'it'}")
        model = load_family_model(name, device=device, dtype=dtype)
        return model, load_tokenizer(name, None)
    elif (family := family_of(read_config(name))) is not None and not trust_remote_code:
        # LLaDA, Dream: our own classes, no remote code; mask id, EOS ids and logit shift from the family
        model = load_family_model(name, mask_id=mask_id, device=device, dtype=dtype)
        tokenizer = load_tokenizer(name, family)
    else:
        check_generic_checkpoint(name, read_config(name), trust_remote_code)
        model, tokenizer = load_hf_checkpoint(name, trust_remote_code=trust_remote_code)
        if mask_id is None and getattr(model.config, "mask_token_id", None) is None:
            raise ConfigError(f"--model {name}: its config has no mask_token_id; pass --mask-id "
                              f"(the [MASK] token's id, e.g. 126336 for LLaDA)")
    # once, at load (a no-op for a family model, loaded in place)
    model = model.to(device=device, **({} if dtype is None else {"dtype": dtype}))
    if logit_temperature != 1.0 or logit_noise:
        model = PerturbedLogits(model, logit_temperature, logit_noise)
    if kv_cache is not None or mask_id is not None or shift_logits:
        model = HFMaskedDiffusionModel(model, mask_id=mask_id, shift_logits=shift_logits or None,
                                       kv_cache=kv_cache, kv_refresh=kv_refresh)
    return model, tokenizer


def load_hf_checkpoint(path: str, *, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """A local Hugging Face checkpoint, offline: the model through ``AutoModelForMaskedLM`` or,
    when its config maps no masked-LM class (LLaDA and Dream register theirs as ``AutoModel``),
    ``AutoModel``; its tokenizer when the directory has one, else None."""
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    hint = "" if trust_remote_code else " (a checkpoint with its own modeling code needs --trust-remote-code)"
    model, failures = None, []
    with quiet_loading():
        for auto in (AutoModelForMaskedLM, AutoModel):
            try:
                model, info = auto.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code,
                                                   output_loading_info=True)
                break
            except Exception as exc:  # transformers raises ValueError, OSError, ImportError...
                failures.append(f"{auto.__name__}: {_first_line(exc)}")
    if model is None and not trust_remote_code and all("custom code" in f for f in failures):
        raise ModelError(f"{path!r} ships its own modeling code; pass --trust-remote-code to run it")
    if model is None:
        raise ModelError(f"cannot load a model from {path!r}{hint}: {'; '.join(failures)}")
    missing = sorted(info.get("missing_keys", ()))
    if missing:  # transformers fills them with random values: the answers would be noise
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ModelError(f"{path!r}: its weights do not fit its config.json ({type(model).__name__}): missing "
                         f"{shown}; transformers would fill them with random values. Check that config.json's "
                         f"model_type and sizes belong to these weights")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception:  # a checkpoint without tokenizer files decodes --prompt-ids only
        tokenizer = None
    return model.eval(), tokenizer


def compile_model(model: Any, *, backend: str = "inductor") -> Any:
    """The model with its network ``torch.compile``d (``bench --compile``): the adapter around it
    (key-value cache, logit shift) stays as it is, so every strategy decodes it unchanged."""
    import torch

    if isinstance(model, HFMaskedDiffusionModel):
        model.model = torch.compile(model.model, backend=backend, dynamic=True)
        return model
    if isinstance(model, torch.nn.Module):
        return torch.compile(model, backend=backend, dynamic=True)
    raise ConfigError(f"--compile: {type(model).__name__} is not a torch module (the toy model is a plain "
                      f"function); use --model reference or a checkpoint")
