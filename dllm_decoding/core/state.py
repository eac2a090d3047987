"""The data the loop and the plugins share: decode state, proposals, step records, output."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Proposal:
    """What the score hook proposes for every position of the current block of every row.

    ``tokens`` ``(B, L)`` long: the token each block position would take if committed now.
    ``confidence`` ``(B, L)`` float: larger = more certain; selectors rank and threshold it.
    ``logits`` ``(B, L, V)``: the fused block logits the proposal was made from (read-only), for
    selectors that need the whole distribution (entropy bounds, margins).
    (``L`` = ``block_length``; column ``j`` is canvas position ``state.block_start + j``.)
    """

    tokens: torch.Tensor
    confidence: torch.Tensor
    logits: torch.Tensor


@dataclass(frozen=True)
class Extension:
    """Extra positions one forward sees after the canvas (an ``extend`` component's result).

    ``tokens`` ``(B, E)`` long: their tokens. ``positions`` ``(B, E)`` long: the canvas column
    whose position (RoPE) each one takes. ``sees`` ``(B, E, T)`` bool: the canvas columns each
    one attends to (extra positions always attend to one another; padding never). Canvas
    positions never attend to extra ones, so the canvas' logits are those of the plain forward.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    sees: torch.Tensor


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
    generators: list[torch.Generator]  # one per row, on the canvas's device: a row decodes alike alone or in a batch
    eos_id: int | None = None  # the (first) EOS id that fills a finished row
    max_steps_per_block: int = 0  # the hard budget: remask and edit stop, a renoising block ends
    block_index: int = 0
    block_step: int = 0  # steps taken in the current block
    step: int = 0  # steps taken in the whole decode
    active_rows: torch.Tensor | None = None  # (B,) bool: rows decoded in this step
    finished_rows: torch.Tensor | None = None  # (B,) bool: rows done (EOS early stop)
    forwards_per_row: list[int] = field(default_factory=list)  # kept as ints: no tensor op per step
    plugin_state: dict[str, Any] = field(default_factory=dict)
    #: ``(B, E, V)``: this step's logits of an ``extend`` component's extra positions (zeros for
    #: inactive rows); None without one
    extension_logits: Any = None
    #: ``(B, T, V)``: this step's canvas-wide logits as the model returned them (zeros for rows
    #: not forwarded), kept only for an early commit or a component whose ``needs_canvas_logits``
    #: is true (KLASS's answer-wide history); None otherwise. Read-only.
    canvas_logits: Any = None
    _selectable: Any = field(default=None, repr=False, compare=False)
    _left_padding: Any = field(default=None, repr=False, compare=False)

    def uniform(self, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``(B, *shape)`` uniform draws in [0, 1) on the canvas's device, each row from its own
        seeded generator. Rows not active this step get zeros and leave their generator
        untouched, so a row decodes exactly the same alone (with its seed) as inside a batch."""
        out = torch.zeros(self.batch_size, *shape, dtype=dtype, device=self.device)
        for row in self.active_rows.nonzero().flatten().tolist():
            out[row] = torch.rand(shape, generator=self.generators[row], dtype=dtype, device=self.device)
        return out

    @property
    def device(self) -> torch.device:
        """Where the decode runs: every tensor the core and the built-in plugins create is here."""
        return self.canvas.device

    @property
    def nfe(self) -> torch.Tensor:
        """(B,) long: forwards each row has cost so far."""
        return torch.tensor(self.forwards_per_row, dtype=torch.long, device=self.device)

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
    def block_canvas(self) -> torch.Tensor:
        """(B, L) long: the current block's tokens (a view of ``canvas``; read-only)."""
        return self.canvas[:, self.block_start:self.block_end]

    @property
    def selectable(self) -> torch.Tensor:
        """(B, L) bool: open positions of the current block in active rows. (A row is active
        exactly when it has open positions in the block, so this is the block's columns of
        ``open``.) The core replaces ``open`` with a new tensor, never edits it in place, so its
        identity keys the cache; treat the result as read-only."""
        cached = self._selectable
        if cached is None or cached[0] is not self.open or cached[1] != self.block_index:
            value = self.open[:, self.block_start:self.block_end]
            self._selectable = cached = (self.open, self.block_index, value)
        return cached[2]


@dataclass(frozen=True)
class StepRecord:
    """One step as observers see it: block-width ``(B, L)`` tensors for the block that starts
    at canvas column ``block_start``, the whole canvas after the step."""

    step: int
    block_index: int
    block_step: int
    block_start: int
    active_rows: torch.Tensor  # (B,) bool
    proposal: Proposal  # block-width
    commit: torch.Tensor  # (B, L) bool: committed in this step
    reopen: torch.Tensor  # (B, L) bool: sent back to noise in this step
    canvas: torch.Tensor  # (B, T) tokens after this step
    edited: torch.Tensor | None = None  # (B, L) bool: decided tokens replaced in this step (edit hook)
    filled: torch.Tensor | None = None  # (B, T) bool: positions an early commit filled in this step


@dataclass
class GenerateOutput:
    """Result of :func:`dllm_decoding.generate`.

    ``sequences`` ``(B, P + gen_length)`` long, prompt included; ``nfe`` ``(B,)`` long: model
    forwards each row cost (its steps, and its verification forwards with a ``draft``
    component; a step that reached a drafted canvas costs none); ``trace``: a
    :class:`~dllm_decoding.Trace` when ``trace=True`` was asked for; ``stats``:
    ``forward_calls``, the number of batched model calls (the wall-clock cost: rows that
    finished a block wait for the others, so it is at least ``nfe.max()``), and ``steps``.
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
