"""A character-level tokenizer for the reference tasks, saved with the checkpoint.

One token per character of :data:`dllm_decoding.tasks.ALPHABET`, after three special tokens
whose ids the model config repeats: ``[MASK]`` = 0, ``[PAD]`` = 1, ``[EOS]`` = 2. No chat template,
no BOS; padding on the left (LLaDA's batched generate). Characters outside the alphabet map to
``[PAD]``; :func:`dllm_decoding.tasks.encode_batch` rejects them before that can happen.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ..tasks import ALPHABET

SPECIAL = ("[MASK]", "[PAD]", "[EOS]")  # ids 0, 1, 2


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate([*SPECIAL, *ALPHABET])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[PAD]"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, mask_token="[MASK]", pad_token="[PAD]",
                                   eos_token="[EOS]", padding_side="left", model_max_length=128)
