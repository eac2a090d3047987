"""Checks of what ``generate`` is given, before any work: prompts and their attention mask."""

from __future__ import annotations

from typing import Any

import torch

from .errors import InputError


def check_prompt(prompt_ids: Any, attention_mask: Any, mask_id: int | None,
                  vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids the model sees, attention mask, ids as given)``: padded positions hold a harmless
    valid id for the model, while the output keeps the caller's padding ids."""
    if isinstance(prompt_ids, (list, tuple)):
        try:
            prompt_ids = torch.tensor(prompt_ids, device="cpu")  # a list: decode on the CPU; dtype checked below
        except (TypeError, ValueError) as exc:
            raise InputError(f"prompt_ids: cannot make a tensor from the given list ({exc}); "
                             f"pass a LongTensor (batch, prompt_length), left-padded") from None
    if not isinstance(prompt_ids, torch.Tensor):
        raise InputError(f"prompt_ids must be a LongTensor (batch, prompt_length), got "
                         f"{type(prompt_ids).__name__}")
    if prompt_ids.dim() == 1:
        prompt_ids = prompt_ids[None]
    if prompt_ids.dim() != 2:
        raise InputError(f"prompt_ids must have shape (batch, prompt_length), got {tuple(prompt_ids.shape)}")
    if prompt_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or prompt_ids.dtype == torch.bool:
        raise InputError(f"prompt_ids must hold integer token ids, got dtype {prompt_ids.dtype}")
    prompt_ids = prompt_ids.to(torch.long)
    if prompt_ids.shape[0] == 0:
        raise InputError("prompt_ids is an empty batch (0 rows); pass at least one prompt")
    if prompt_ids.shape[1] == 0:
        raise InputError("prompt_ids has no tokens; pass at least one prompt token per row")
    if attention_mask is None:
        real = None
        attention_mask = torch.ones_like(prompt_ids)
    else:
        attention_mask, padded = _check_attention_mask(attention_mask, prompt_ids)
        real = attention_mask.bool() if padded else None
    bad = (prompt_ids < 0) | (prompt_ids >= vocab_size)
    if mask_id is not None:
        bad = bad | (prompt_ids == mask_id)
    if real is not None:
        bad = bad & real
    if bool(bad.any()):  # one check on the common path; the details only on failure
        row, column = (int(i) for i in bad.nonzero()[0])
        token = int(prompt_ids[row, column])
        if token == mask_id:
            raise InputError(f"prompt_ids row {row} contains the mask token (id {mask_id}); prompts "
                             f"must not contain [MASK] (the loop would treat it as noise)")
        raise InputError(f"prompt_ids contains token id {token}, outside the model's vocabulary "
                         f"[0, {vocab_size})")
    given = prompt_ids
    if real is not None:  # padded positions hold a harmless valid id, never the mask token
        fill = 0 if mask_id != 0 else 1
        prompt_ids = torch.where(real, prompt_ids, torch.full_like(prompt_ids, fill))
    return prompt_ids, attention_mask, given


def _check_attention_mask(attention_mask: Any, prompt_ids: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The mask as a long tensor on the prompt's device, and whether it pads anything."""
    shape = tuple(prompt_ids.shape)
    try:
        attention_mask = torch.as_tensor(attention_mask, device=prompt_ids.device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"attention_mask: expected a 0/1 tensor of the prompt's shape {shape}, got "
                         f"{type(attention_mask).__name__} {attention_mask!r:.60} ({exc})") from None
    if attention_mask.dim() == 1:
        attention_mask = attention_mask[None]
    if tuple(attention_mask.shape) != shape:
        raise InputError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected the "
                         f"prompt's shape {shape}")
    if attention_mask.dtype == torch.bool:
        attention_mask = attention_mask.long()
    if attention_mask.is_floating_point() or attention_mask.is_complex():
        raise InputError(f"attention_mask must hold integers 0 (padding) and 1 (token), got dtype {attention_mask.dtype}")
    if bool((attention_mask == 1).all()):  # no padding, the common case: one check
        return attention_mask.to(torch.long), False
    binary = (attention_mask == 0) | (attention_mask == 1)
    attention_mask = attention_mask.to(torch.long)
    left_padded = attention_mask.diff(dim=1) >= 0
    has_token = attention_mask[:, -1] == 1  # left padding: a row with a token ends with one
    if bool(binary.all() & left_padded.all() & has_token.all()):  # one check on the padded path
        return attention_mask, True
    if not bool(binary.all()):
        raise InputError("attention_mask must contain only 0 (padding) and 1 (token)")
    if not bool(left_padded.all()):
        raise InputError("attention_mask must be left padding (zeros before ones in each row), "
                         "as LLaDA's generate expects")
    raise InputError("attention_mask has a row with no prompt token")
