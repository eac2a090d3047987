"""The data the loop and the plugins share: decode state, proposals, step records, output."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Proposal:
    """What the score hook proposes for every position of every row.

    ``tokens`` ``(B, T)`` long: the token each position would take if committed now.
    ``confidence`` ``(B, T)`` float: larger = more certain; selectors rank and threshold it.
    The built-in scorers fill it for the current block only (-inf elsewhere).
    ``logits`` ``(B, T, V)``: the fused logits the proposal was made from (read-only), for
    selectors that need the whole distribution (entropy bounds, margins).
    """

    tokens: torch.Tensor
    confidence: torch.Tensor
    logits: torch.Tensor


@dataclass
class DecodeState:
    """Everything one decode knows. Built by the core; plugins read it and keep their memory in
    ``plugin_state``. The core alone writes ``canvas``, ``open`` and the counters."""

    canvas: torch.Tensor  # (B, T) long: prompt + current answer tokens
    open: torch.Tensor  # (B, T) bool: position still undecided (noise)
    attention_mask: torch.Tensor  # (B, T) long: 0 on left padding
    prompt_length: int  # P: padded prompt length; the answer region is [P, T)
    gen_length: int
    block_length: int
    steps_per_block: int  # the schedule's step budget per block (LLaDA's steps // num_blocks)
    mask_id: int | None
    vocab_size: int
    temperature: float
    generators: list[torch.Generator]  # one per row: a row decodes alike alone or in a batch
    eos_id: int | None = None
    block_index: int = 0
    block_step: int = 0  # steps taken in the current block
    step: int = 0  # steps taken in the whole decode
    active_rows: torch.Tensor | None = None  # (B,) bool: rows decoded in this step
    finished_rows: torch.Tensor | None = None  # (B,) bool: rows done (EOS early stop)
    forwards_per_row: list[int] = field(default_factory=list)  # kept as ints: no tensor op per step
    plugin_state: dict[str, Any] = field(default_factory=dict)
    _block_mask: Any = field(default=None, repr=False, compare=False)
    _selectable: Any = field(default=None, repr=False, compare=False)
    _left_padding: Any = field(default=None, repr=False, compare=False)

    def uniform(self, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``(B, *shape)`` uniform draws in [0, 1), each row from its own seeded generator.
        Rows not active this step get zeros and leave their generator untouched, so a row
        decodes exactly the same alone (with its seed) as inside a batch."""
        out = torch.zeros(self.batch_size, *shape, dtype=dtype)
        for row in self.active_rows.nonzero().flatten().tolist():
            out[row] = torch.rand(shape, generator=self.generators[row], dtype=dtype)
        return out

    @property
    def nfe(self) -> torch.Tensor:
        """(B,) long: forwards each row has cost so far."""
        return torch.tensor(self.forwards_per_row, dtype=torch.long)

    @property
    def left_padding(self) -> list[int]:
        """Padding columns at the start of each row (from ``attention_mask``; fixed per decode)."""
        if self._left_padding is None:
            self._left_padding = (self.attention_mask == 0).sum(dim=1).tolist()
        return self._left_padding

    @property
    def batch_size(self) -> int:
        return self.canvas.shape[0]

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def block_start(self) -> int:
        return self.prompt_length + self.block_index * self.block_length

    @property
    def block_end(self) -> int:
        return self.block_start + self.block_length

    @property
    def block_mask(self) -> torch.Tensor:
        """(B, T) bool: positions of the current block (same columns for every row). Built once
        per block; treat it as read-only."""
        cached = self._block_mask  # (block_index, mask); shape and prompt length are fixed per decode
        if cached is None or cached[0] != self.block_index:
            mask = torch.zeros_like(self.open)
            mask[:, self.block_start : self.block_end] = True
            self._block_mask = cached = (self.block_index, mask)
        return cached[1]

    @property
    def selectable(self) -> torch.Tensor:
        """(B, T) bool: open positions of the current block in active rows. (A row is active
        exactly when it has open positions in the block, so this is ``open & block_mask``.)
        Computed once per step: the core replaces ``open`` with a new tensor, never edits it in
        place, so its identity keys the cache; treat the result as read-only."""
        cached = self._selectable
        if cached is None or cached[0] is not self.open or cached[1] != self.block_index:
            value = self.open & self.block_mask
            self._selectable = cached = (self.open, self.block_index, value)
        return cached[2]


@dataclass(frozen=True)
class StepRecord:
    """One step as observers see it (all tensors ``(B, T)`` unless noted)."""

    step: int
    block_index: int
    block_step: int
    active_rows: torch.Tensor  # (B,) bool
    proposal: Proposal
    commit: torch.Tensor  # bool: committed in this step
    reopen: torch.Tensor  # bool: sent back to noise in this step
    canvas: torch.Tensor  # tokens after this step


@dataclass
class GenerateOutput:
    """Result of :func:`dllm_decoding.generate`.

    ``sequences`` ``(B, P + gen_length)`` long, prompt included; ``nfe`` ``(B,)`` long: model
    forwards each row cost (the steps it took part in); ``trace``: a
    :class:`~dllm_decoding.Trace` when ``trace=True`` was asked for; ``stats``:
    ``forward_calls``, the number of batched model calls (the wall-clock cost: rows that
    finished a block wait for the others, so it is at least ``nfe.max()``).
    """

    sequences: torch.Tensor
    nfe: torch.Tensor
    prompt_length: int
    gen_length: int
    trace: Any = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def answers(self) -> torch.Tensor:
        """``(B, gen_length)``: the generated region only."""
        return self.sequences[:, self.prompt_length :]

    @property
    def tokens_per_forward(self) -> torch.Tensor:
        """``(B,)`` float: generated tokens per forward (TPF)."""
        return self.gen_length / self.nfe.clamp(min=1).to(torch.float64)
