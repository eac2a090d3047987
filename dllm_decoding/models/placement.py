"""Where a model runs and in which dtype: ``device`` / ``dtype`` as users spell them
(``auto|cpu|cuda[:N]``, ``auto|float32|bfloat16|float16``), checked against the machine before
any weight is read, and the device a loaded model lives on. Errors name the command-line
option (``--device``, ``--dtype``); in Python the keyword arguments are ``device=`` / ``dtype=``.

``auto`` is CUDA in bfloat16 when a GPU is visible (float32 on a GPU without bf16 support),
else the CPU in float32. A device or dtype the machine cannot run is one ``ConfigError`` naming
the option and the way out, found by running a tiny matmul and attention in that dtype there
(so the check says what torch on this machine actually does, not what it did some release ago).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..core.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
DTYPE_CHOICES = "auto, " + ", ".join(DTYPES)


def resolve_device(device: Any = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or a
    ``torch.device`` of those kinds; anything the machine lacks is one ConfigError."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device.strip().lower()):
        raise ConfigError(f"--device {device!r}: unknown device; use {DEVICE_CHOICES}")
    device = device.strip().lower()
    if device == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if not torch.backends.cuda.is_built() else "no GPU is visible"
        raise ConfigError(f"--device {device}: CUDA is not available ({why}); use --device "
                          f"cpu, or auto (the GPU when there is one)")
    index = int(device.partition(":")[2] or torch.cuda.current_device())
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"--device {device}: this machine has {count} CUDA device(s), "
                          f"cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    """``auto`` (bfloat16 on a GPU that supports it, else float32), ``float32``, ``bfloat16``,
    ``float16`` or a ``torch.dtype`` of those, checked to run on ``device``."""
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    elif isinstance(dtype, str):
        name = dtype.strip().lower()
    else:
        name = None
    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if bf16 else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: unknown dtype; use {DTYPE_CHOICES}")
    resolved = DTYPES[name]
    if resolved is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported(
            including_emulation=False):
        gpu = torch.cuda.get_device_name(device)
        raise ConfigError(f"--dtype bfloat16: the GPU {device} ({gpu}) has no bfloat16 support; use "
                          f"--dtype float16 or float32")
    _check_runs(resolved, device)
    return resolved


def resolve_placement(device: Any = "auto", dtype: Any = "auto") -> tuple[torch.device, torch.dtype]:
    """``(device, dtype)`` from the users' spellings, both checked before any weight is read."""
    resolved = resolve_device(device)
    return resolved, resolve_dtype(dtype, resolved)


def _check_runs(dtype: torch.dtype, device: torch.device) -> None:
    """A matmul, a softmax and an attention in ``dtype`` on ``device``: what every model needs."""
    try:
        x = torch.ones(1, 1, 4, 8, dtype=dtype, device=device)
        torch.nn.functional.scaled_dot_product_attention(x, x, x)
        torch.softmax(x[0, 0] @ x[0, 0].T, dim=-1)
    except RuntimeError as exc:
        name = str(dtype).removeprefix("torch.")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--dtype {name}: {device} cannot run it ({first}); use --dtype float32") from None


def model_weight(model: Any) -> torch.Tensor | None:
    """The first weight of ``model``, looked up through adapters that wrap a ``.model`` or an
    ``.inner``; None for a model without weights (a function, the toy model)."""
    seen = set()
    while model is not None and id(model) not in seen:
        seen.add(id(model))
        parameters = getattr(model, "parameters", None)
        if callable(parameters):
            try:
                return next(iter(parameters()))
            except (StopIteration, TypeError):
                pass
        model = getattr(model, "model", None) or getattr(model, "inner", None)
    return None


def model_device(model: Any, default: Any = "cpu") -> torch.device:
    """The device ``model``'s weights are on; ``default`` for a model without weights."""
    weight = model_weight(model)
    return torch.device(default) if weight is None else weight.device
