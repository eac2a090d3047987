"""The reference masked-diffusion model: LLaDA's architecture in miniature.

Bidirectional transformer (no causal mask), rotary position embeddings, RMSNorm, SwiGLU, untied
output head, a dedicated mask token. Registered with transformers' Auto classes, so
``AutoModelForMaskedLM.from_pretrained(local_dir)`` works offline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

MODEL_TYPE = "dllm_reference"


class ReferenceConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, vocab_size: int = 48, hidden_size: int = 192, num_hidden_layers: int = 4,
                 num_attention_heads: int = 6, intermediate_size: int = 512,
                 max_position_embeddings: int = 128, rope_theta: float = 10000.0,
                 rms_norm_eps: float = 1e-5, mask_token_id: int = 0, pad_token_id: int = 1,
                 eos_token_id: int = 2, initializer_range: float = 0.02, **kwargs) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.mask_token_id = mask_token_id
        self.initializer_range = initializer_range
        kwargs.setdefault("tie_word_embeddings", False)  # LLaDA: untied output head
        super().__init__(pad_token_id=pad_token_id, eos_token_id=eos_token_id, **kwargs)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Block(nn.Module):
    def __init__(self, config: ReferenceConfig) -> None:
        super().__init__()
        d, h = config.hidden_size, config.num_attention_heads
        self.heads, self.head_dim = h, d // h
        self.attn_norm = RMSNorm(d, config.rms_norm_eps)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.mlp_norm = RMSNorm(d, config.rms_norm_eps)
        self.gate_up = nn.Linear(d, 2 * config.intermediate_size, bias=False)
        self.down = nn.Linear(config.intermediate_size, d, bias=False)

    def forward(self, x, cos, sin, key_mask, cached=None, window_start=0):
        """``x`` holds the positions being computed. With ``cached`` (this layer's keys and
        values of every position, from an earlier full forward), they are a window starting at
        ``window_start`` and attend to the cached keys outside it. Returns the new hidden
        states and this layer's (keys, values) over every position."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, self.heads, self.head_dim).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (b, h, t, hd)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if cached is not None:
            end = window_start + t
            k = torch.cat([cached[0][:, :, :window_start], k, cached[0][:, :, end:]], dim=2)
            v = torch.cat([cached[1][:, :, :window_start], v, cached[1][:, :, end:]], dim=2)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # bidirectional
        x = x + self.out(attn.transpose(1, 2).reshape(b, t, d))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up), (k, v)


@dataclass
class ReferenceOutput(MaskedLMOutput):
    """``MaskedLMOutput`` plus every layer's (keys, values) over all positions, when asked for
    (``use_cache=True``)."""

    key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None


class ReferenceModelForMaskedLM(PreTrainedModel):
    config_class = ReferenceConfig
    base_model_prefix = "reference"
    _no_split_modules = ["Block"]

    def __init__(self, config: ReferenceConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)  # untied
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    # RoPE frequencies and the logit bias are computed in forward, not kept as buffers:
    # from_pretrained builds the model without running __init__'s tensor code on real memory,
    # so non-persistent buffers would come back uninitialised.
    def _inv_freq(self, device: torch.device) -> torch.Tensor:
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        exponent = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
        return 1.0 / self.config.rope_theta ** exponent

    def _never(self, device: torch.device) -> torch.Tensor:
        """Logit bias: the model never proposes [MASK] or [PAD]."""
        never = torch.zeros(self.config.vocab_size, device=device)
        never[[self.config.mask_token_id, self.config.pad_token_id]] = -1e4
        return never

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, use_cache: bool = False,
                key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None,
                window_start: int = 0, position_ids: torch.Tensor | None = None, **kwargs) -> ReferenceOutput:
        """``logits[:, i]`` predicts token ``i``. ``attention_mask`` (B, T) of 0/1 marks real
        tokens (left padding): padded keys are never attended to and RoPE positions count real
        tokens only, so a row gives the same logits alone as inside a padded batch. ``labels``
        (optional, -100 = ignore) gives a plain cross-entropy ``loss``.

        Key-value cache (Fast-dLLM's dual cache): ``use_cache=True`` also returns every layer's
        keys and values (``key_values``). Passing them back with ``input_ids`` of a window
        of positions ``[window_start, window_start + L)`` computes only that window, attending
        to the cached keys and values elsewhere; the logits are then ``(B, L, V)`` and
        ``attention_mask``, if given, covers all ``T`` positions. A 4-D boolean ``attention_mask``
        ``(B, 1, T, T)`` (query x key) with ``position_ids`` ``(B, T)`` sets who attends to whom
        and the positions directly (a forward with extra positions, as WINO's shadow block)."""
        b, t = input_ids.shape
        total = t if key_values is None else key_values[0][0].shape[2]
        if key_values is not None and not 0 <= window_start <= total - t:
            raise ValueError(f"window [{window_start}, {window_start + t}) is outside the cached "
                             f"{total} positions")
        if attention_mask is not None and attention_mask.dim() == 4:
            if position_ids is None or key_values is not None or tuple(attention_mask.shape) != (b, 1, t, t):
                raise ValueError(f"a 4-D attention_mask must be (batch, 1, positions, positions) = {(b, 1, t, t)} "
                                 f"and come with position_ids, without a cache; got {tuple(attention_mask.shape)}")
            positions = position_ids.to(device=input_ids.device, dtype=torch.float32)
            key_mask = attention_mask.to(device=input_ids.device, dtype=torch.bool)
        else:
            if position_ids is not None:
                raise ValueError("position_ids are taken with a 4-D attention_mask only")
            if attention_mask is None:
                attention_mask = torch.ones(b, total, dtype=torch.long, device=input_ids.device)
            attention_mask = attention_mask.to(device=input_ids.device, dtype=torch.long)
            # positions count real tokens only, so left padding does not shift them
            positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0).to(torch.float32)
            positions = positions[:, window_start:window_start + t]
            key_mask = attention_mask.bool()[:, None, None, :]  # (b, 1, 1, T): never attend to padding
        angles = positions[:, None, :, None] * self._inv_freq(input_ids.device)  # (b, 1, t, hd/2)
        # RoPE in float32, applied in the weights' dtype: bf16 / fp16 models stay in their dtype
        weight_dtype = self.embed.weight.dtype
        cos, sin = angles.cos().to(weight_dtype), angles.sin().to(weight_dtype)
        x = self.embed(input_ids)
        present = []
        for i, layer in enumerate(self.layers):
            cached = None if key_values is None else key_values[i]
            x, layer_key_values = layer(x, cos, sin, key_mask, cached, window_start)
            present.append(layer_key_values)
        logits = self.lm_head(self.norm(x)) + self._never(x.device)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return ReferenceOutput(loss=loss, logits=logits, key_values=tuple(present) if use_cache else None)


AutoConfig.register(MODEL_TYPE, ReferenceConfig, exist_ok=True)
AutoModelForMaskedLM.register(ReferenceConfig, ReferenceModelForMaskedLM, exist_ok=True)
