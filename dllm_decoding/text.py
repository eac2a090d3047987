"""Text in, text out: prompts as users write them (a string, or a conversation of chat messages),
formatted with the tokenizer's chat template when it has one, encoded as one left-padded batch,
decoded with a strategy, and the answers decoded back to text, each ended at its first EOS.

>>> import dllm_decoding as dd
>>> model = dd.load_model("LLaDA-8B-Instruct", device="auto", dtype="auto")
>>> texts = dd.generate_text(model, tokenizer, ["What is 12 * 7?", "Name a prime."],
...                          strategy="fast_dllm_threshold", gen_length=128, block_length=32).texts

Part of the public API's layer: it uses only the core's ``generate`` and a tokenizer's methods
(``apply_chat_template``, ``encode``, ``decode``), so any Hugging Face tokenizer works.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch

from .core.errors import ConfigError, InputError
from .core.loop import generate
from .core.state import GenerateOutput
from .models.placement import model_device

#: a prompt: plain text, or a conversation [{"role": "user", "content": "..."}, ...]
Prompt = Union[str, Sequence[Mapping[str, str]]]


@dataclass
class TextOutput:
    """``texts[i]``: row ``i``'s answer as text (up to its first EOS, special tokens dropped);
    ``prompts[i]``: the text row ``i`` was decoded from (chat template applied); ``output``: the
    decode itself (``sequences``, ``nfe``, ...); ``eos_ids``: the ids that end an answer."""

    texts: list[str]
    prompts: list[str]
    output: GenerateOutput
    eos_ids: tuple[int, ...]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def model_eos_ids(model: Any) -> tuple[int, ...]:
    """The EOS ids ``dd.load_model`` set on a LLaDA / Dream model (``eos_token_ids``), looked up
    through adapters (``.model``, ``.inner``); () for any other model."""
    seen = set()
    while model is not None and id(model) not in seen:
        seen.add(id(model))
        ids = getattr(model, "eos_token_ids", None)
        if ids:
            return tuple(int(i) for i in ids)
        model = getattr(model, "model", None) or getattr(model, "inner", None)
    return ()


def format_prompts(tokenizer: Any, prompts: Prompt | Sequence[Prompt], chat: bool | None = None) -> list[str]:
    """Each prompt as the text the model reads. ``chat``: apply the tokenizer's chat template
    (a user turn and the assistant's generation prompt); None = when the tokenizer has one.
    A conversation needs the template; an empty prompt is an error naming it."""
    items = _as_list(prompts)
    if chat is None:
        chat = has_chat_template(tokenizer)
    elif chat and not has_chat_template(tokenizer):
        raise ConfigError("chat template asked for (--chat, chat=True), but the tokenizer has none (no "
                          "chat_template): encode the text as it is with --no-chat (chat=False), or use a "
                          "tokenizer that has one (an Instruct checkpoint's)")
    texts = []
    for number, item in enumerate(items, start=1):
        if isinstance(item, str):
            if not item.strip():
                raise InputError(f"prompt {number} is empty; give some text")
            if not chat:
                texts.append(item)
                continue
            messages = [{"role": "user", "content": item}]
        else:
            messages = _check_messages(item, number)
            if not chat:
                raise ConfigError(f"prompt {number} is a conversation (messages); it needs the chat template, "
                                  f"so not --no-chat (chat=False)" + ("" if has_chat_template(tokenizer) else
                                                                      ", and a tokenizer that has one"))
        texts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    return texts


def encode_prompts(tokenizer: Any, texts: Sequence[str], device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)``: the texts encoded as they are (no special tokens added: a chat
    template writes its own), left-padded into one batch on ``device``."""
    rows = [list(tokenizer.encode(text, add_special_tokens=False)) for text in texts]
    for number, row in enumerate(rows, start=1):
        if not row:
            raise InputError(f"prompt {number} is empty after tokenization; give at least one token")
    return left_pad(rows, padding_id(tokenizer), device)


def padding_id(tokenizer: Any) -> int:
    """The id left padding is filled with: the tokenizer's pad id, else its EOS id, else 0 (any
    real token: the attention mask hides it)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows as one left-padded batch ``(ids, attention_mask)`` (long, ``(B, P)``) on
    ``device``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(list(row), dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def answer_text(tokenizer: Any, ids: Sequence[int], eos_ids: Sequence[int] = ()) -> str:
    """An answer's ids as text: up to its first EOS, special tokens dropped."""
    ids = [int(i) for i in ids]
    ends = [ids.index(e) for e in eos_ids if e in ids]
    return tokenizer.decode(ids[:min(ends)] if ends else ids, skip_special_tokens=True)


def generate_text(model: Any, tokenizer: Any, prompts: Prompt | Sequence[Prompt],
                  strategy: Any = "credit_decoding", *, chat: bool | None = None, eos_id: Any = "auto",
                  device: Any = None, decode: Callable[[list[int]], str] | None = None,
                  **generate_kwargs: Any) -> TextOutput:
    """Decode text prompts as one left-padded batch and return the answers as text.

    :param prompts: a string, a conversation (``[{"role": "user", "content": ...}, ...]``) or a
        list of either; each is one row.
    :param chat: apply the tokenizer's chat template; None (default) = when it has one.
    :param eos_id: early stop at this token id (``dd.generate``'s ``eos_id``); ``"auto"`` = the
        model's EOS ids when ``dd.load_model`` set them (LLaDA, Dream: config.json's
        eos_token_id and the family's end-of-turn ids), else off; None = off. Answers end at the first of all the model's EOS ids
        (and of ``eos_id``) either way.
    :param device: where the prompts go; default: the model's device.
    :param decode: ids -> text for the answers (default: up to the first EOS, special tokens dropped).
    :param generate_kwargs: ``gen_length``, ``block_length``, ``overrides``, ``seed``, ... as
        ``dd.generate`` takes them.
    """
    for key in ("attention_mask", "prompt_ids"):
        if key in generate_kwargs:
            raise InputError(f"generate_text builds {key} from the prompts; drop {key}= (use dd.generate for ids)")
    texts = format_prompts(tokenizer, prompts, chat)
    ids, mask = encode_prompts(tokenizer, texts, model_device(model) if device is None else device)
    known = model_eos_ids(model)
    if isinstance(eos_id, str):
        if eos_id != "auto":
            raise InputError(f"eos_id={eos_id!r}: give a token id, 'auto' or None")
        eos_id = list(known) if known else None
    out = generate(model, ids, strategy, attention_mask=mask, eos_id=eos_id, **generate_kwargs)
    given = [] if eos_id is None else list(eos_id) if isinstance(eos_id, (list, tuple)) else [eos_id]
    ends = tuple(dict.fromkeys([*known, *(int(t) for t in given)]))
    answers = [decode(row.tolist()) if decode is not None else answer_text(tokenizer, row.tolist(), ends)
               for row in out.answers]
    return TextOutput(texts=answers, prompts=texts, output=out, eos_ids=ends)


def _as_list(prompts: Any) -> list[Any]:
    if isinstance(prompts, str) or _is_messages(prompts):
        return [prompts]
    if isinstance(prompts, Sequence) and prompts:
        return list(prompts)
    raise InputError(f"prompts: give a string, a conversation (a list of {{'role', 'content'}} messages) or a "
                     f"non-empty list of them, got {type(prompts).__name__}" + (" (empty)" if not prompts else ""))


def _is_messages(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and bool(value) and all(
        isinstance(m, Mapping) for m in value)


def _check_messages(messages: Any, number: int) -> list[dict[str, str]]:
    if not _is_messages(messages):
        raise InputError(f"prompt {number}: expected text or a non-empty list of messages "
                         f"{{'role': ..., 'content': ...}}, got {messages!r:.80}")
    checked = []
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise InputError(f"prompt {number}: every message needs a 'role' and a 'content' string, got {dict(m)!r:.80}")
        checked.append({"role": role, "content": content})
    if not any(m["content"].strip() for m in checked):
        raise InputError(f"prompt {number} is empty (every message's content is blank); give some text")
    return checked
