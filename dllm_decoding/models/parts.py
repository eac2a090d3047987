"""Pieces shared by our LLaDA and Dream classes: RMSNorm, rotary embeddings, bidirectional
attention over left-padded rows, and the key-value cache protocol the decoders use
(``use_cache=True`` -> ``out.key_values``; ``key_values=..., window_start=s`` computes a window
of positions against them), the same protocol as the reference model's."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import MaskedLMOutput

KeyValues = tuple[tuple[torch.Tensor, torch.Tensor], ...]


@dataclass
class DiffusionLMOutput(MaskedLMOutput):
    """``MaskedLMOutput`` plus every layer's (keys, values) over all positions, when asked for
    (``use_cache=True``): keys after the rotary embedding, values as projected."""

    key_values: KeyValues | None = None


class RMSNorm(nn.Module):
    """Normalised in float32, cast back, then scaled (the order LLaDA and Dream use)."""

    def __init__(self, dim: int, eps: float, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(torch.float32)
        normed = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        out = self.weight * normed
        return out if self.bias is None else out + self.bias


def rotary_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``(b, 1, t, head_dim)`` in float32 for integer ``positions`` ``(b, t)``.
    Computed per forward rather than kept as buffers: ``from_pretrained`` builds a model
    without running ``__init__``'s tensor code on real memory, so non-persistent buffers
    would come back uninitialised (Dream's published code has exactly that problem)."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim
    inv_freq = 1.0 / theta ** exponent
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (b, t, hd/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # (b, 1, t, hd)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(b, h, t, hd)`` in float32 (both families keep RoPE at full precision)."""
    x32 = x.to(torch.float32)
    half = x.shape[-1] // 2
    rotated_half = torch.cat([-x32[..., half:], x32[..., :half]], dim=-1)
    return (x32 * cos + rotated_half * sin).to(x.dtype)


def positions_and_key_mask(attention_mask: torch.Tensor | None, batch: int, total: int,
                           device: torch.device, position_ids: torch.Tensor | None = None,
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RoPE positions ``(b, total)`` counting real tokens only (so left padding does not shift
    a row) and a bool key mask ``(b, 1, 1, total)`` that never attends to padding (None when
    nothing is padded: the attention kernel then runs unmasked, as the published code does).

    A 4-D boolean ``attention_mask`` ``(b, 1, total, total)`` (query x key, as Hugging Face
    models take one) is used as it is, with ``position_ids`` ``(b, total)`` (required then)."""
    if attention_mask is not None and attention_mask.dim() == 4:
        if position_ids is None or tuple(attention_mask.shape) != (batch, 1, total, total):
            raise ValueError(f"a 4-D attention_mask must be (batch, 1, positions, positions) = "
                             f"{(batch, 1, total, total)} and come with position_ids (batch, positions); got "
                             f"{tuple(attention_mask.shape)} and position_ids={position_ids is not None}")
        return position_ids.to(device), attention_mask.to(device=device, dtype=torch.bool)
    if position_ids is not None:
        raise ValueError("position_ids are taken with a 4-D attention_mask only (positions otherwise count "
                         "the real tokens of attention_mask)")
    if attention_mask is None or bool(attention_mask.all()):
        positions = torch.arange(total, device=device).expand(batch, total)
        return positions, None
    if attention_mask.shape != (batch, total):
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected "
                         f"(batch, positions) = {(batch, total)}")
    attention_mask = attention_mask.to(device=device, dtype=torch.long)
    positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return positions, attention_mask.bool()[:, None, None, :]


def check_window(key_values: KeyValues | None, window_start: int, width: int) -> int:
    """The number of positions the forward covers (cached ones included)."""
    if key_values is None:
        return width
    total = key_values[0][0].shape[2]
    if not 0 <= window_start <= total - width:
        raise ValueError(f"window [{window_start}, {window_start + width}) is outside the cached "
                         f"{total} positions")
    return total


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None,
           cached: tuple[torch.Tensor, torch.Tensor] | None, window_start: int,
           ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Bidirectional attention of queries ``(b, h, t, hd)`` over keys/values ``(b, kv_h, t, hd)``
    (grouped-query when ``kv_h < h``). With ``cached`` (this layer's keys and values of every
    position), the ``t`` positions are a window starting at ``window_start`` and attend to the
    cached keys outside it. Returns ``(b, t, h * hd)`` and the (keys, values) over all positions."""
    if cached is not None:
        end = window_start + q.shape[2]
        k = torch.cat([cached[0][:, :, :window_start], k, cached[0][:, :, end:]], dim=2)
        v = torch.cat([cached[1][:, :, :window_start], v, cached[1][:, :, end:]], dim=2)
    groups = q.shape[1] // k.shape[1]
    k_all = k if groups == 1 else k.repeat_interleave(groups, dim=1)
    v_all = v if groups == 1 else v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=key_mask)
    b, h, t, hd = out.shape
    return out.transpose(1, 2).reshape(b, t, h * hd), (k, v)


def init_weights(module: nn.Module) -> None:
    """Random initialisation of a fresh (untrained) model of our families: normal(0.02) linear
    and embedding weights, zero biases, unit norms (as the published modeling code does)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, RMSNorm):
        nn.init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
