"""Streaming: watch the answer form step by step, committed and provisional tokens apart.

* :class:`StepStreamer`: an observer that calls ``callback(update)`` after every step with a
  :class:`StreamUpdate`: ``dd.generate(..., observers=[StepStreamer(print)])``.
* :func:`iter_decode`: the same as an iterator (the decode runs in a worker thread); the last
  update carries the :class:`~dllm_decoding.GenerateOutput`.

A provisional token is the current proposal (the argmax, or the sample) of an open position of
the current block: what the position would become if committed now.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

import dllm_decoding as dd


@dataclass(frozen=True)
class StreamUpdate:
    """The answer region after one step (``(B, G)`` tensors, ``G = gen_length``).

    ``tokens``: committed tokens where ``committed``, the current proposal where ``provisional``,
    the noise token elsewhere; ``output`` is set on the final update only (``step`` is then the
    number of steps taken and both masks describe the finished answer)."""

    step: int
    block_index: int
    tokens: torch.Tensor
    committed: torch.Tensor
    provisional: torch.Tensor
    output: Any = None

    @property
    def done(self) -> bool:
        return self.output is not None


class StepStreamer(dd.Component):
    """Observer calling ``callback(StreamUpdate)`` after every step and once at the end."""

    name = "step_streamer"
    hook_point = "observer"

    def __init__(self, callback: Callable[[StreamUpdate], Any]) -> None:
        super().__init__()
        if not callable(callback):
            raise dd.InputError(f"StepStreamer: callback must be callable, got {type(callback).__name__}")
        self.callback = callback

    @dd.hookimpl
    def on_step_end(self, state, record):
        p = state.prompt_length
        lo = record.block_start - p
        answer = record.canvas[:, p:]
        committed = ~state.open[:, p:]
        provisional = torch.zeros_like(committed)
        provisional[:, lo:lo + state.block_length] = state.selectable & record.active_rows[:, None]
        tokens = answer.clone()
        tokens[:, lo:lo + state.block_length] = torch.where(state.selectable, record.proposal.tokens,
                                                            state.block_canvas)
        self.callback(StreamUpdate(step=record.step, block_index=record.block_index, tokens=tokens,
                                   committed=committed, provisional=provisional))

    @dd.hookimpl
    def on_decode_end(self, state, output):
        answers = output.answers
        self.callback(StreamUpdate(step=state.step, block_index=state.block_index, tokens=answers,
                                   committed=torch.ones_like(answers, dtype=torch.bool),
                                   provisional=torch.zeros_like(answers, dtype=torch.bool), output=output))


class _Stopped(Exception):
    """Raised in the decode thread when the consumer of :func:`iter_decode` went away."""


def iter_decode(model: Any, prompt_ids: Any, strategy: Any = "credit_decoding", **kwargs: Any) -> Iterator[StreamUpdate]:
    """``dd.generate(model, prompt_ids, strategy, **kwargs)`` as an iterator of
    :class:`StreamUpdate`, one per step and a final one with ``update.output``. An error in the
    decode is raised here; leaving the loop early stops the decode at its next step."""
    updates: queue.Queue = queue.Queue()
    stop = threading.Event()

    def callback(update: StreamUpdate) -> None:
        if stop.is_set():
            raise _Stopped
        updates.put(update)

    def work() -> None:
        try:
            observers = [*kwargs.pop("observers", ()), StepStreamer(callback)]
            dd.generate(model, prompt_ids, strategy, observers=observers, **kwargs)
        except BaseException as exc:  # handed to the consumer
            updates.put(exc)

    worker = threading.Thread(target=work, name="dllm-decoding-stream", daemon=True)
    worker.start()
    try:
        while True:
            item = updates.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.done:
                return
    finally:
        stop.set()
        worker.join()


class TerminalText:
    """Renders updates as text: committed tokens plain, provisional ones dimmed (ANSI) on a
    terminal, in ``[brackets]`` elsewhere; undecided positions as ``_``. ``decode(ids)`` turns
    a list of token ids into text."""

    def __init__(self, decode: Callable[[list[int]], str], *, ansi: bool) -> None:
        self.decode, self.ansi = decode, ansi

    def row(self, update: StreamUpdate, row: int) -> str:
        pieces, run, kind = [], [], None
        for token, committed, provisional in zip(update.tokens[row].tolist(), update.committed[row].tolist(),
                                                 update.provisional[row].tolist()):
            this = "committed" if committed else "provisional" if provisional else "open"
            if this != kind and run:
                pieces.append(self._piece(kind, run))
                run = []
            kind = this
            run.append(token)
        if run:
            pieces.append(self._piece(kind, run))
        return "".join(pieces)

    def _piece(self, kind: str | None, tokens: list[int]) -> str:
        if kind == "open":
            return "_" * len(tokens)
        text = self.decode(tokens)
        if kind == "committed":
            return text
        return f"\x1b[2m{text}\x1b[0m" if self.ansi else f"[{text}]"
