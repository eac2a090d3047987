"""Dream v0 (Dream-org/Dream-v0-*-7B): our own implementation of the published architecture,
loading its checkpoints (``model_type`` "Dream", Qwen2-style weight names such as
``model.layers.0.self_attn.q_proj.weight``) without their modeling code.

A bidirectional Qwen2 transformer: RMSNorm, rotary embeddings, biased q/k/v projections,
grouped-query attention, SwiGLU MLP. Dream was adapted from an autoregressive model and keeps
its alignment: ``logits[:, i]`` predicts token ``i + 1``, so decoding shifts them by one
(the adapter does: ``HFMaskedDiffusionModel`` reads ``logits_predict_next_token``). Left
padding: padded keys are never attended to and positions count real tokens only (Dream's own
generate passes a 4-D bool mask and such positions), so a padded row gives the logits of the
same row alone, and padded positions get finite logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from .parts import (DiffusionLMOutput, KeyValues, RMSNorm, apply_rotary, attend, check_window, init_weights,
                    positions_and_key_mask, rotary_tables)

MODEL_TYPE = "Dream"


class DreamConfig(PretrainedConfig):
    """The published Dream config fields; defaults are Dream-v0-7B's."""

    model_type = MODEL_TYPE

    def __init__(self, vocab_size: int = 152064, hidden_size: int = 3584, intermediate_size: int = 18944,
                 num_hidden_layers: int = 28, num_attention_heads: int = 28, num_key_value_heads: int | None = 4,
                 hidden_act: str = "silu", rms_norm_eps: float = 1e-6, rope_theta: float = 1000000.0,
                 rope_scaling: dict | None = None, use_sliding_window: bool = False,
                 tie_word_embeddings: bool = False, mask_token_id: int | None = None,
                 max_position_embeddings: int = 131072, **kwargs: Any) -> None:
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.hidden_act, self.rms_norm_eps = hidden_act, rms_norm_eps
        # rope_scaling is checked (unsupported_fields: plain RoPE only) and not kept: transformers 5
        # deprecates the attribute
        self.rope_theta, self.use_sliding_window = rope_theta, use_sliding_window
        self.mask_token_id, self.max_position_embeddings = mask_token_id, max_position_embeddings
        kwargs.pop("rope_parameters", None)  # written by transformers 5's save; rope_theta is the truth here
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


def unsupported_fields(config: dict[str, Any]) -> list[str]:
    """What of a Dream ``config.json`` this implementation does not cover (Dream-v0 uses none)."""
    problems = []
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={config['hidden_act']!r} (supported: 'silu')")
    scaling = config.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        problems.append(f"rope_scaling={scaling!r} (supported: null, plain RoPE)")
    if config.get("use_sliding_window"):
        problems.append("use_sliding_window=true (supported: false)")
    return problems


class DreamAttention(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = d // self.heads
        self.q_proj = nn.Linear(d, self.heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.heads * self.head_dim, d, bias=False)

    def forward(self, x, cos, sin, key_mask, cached, window_start):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        att, layer_key_values = attend(q, k, v, key_mask, cached, window_start)
        return self.o_proj(att), layer_key_values


class DreamMLP(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamLayer(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = DreamAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = DreamMLP(config)

    def forward(self, x, cos, sin, key_mask, cached=None, window_start=0):
        att, layer_key_values = self.self_attn(self.input_layernorm(x), cos, sin, key_mask, cached, window_start)
        x = x + att
        return x + self.mlp(self.post_attention_layernorm(x)), layer_key_values


class DreamBackbone(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DreamLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class DreamForDiffusionLM(PreTrainedModel):
    """Dream as a masked-diffusion denoiser: raw logits, ``logits[:, i]`` predicts token
    ``i + 1`` (decoders shift them; ``dd.generate`` does so by itself)."""

    config_class = DreamConfig
    base_model_prefix = "model"
    _no_split_modules = ["DreamLayer"]
    logits_predict_next_token = True  # the family's logit alignment, read by the adapter

    def __init__(self, config: DreamConfig) -> None:
        super().__init__(config)
        self.model = DreamBackbone(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        init_weights(module)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                use_cache: bool = False, key_values: KeyValues | None = None, window_start: int = 0,
                position_ids: torch.Tensor | None = None, **kwargs: Any) -> DiffusionLMOutput:
        """As :meth:`LLaDAForDiffusionLM.forward` (same cache protocol); logits unshifted."""
        config = self.config
        b, t = input_ids.shape
        total = check_window(key_values, window_start, t)
        positions, key_mask = positions_and_key_mask(attention_mask, b, total, input_ids.device, position_ids)
        cos, sin = rotary_tables(positions[:, window_start:window_start + t],
                                 config.hidden_size // config.num_attention_heads, config.rope_theta)
        x = self.model.embed_tokens(input_ids)
        present = []
        for i, layer in enumerate(self.model.layers):
            x, layer_key_values = layer(x, cos, sin, key_mask, None if key_values is None else key_values[i], window_start)
            present.append(layer_key_values)
        x = self.model.norm(x)
        logits = F.linear(x, self.model.embed_tokens.weight) if config.tie_word_embeddings else self.lm_head(x)
        return DiffusionLMOutput(logits=logits, key_values=tuple(present) if use_cache else None)
