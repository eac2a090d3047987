"""Draft-and-verify (the ``draft`` hook): block logits of drafted canvases, kept per row so a
later step that reaches a drafted canvas needs no forward of its own."""

from __future__ import annotations

from typing import Any

import torch

from .errors import InputError, PluginError


class DraftCache:
    """Per row: ``D`` drafted contents of the current block ``(B, D, L)`` and their block
    logits ``(B, D, L, V)``, from one batched forward per drafting row. Emptied at block start
    (outside the block the canvas does not change within a block, so the block's content alone
    identifies a canvas)."""

    def __init__(self) -> None:
        self.contents: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None

    def reset(self) -> None:
        self.contents = self.logits = None

    def lookup(self, block: torch.Tensor) -> torch.Tensor:
        """(B,) long: the index of the draft equal to each row's block, -1 where none is."""
        if self.contents is None:
            return torch.full(block.shape[:1], -1, dtype=torch.long, device=block.device)
        match = (self.contents == block[:, None]).all(dim=-1)  # (B, D)
        return torch.where(match.any(dim=1), match.long().argmax(dim=1), -1)

    def logits_of(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.logits[rows, index[rows]]

    def store(self, rows: torch.Tensor, contents: torch.Tensor, logits: torch.Tensor, batch: int) -> None:
        if self.contents is None or self.contents.shape[1] != contents.shape[1]:
            self.contents = torch.full((batch, *contents.shape[1:]), -1, dtype=torch.long, device=contents.device)
            self.logits = logits.new_zeros(batch, *logits.shape[1:])
        self.contents = self.contents.index_copy(0, rows, contents)
        self.logits = self.logits.index_copy(0, rows, logits)


def check_drafts(comp: Any, value: Any, batch: int, width: int, vocab: int) -> torch.Tensor | None:
    """A draft component's result: None or a long tensor ``(B, D, L)`` of token ids."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or value.dtype != torch.long or value.dim() != 3 \
            or tuple(value.shape[::2]) != (batch, width) or value.shape[1] < 1:
        got = f"a {value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise PluginError(f"component {comp.name!r}: draft must return None or a long tensor (B, D, L) = "
                          f"({batch}, D, {width}) of drafted block contents, got {got}")
    if bool(((value < 0) | (value >= vocab)).any()):
        raise PluginError(f"component {comp.name!r}: drafted a token id outside the vocabulary [0, {vocab})")
    return value


def check_drafting_model(denoiser: Any) -> None:
    """Drafted canvases are forwarded as extra rows: a key-value cache keeps one entry per row."""
    if getattr(denoiser, "kv_cache", None) is not None:
        raise InputError(f"a draft component verifies drafts with extra forwards, which the key-value cache "
                         f"({denoiser.kv_cache!r}) cannot serve; decode without kv_cache")
