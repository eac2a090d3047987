"""LLaDA and LLaDA-1.5 (GSAI-ML/LLaDA-8B-*): our own implementation of the published
architecture, loading its checkpoints (``model_type`` "llada", OLMo-style weight names such as
``model.transformer.blocks.0.q_proj.weight``) without their modeling code.

A bidirectional Llama-style transformer: RMSNorm, rotary embeddings, SwiGLU feed-forward
(``ff_proj`` is the gate, ``up_proj`` the up projection), untied output head ``ff_out`` unless
``weight_tying``. ``logits[:, i]`` predicts token ``i`` (no shift). Padding: the published
Fast-dLLM copy ignores ``attention_mask``; here padded keys are never attended to and positions
count real tokens only, so a left-padded row gives the logits of the same row alone.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from .parts import (DiffusionLMOutput, KeyValues, RMSNorm, apply_rotary, attend, check_window, init_weights,
                    positions_and_key_mask, rotary_tables)

MODEL_TYPE = "llada"


class LLaDAConfig(PretrainedConfig):
    """The published LLaDA config fields (names as in its ``config.json``); defaults are
    LLaDA-8B's."""

    model_type = MODEL_TYPE
    attribute_map = {"hidden_size": "d_model", "num_attention_heads": "n_heads", "num_hidden_layers": "n_layers"}

    def __init__(self, d_model: int = 4096, n_heads: int = 32, n_kv_heads: int | None = None, n_layers: int = 32,
                 mlp_ratio: int = 4, mlp_hidden_size: int | None = 12288, activation_type: str = "silu",
                 block_type: str = "llama", block_group_size: int = 1, rope: bool = True,
                 rope_theta: float = 500000.0, alibi: bool = False, layer_norm_type: str = "rms",
                 rms_norm_eps: float = 1e-5, layer_norm_with_affine: bool = True, bias_for_layer_norm: bool | None = None,
                 attention_layer_norm: bool = False, include_bias: bool = False, include_qkv_bias: bool = False,
                 input_emb_norm: bool = False, scale_logits: bool = False, weight_tying: bool = False,
                 vocab_size: int = 126464, embedding_size: int | None = 126464, max_sequence_length: int = 4096,
                 mask_token_id: int | None = None, multi_query_attention: bool | None = None, **kwargs: Any) -> None:
        self.d_model, self.n_heads, self.n_kv_heads, self.n_layers = d_model, n_heads, n_kv_heads, n_layers
        self.mlp_ratio, self.mlp_hidden_size, self.activation_type = mlp_ratio, mlp_hidden_size, activation_type
        self.block_type, self.block_group_size = block_type, block_group_size
        self.rope, self.rope_theta, self.alibi = rope, rope_theta, alibi
        self.layer_norm_type, self.rms_norm_eps = layer_norm_type, rms_norm_eps
        self.layer_norm_with_affine, self.bias_for_layer_norm = layer_norm_with_affine, bias_for_layer_norm
        self.attention_layer_norm, self.include_bias, self.include_qkv_bias = attention_layer_norm, include_bias, include_qkv_bias
        self.input_emb_norm, self.scale_logits, self.weight_tying = input_emb_norm, scale_logits, weight_tying
        self.vocab_size, self.embedding_size = vocab_size, embedding_size
        self.max_sequence_length, self.mask_token_id = max_sequence_length, mask_token_id
        self.multi_query_attention = multi_query_attention
        kwargs["tie_word_embeddings"] = False  # tying is `weight_tying`, done in forward
        super().__init__(**kwargs)

    @property
    def kv_heads(self) -> int:
        if self.multi_query_attention:
            return 1
        return self.n_kv_heads or self.n_heads

    @property
    def ff_hidden(self) -> int:
        return self.mlp_hidden_size if self.mlp_hidden_size is not None else self.mlp_ratio * self.d_model


def unsupported_fields(config: dict[str, Any]) -> list[str]:
    """What of a LLaDA ``config.json`` this implementation does not cover (LLaDA-8B and
    LLaDA-1.5 use none of it), as ``field=value (supported: ...)``."""
    def get(name: str, default: Any) -> Any:
        value = config.get(name, default)
        return default if value is None else value

    wanted = {"block_type": ("llama",), "activation_type": ("silu",), "layer_norm_type": ("rms",),
              "rope": (True,), "alibi": (False,), "attention_layer_norm": (False,), "block_group_size": (1,),
              "layer_norm_with_affine": (True,)}
    defaults = {"block_type": "sequential", "activation_type": "swiglu", "layer_norm_type": "default", "rope": False,
                "alibi": False, "attention_layer_norm": False, "block_group_size": 1, "layer_norm_with_affine": True}
    return [f"{name}={get(name, defaults[name])!r} (supported: {', '.join(map(repr, ok))})"
            for name, ok in wanted.items() if get(name, defaults[name]) not in ok]


class LLaDABlock(nn.Module):
    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        d, head_dim = config.d_model, config.d_model // config.n_heads
        bias, qkv_bias = config.include_bias, config.include_bias or config.include_qkv_bias
        norm_bias = config.include_bias if config.bias_for_layer_norm is None else config.bias_for_layer_norm
        self.heads, self.kv_heads, self.head_dim, self.theta = config.n_heads, config.kv_heads, head_dim, config.rope_theta
        self.attn_norm = RMSNorm(d, config.rms_norm_eps, norm_bias)
        self.q_proj = nn.Linear(d, d, bias=qkv_bias)
        self.k_proj = nn.Linear(d, self.kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d, self.kv_heads * head_dim, bias=qkv_bias)
        self.attn_out = nn.Linear(d, d, bias=bias)
        self.ff_norm = RMSNorm(d, config.rms_norm_eps, norm_bias)
        self.ff_proj = nn.Linear(d, config.ff_hidden, bias=bias)  # the gate
        self.up_proj = nn.Linear(d, config.ff_hidden, bias=bias)
        self.ff_out = nn.Linear(config.ff_hidden, d, bias=bias)

    def forward(self, x, cos, sin, key_mask, cached=None, window_start=0):
        b, t, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        att, layer_key_values = attend(q, k, v, key_mask, cached, window_start)
        x = x + self.attn_out(att)
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h)), layer_key_values


class LLaDABackbone(nn.Module):
    """Holds ``transformer`` so that parameter names are the published ones."""

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        modules: dict[str, nn.Module] = {
            "wte": nn.Embedding(config.embedding_size or config.vocab_size, config.d_model),
            "blocks": nn.ModuleList(LLaDABlock(config) for _ in range(config.n_layers)),
            "ln_f": RMSNorm(config.d_model, config.rms_norm_eps,
                            config.include_bias if config.bias_for_layer_norm is None else config.bias_for_layer_norm),
        }
        if not config.weight_tying:
            modules["ff_out"] = nn.Linear(config.d_model, config.embedding_size or config.vocab_size,
                                          bias=config.include_bias)
        self.transformer = nn.ModuleDict(modules)


class LLaDAForDiffusionLM(PreTrainedModel):
    """LLaDA as a masked-diffusion denoiser: ``logits[:, i]`` predicts token ``i``."""

    config_class = LLaDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["LLaDABlock"]
    logits_predict_next_token = False  # the family's logit alignment, read by the adapter

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__(config)
        self.model = LLaDABackbone(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        init_weights(module)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.transformer.wte

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                use_cache: bool = False, key_values: KeyValues | None = None, window_start: int = 0,
                position_ids: torch.Tensor | None = None, **kwargs: Any) -> DiffusionLMOutput:
        """``attention_mask`` (B, T) of 0/1 marks real tokens (left padding). Key-value cache:
        ``use_cache=True`` also returns every layer's keys and values; passing them back with
        ``input_ids`` of the window ``[window_start, window_start + L)`` computes only that
        window against them (logits ``(B, L, V)``; ``attention_mask`` then covers all positions).
        A 4-D boolean ``attention_mask`` ``(B, 1, T, T)`` with ``position_ids`` ``(B, T)`` sets
        who attends to whom and the positions directly (a forward with extra positions)."""
        config, transformer = self.config, self.model.transformer
        b, t = input_ids.shape
        total = check_window(key_values, window_start, t)
        positions, key_mask = positions_and_key_mask(attention_mask, b, total, input_ids.device, position_ids)
        cos, sin = rotary_tables(positions[:, window_start:window_start + t], config.d_model // config.n_heads,
                                 config.rope_theta)
        x = transformer.wte(input_ids)
        if config.input_emb_norm:
            x = x * config.d_model ** 0.5
        present = []
        for i, block in enumerate(transformer.blocks):
            x, layer_key_values = block(x, cos, sin, key_mask, None if key_values is None else key_values[i], window_start)
            present.append(layer_key_values)
        x = transformer.ln_f(x)
        logits = F.linear(x, transformer.wte.weight) if config.weight_tying else transformer.ff_out(x)
        if config.scale_logits:
            logits = logits / math.sqrt(config.d_model)
        logits = logits[..., :config.vocab_size]  # embedding_size may pad the vocabulary
        return DiffusionLMOutput(logits=logits, key_values=tuple(present) if use_cache else None)
