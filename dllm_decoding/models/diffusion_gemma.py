"""DiffusionGemma (transformers' ``DiffusionGemmaForBlockDiffusion``, native since 5.17) as a
denoiser: a uniform-noise block-diffusion model with an autoregressive encoder.

The model encodes everything before the current block (its *canvas*) into a key-value cache
once per block, then denoises the canvas with a decoder that reads that cache and takes the
previous step's logits as self-conditioning. The session here makes the same model calls, with
the same inputs, as ``DiffusionGemmaForBlockDiffusion.generate`` (transformers 5.24):

- ``initial_noise``: uniformly random tokens, drawn from each row's own generator when its block
  starts (the model has no [MASK]: ``mask_id`` is None);
- ``start_block``: the block must be the model's ``canvas_length``; the block's first forward
  encodes the tokens the cache lacks (the prompt, then the previous block) for the rows still
  decoding, with the reference's position ids (counted from the padded start of the row);
- ``forward``: the decoder on the block, against the cache (sliced to the rows asked for, so a
  row that finished its block stops costing forwards), with the previous step's fused logits
  (``observe_fused``) as self-conditioning; none at a block's first step. Encoder forwards are
  not counted in NFE (as ``generate``'s ``tokens_per_forward`` counts decoder passes only);
  ``session.encoder_calls`` counts them.

The preset ``diffusion_gemma`` (``plugins/uniform_noise.py``) is the reference's sampler; any
other strategy runs on the model too, with the block's noise fixed unless its ``renoise``
component redraws it (``uniform_noise``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..core.denoiser import DecodeSession, Denoiser, register_model_adapter
from ..core.errors import InputError

MODEL_CLASS_NAME = "DiffusionGemmaForBlockDiffusion"
MODEL_TYPE = "diffusion_gemma"


def is_diffusion_gemma(model: Any) -> bool:
    """A ``DiffusionGemmaForBlockDiffusion`` (or a ``torch.compile``d one), by class name: the
    check imports nothing from transformers."""
    module = getattr(model, "_orig_mod", model)
    return any(cls.__name__ == MODEL_CLASS_NAME for cls in type(module).__mro__)


class DiffusionGemmaModel(Denoiser):
    """``DiffusionGemmaForBlockDiffusion`` for the loop: no mask token, uniform noise, blocks of
    ``config.canvas_length``."""

    mask_id = None

    def __init__(self, model: torch.nn.Module) -> None:
        if not is_diffusion_gemma(model):
            raise InputError(f"DiffusionGemmaModel wraps a {MODEL_CLASS_NAME}, got {type(model).__name__}")
        self.model = model.eval() if model.training else model
        config = model.config
        self.vocab_size = int(config.text_config.vocab_size)
        self.canvas_length = self.block_length = int(config.canvas_length)
        self.name = getattr(config, "name_or_path", None) or MODEL_CLASS_NAME

    def start_session(self, attention_mask):
        return DiffusionGemmaSession(self, attention_mask)


class DiffusionGemmaSession(DecodeSession):
    canvas_logits = False  # the decoder computes the canvas (the block) only

    def __init__(self, denoiser: DiffusionGemmaModel, attention_mask: torch.Tensor) -> None:
        super().__init__(denoiser, attention_mask)
        self.cache: Any = None  # the encoder's cache, for the batch rows in cache_rows
        self.cache_rows: list[int] = list(range(attention_mask.shape[0]))
        self.encoded = 0  # canvas columns the cache holds
        self.block: tuple[int, int] | None = None
        self.self_conditioning: torch.Tensor | None = None  # (B, L, V), the embeddings' dtype
        self.views: dict[tuple[int, ...], tuple[Any, Any]] = {}  # rows -> (cache view, decoder masks)
        self.encoder_calls = 0

    def initial_noise(self, batch, length, generators):
        vocab, device = self.denoiser.vocab_size, self.attention_mask.device
        return torch.cat([torch.randint(0, vocab, (1, length), generator=g, device=device) for g in generators])

    def start_block(self, start, end):
        canvas = self.denoiser.canvas_length
        if end - start != canvas:
            raise InputError(f"block_length={end - start}: DiffusionGemma denoises blocks of its canvas_length "
                             f"({canvas}); pass block_length={canvas} (--block-length {canvas}) and a gen_length "
                             f"that is a multiple of it")
        self.block, self.self_conditioning, self.views = (start, end), None, {}

    def observe_fused(self, logits, rows):
        embeddings = self.denoiser.model.model.decoder.embed_tokens.weight
        logits = logits.to(embeddings.dtype)
        if rows is None:
            self.self_conditioning = logits
            return
        if self.self_conditioning is None:
            self.self_conditioning = logits.new_zeros(self.attention_mask.shape[0], *logits.shape[1:])
        self.self_conditioning = self.self_conditioning.index_copy(0, rows, logits)

    def forward(self, canvas, rows):
        start, end = self.block
        row_list = list(range(self.attention_mask.shape[0])) if rows is None else rows.tolist()
        if self.encoded < start:
            self._encode(canvas[:, self.encoded:start], row_list, start)
        cache, masks = self._view(row_list, canvas[:, start:end])
        model = self.denoiser.model
        self_conditioning = self.self_conditioning
        if self_conditioning is not None and rows is not None:
            self_conditioning = self_conditioning[rows]
        positions = torch.arange(start, end, dtype=torch.int32, device=canvas.device).unsqueeze(0)
        with torch.no_grad():
            out = model(decoder_input_ids=canvas[:, start:end], self_conditioning_logits=self_conditioning,
                        decoder_attention_mask=masks, cache=cache, decoder_position_ids=positions)
        return out.logits

    def _encode(self, new_tokens: torch.Tensor, rows: list[int], start: int) -> None:
        """Append ``new_tokens`` (columns ``[encoded, start)`` of ``rows``) to the encoder cache."""
        model = self.denoiser.model
        if rows != self.cache_rows:  # rows that finished decoding (EOS) leave the cache for good
            if self.cache is not None:
                self.cache.batch_select_indices(self._cache_positions(rows, new_tokens.device))
            self.cache_rows = rows
        if self.cache is None:
            from transformers import DynamicCache

            self.cache = DynamicCache(config=model.config.get_text_config(decoder=True))
        mask = self.attention_mask[rows, :start].bool()
        positions = torch.arange(self.encoded, start, dtype=torch.int32, device=new_tokens.device).unsqueeze(0)
        tokens = new_tokens.clone(memory_format=torch.contiguous_format)
        shape_only = torch.empty((len(rows), tokens.shape[1], 0), dtype=model.dtype, device=tokens.device)
        encoder = model.model.encoder
        with torch.no_grad():
            masks = encoder.create_masks_for_generate(config=model.config, inputs_embeds=shape_only,
                                                      attention_mask=mask, cache=self.cache, position_ids=positions)
            self.cache = encoder(input_ids=tokens, attention_mask=masks, cache=self.cache,
                                 position_ids=positions).cache
        self.encoded = start
        self.encoder_calls += 1

    def _cache_positions(self, rows: list[int], device: torch.device) -> torch.Tensor:
        """Where batch ``rows`` sit in the cache (which holds ``cache_rows``)."""
        return torch.tensor([self.cache_rows.index(r) for r in rows], device=device)

    def _view(self, rows: list[int], block: torch.Tensor) -> tuple[Any, Any]:
        """The cache for ``rows`` (a shallow copy holding their slices when they are fewer than
        the cache's rows) and the decoder's attention masks, made once per block and rows."""
        key = tuple(rows)
        if key in self.views:
            return self.views[key]
        cache = self.cache
        if rows != self.cache_rows:
            cache = copy.copy(self.cache)
            cache.layers = [copy.copy(layer) for layer in self.cache.layers]
            cache.batch_select_indices(self._cache_positions(rows, block.device))
        model = self.denoiser.model
        start = self.block[0]
        mask = torch.nn.functional.pad(self.attention_mask[rows, :start].bool(), (0, block.shape[1]), value=True)
        masks = model.model.decoder.create_diffusion_decoder_attention_mask(
            config=model.config, inputs_embeds=block.unsqueeze(-1), cache=cache, decoder_attention_mask=mask)
        self.views[key] = (cache, masks)
        return cache, masks


@register_model_adapter
def _adapt_diffusion_gemma(model: Any) -> Denoiser | None:
    return DiffusionGemmaModel(model) if is_diffusion_gemma(model) else None


def eos_ids_of(model: Any) -> tuple[int, ...]:
    """The EOS ids ``generate()`` stops at: the generation config's, else the text config's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = model.config.text_config.eos_token_id
    if ids is None:
        return ()
    return (int(ids),) if isinstance(ids, int) else tuple(int(i) for i in ids)


def load_diffusion_gemma(path: Any, *, dtype: torch.dtype | None = None, device: torch.device | None = None) -> Any:
    """A local DiffusionGemma checkpoint through transformers' own class (no remote code), in
    eval mode, with ``eos_token_ids`` set (``dd.generate_text`` stops there)."""
    try:
        from transformers import DiffusionGemmaForBlockDiffusion
    except ImportError:
        import transformers

        raise InputError(f"{str(path)!r} is a DiffusionGemma checkpoint; transformers {transformers.__version__} "
                         f"has no DiffusionGemmaForBlockDiffusion (it is native since 5.17): pip install "
                         f"'transformers>=5.17'") from None
    from .families import quiet_loading

    with quiet_loading():
        model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(path), local_files_only=True,
                                                                dtype=dtype or "auto")
    model.eos_token_ids = eos_ids_of(model)
    if device is not None:
        model = model.to(device)
    return model.eval()
