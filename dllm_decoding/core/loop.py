"""The core denoising loop: one forward per step, then fuse -> score -> select -> edit ->
remask -> draft (the components are called through :mod:`.pipeline`).

The core, not the plugins, guarantees: prompt tokens never change; commits are restricted to
open positions of the current block of active rows; every active row commits at least one
position per step; blocks finish in order; finished rows stop costing forwards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .arguments import check_decode_size, check_eos_id, check_generate_arguments
from .components import Component
from .config import Strategy, load_strategy
from .denoiser import DecodeSession, as_denoiser, check_logits
from .drafts import DraftCache, check_drafting_model, check_drafts
from .errors import InputError, ModelError, PluginError
from .inputs import check_prompt
from .manager import PluginRegistry, get_registry
from .pipeline import (Pipeline, cached_pipeline, check_committed_tokens, check_mask, check_proposal,
                       check_tokens, tracer)
from .state import DecodeState, Extension, GenerateOutput, Proposal, StepRecord

# --------------------------------------------------------------------------- the loop


def generate(model: Any, prompt_ids: Any, strategy: str | Path | Mapping[str, Any] | Strategy = "credit_decoding",
             *, gen_length: int | None = None, block_length: int | None = None,
             steps: int | None = None, temperature: float | None = None,
             overrides: Mapping[str, Any] | None = None, attention_mask: Any = None,
             eos_id: int | Sequence[int] | None = None, seed: int | Sequence[int] = 0, trace: bool = False,
             observers: Sequence[Component] = (),
             registry: PluginRegistry | None = None) -> GenerateOutput:
    """Decode ``gen_length`` tokens after each prompt with a strategy.

    :param model: a Hugging Face masked-diffusion model, ``dd.as_model(fn, ...)`` or a
        :class:`~dllm_decoding.Denoiser`.
    :param prompt_ids: LongTensor ``(B, P)`` (or ``(P,)``), left-padded when rows differ in length.
    :param strategy: preset name, ``.toml`` path, dict or :class:`Strategy`.
    :param gen_length, block_length, steps, temperature: shortcuts for the overrides of the same name.
    :param overrides: dotted-key overrides, e.g. ``{"select.threshold": 0.8}``.
    :param attention_mask: ``(B, P)`` 0/1, left padding; passed to the model.
    :param eos_id: an EOS token id or a list of them (Instruct models end a turn with any of
        several); when set, a row whose finished blocks contain one stops (no more forwards) and
        the rest of its answer is filled with the first. Off by default.
    :param seed: an int (row ``i`` gets ``seed + i``) or one seed per row. Each row draws from
        its own generator, so row ``i`` of a batch decodes exactly as it does alone with seed
        ``seed[i]``; at temperature 0 deterministic strategies use no randomness.
    :param trace: record every step (``out.trace``); costs nothing when off.
    :param observers: extra observer components (lifecycle hooks only), e.g. progress reporting.
    """
    check_generate_arguments(overrides=overrides, eos_id=eos_id, observers=observers, registry=registry)
    registry = registry or get_registry()
    merged = dict(overrides or {})
    for key, value in (("gen_length", gen_length), ("block_length", block_length),
                       ("steps", steps), ("temperature", temperature)):
        if value is not None:
            merged[key] = value
    strat = load_strategy(strategy, merged, registry)
    denoiser = as_denoiser(model)
    if strat.block_length is None and denoiser.block_length is not None:  # a model trained on fixed blocks
        strat = load_strategy(strategy, {**merged, "block_length": denoiser.block_length}, registry)
    prompt, prompt_mask, given = check_prompt(prompt_ids, attention_mask, denoiser.mask_id, denoiser.vocab_size)
    eos_id = check_eos_id(eos_id, denoiser.vocab_size)
    check_decode_size(prompt.shape[0], prompt.shape[1] + strat.gen_length, denoiser.vocab_size)
    if observers:
        pipeline = Pipeline(strat.instantiate(registry) + tracer(trace) + list(observers))
    else:
        pipeline = cached_pipeline(strat, registry, trace)
    return _run(pipeline, strat, denoiser, prompt, prompt_mask, given, eos_id, seed)


def _row_seeds(seed: Any, batch: int) -> list[int]:
    """One seed per row (an int ``s`` gives row ``i`` the seed ``s + i``), each a valid int."""
    def valid(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63

    if isinstance(seed, int) and not isinstance(seed, bool):
        seeds = [seed + row for row in range(batch)]
    elif isinstance(seed, (list, tuple)) or (isinstance(seed, torch.Tensor) and seed.dim() == 1
                                             and not seed.is_floating_point()):
        seeds = [int(s) if isinstance(s, torch.Tensor) else s for s in seed]
        if len(seeds) != batch:
            raise InputError(f"seed: got {len(seeds)} seeds for a batch of {batch} rows; pass one int "
                             f"or one seed per row")
    else:
        raise InputError(f"seed={seed!r}: pass an int (row i gets seed + i) or a list of one int per row")
    bad = next((s for s in seeds if not valid(s)), None)
    if bad is not None or not seeds:
        raise InputError(f"seed={seed!r}: every row's seed must be an int in [0, 2**63) (row i of an "
                         f"int seed s gets s + i); got {bad!r}")
    return seeds


def _block_logits(logits: Any, rows_in: int, total: int, start: int, end: int, vocab: int,
                  name: str) -> torch.Tensor:
    """The current block's ``(b, L, V)`` logits from a session's output, which may cover the
    whole canvas ``(b, T, V)`` or only the block (a cached window): never padded to the canvas."""
    width = end - start
    if isinstance(logits, torch.Tensor) and tuple(logits.shape) == (rows_in, total, vocab):
        logits = logits[:, start:end] if total != width else logits
    elif isinstance(logits, torch.Tensor) and tuple(logits.shape) != (rows_in, width, vocab):
        raise ModelError(f"model {name!r} returned logits of shape {tuple(logits.shape)}, expected (batch, "
                         f"positions, vocab_size) = {(rows_in, total, vocab)}, or {(rows_in, width, vocab)} "
                         f"for the current block only")
    return check_logits(logits, (rows_in, width, vocab), name)


def _run(pipeline: Pipeline, strat: Strategy, denoiser: Any, prompt: torch.Tensor,
         prompt_mask: torch.Tensor, given: torch.Tensor, eos_id: tuple[int, ...] | None, seed: Any) -> GenerateOutput:
    batch, prompt_len = prompt.shape
    gen_len, block_len = strat.gen_length, strat.effective_block_length
    total = prompt_len + gen_len
    vocab, mask_id = denoiser.vocab_size, denoiser.mask_id
    device = prompt.device
    generators = [torch.Generator(device=device).manual_seed(s) for s in _row_seeds(seed, batch)]
    attention_mask = torch.cat([prompt_mask, prompt_mask.new_ones(batch, gen_len)], dim=1)
    session = denoiser.start_session(attention_mask)
    # a block's noise is drawn when the block starts (see DecodeSession.initial_noise); until then
    # its positions hold [MASK], or token 0 for a model without one
    placeholder = prompt.new_full((batch, gen_len), mask_id if mask_id is not None else 0)
    remask_budget = strat.max_steps_per_block or 2 * block_len  # remask and edit stop after it
    open_ = torch.cat([torch.zeros(batch, prompt_len, dtype=torch.bool, device=device),
                       torch.ones(batch, gen_len, dtype=torch.bool, device=device)], dim=1)
    state = DecodeState(
        canvas=torch.cat([prompt, placeholder], dim=1), open=open_, attention_mask=attention_mask,
        prompt_length=prompt_len, gen_length=gen_len, block_length=block_len,
        steps_per_block=strat.steps_per_block, mask_id=mask_id, vocab_size=vocab,
        temperature=strat.temperature, generators=generators, eos_id=None if eos_id is None else eos_id[0],
        active_rows=torch.ones(batch, dtype=torch.bool, device=device),
        finished_rows=torch.zeros(batch, dtype=torch.bool, device=device), forwards_per_row=[0] * batch,
        max_steps_per_block=remask_budget)
    eos_ids = None if eos_id is None else torch.tensor(eos_id, device=device)
    has_edit = pipeline.has("edit")
    renoises = pipeline.has("renoise")  # every open position is re-decided each step
    drafts = DraftCache() if pipeline.has("draft") else None
    if drafts is not None:
        check_drafting_model(denoiser)
    extends = pipeline.has("extend")
    if extends and drafts is not None:
        raise InputError("an extend component and a draft component in one strategy: drafted canvases are "
                         "forwarded without the extra positions, so their steps would lack them; use one")
    early_commits = pipeline.has("early_commit")
    # canvas-wide logits each step: for an early commit, or a component that asks for them
    wants_canvas = early_commits or any(getattr(c, "needs_canvas_logits", False) for c in pipeline.components)
    if wants_canvas and drafts is not None:
        raise InputError("a component that reads canvas-wide logits (an early commit) and a draft component in one "
                         "strategy: a step that reaches a drafted canvas has no canvas-wide logits; use one")
    if wants_canvas and not session.canvas_logits:
        needy = "an early_commit component" if early_commits else "component " + repr(next(
            c.name for c in pipeline.components if getattr(c, "needs_canvas_logits", False)))
        raise InputError(f"{needy} needs the forward's logits for the whole canvas; model "
                         f"{denoiser.name!r} computes the current block's only (a key-value cache's windows: "
                         f"drop --kv-cache; a block decoder such as DiffusionGemma's has no others)")
    truncates = pipeline.has("forward_extent")
    if truncates and (wants_canvas or extends or drafts is not None):
        raise InputError("a forward_extent (a forward on a canvas prefix, e.g. SlowFast's fast phase) with extra "
                         "positions, canvas-wide logits or drafts in one strategy: those need the whole canvas; "
                         "use one")
    calls = 0  # batched model calls
    all_rows = state.active_rows  # state.active_rows while every row decodes
    record_steps = pipeline.has("on_step_end")
    # the default session's noise is [MASK], which the placeholder already holds
    draws_noise = mask_id is None or type(session).initial_noise is not DecodeSession.initial_noise
    # a session that ignores the fused logits (the default) gets no copy of them
    observes_fused = type(session).observe_fused is not DecodeSession.observe_fused
    pipeline.broadcast("on_decode_start", state=state)
    for block in range(strat.gen_length // block_len):
        state.block_index, state.block_step = block, 0
        start, end = state.block_start, state.block_end
        session.start_block(start, end)
        if draws_noise:
            _draw_block_noise(state, session, denoiser.name)
        if renoises:  # a renoise component may set the block's starting tokens itself
            comp, tokens = pipeline.first("renoise", state=state, proposal=None, commit=None)
            if tokens is not None:
                tokens = check_tokens(comp, "renoise", tokens, (batch, block_len), vocab)
                state.canvas, state.open = _with_block(state, torch.where(state.selectable, tokens, state.block_canvas),
                                                       state.selectable)
        if drafts is not None:
            drafts.reset()
        pipeline.broadcast("on_block_start", state=state)
        # open positions of this block per row, kept as Python ints: one sync per step then
        # serves both the progress check and the next step's active rows. Finished (EOS) rows
        # have none, as _stop_at_eos closes everything after their last block.
        open_left = state.selectable.sum(dim=1).tolist()
        # with an edit component a row keeps stepping while its last step changed something
        editing = [False] * batch
        while True:
            had_open = [n > 0 for n in open_left]
            active_list = [o or e for o, e in zip(had_open, editing)]
            n_active = sum(active_list)
            if n_active == 0:
                break
            active = all_rows if n_active == batch else torch.tensor(active_list, device=device)
            state.active_rows = active
            rows = None if n_active == batch else active.nonzero().squeeze(1)
            hit = None if drafts is None else torch.where(active, drafts.lookup(state.block_canvas), -1)
            forwarded = active_list if hit is None else [a and h < 0 for a, h in zip(active_list, hit.tolist())]
            logits = None
            if any(forwarded):
                ask = rows if forwarded == active_list else torch.tensor(forwarded, device=device).nonzero().squeeze(1)
                canvas_in = state.canvas if ask is None else state.canvas[ask]
                extent = pipeline.forward_extent(state) if truncates else None
                if extends:
                    raw, extra = _extended_forward(pipeline, state, session, canvas_in, ask, vocab, denoiser.name)
                elif extent is not None:
                    raw = _prefix_forward(session, canvas_in, ask, extent, start, end, vocab, denoiser.name)
                else:
                    raw = session.forward(canvas_in, ask)
                logits = _block_logits(raw, canvas_in.shape[0], total, start, end, vocab, denoiser.name)
                calls += 1
                if wants_canvas:
                    state.canvas_logits = _canvas_logits(raw, ask, batch, total, vocab, denoiser.name)
                if ask is not None:  # hooks see the whole batch; other rows get zeros (or drafts)
                    logits = logits.new_zeros(batch, *logits.shape[1:]).index_copy(0, ask, logits)
                    if extends:
                        extra = extra.new_zeros(batch, *extra.shape[1:]).index_copy(0, ask, extra)
                if extends:
                    state.extension_logits = extra
            if hit is not None and bool((hit >= 0).any()):  # a drafted canvas: its logits are known
                reached = (hit >= 0).nonzero().squeeze(1)
                known = drafts.logits_of(reached, hit)
                logits = (known.new_zeros(batch, *known.shape[1:]) if logits is None else logits).index_copy(0, reached, known)
            state.forwards_per_row = [n + f for n, f in zip(state.forwards_per_row, forwarded)]
            fused = pipeline.fuse(state, logits)
            if observes_fused:
                session.observe_fused(fused if rows is None else fused[rows], rows)
            comp, proposal = pipeline.first("score", state=state, logits=fused)
            proposal = check_proposal(comp, proposal, (batch, block_len))
            selectable = state.selectable
            scorer = comp
            comp, chosen = pipeline.first("select", state=state, proposal=proposal)
            commit = check_mask(comp, "select", chosen, (batch, block_len)) & selectable
            committed = commit.sum(dim=1).tolist()
            if renoises:  # no per-step progress: the block ends at the budget, all at once
                if state.block_step + 1 >= remask_budget:
                    commit, committed = selectable, list(open_left)
            else:
                stalled = [o and c == 0 for o, c in zip(had_open, committed)]
                if any(stalled):  # progress guarantee: the most confident open position
                    commit = commit | _most_confident(proposal.confidence, selectable, stalled)
                    committed = [c + s for c, s in zip(committed, stalled)]
            exiting = None
            if early_commits:
                comp, done = pipeline.first("early_commit", state=state, proposal=proposal,
                                            logits=state.canvas_logits)
                if done is not None:
                    done = check_mask(comp, "early_commit", done, (batch,)) & active
                    if bool(done.any()):  # the block commits now; the rest of the answer below
                        exiting = done
                        commit = commit | (selectable & done[:, None])
                        committed = commit.sum(dim=1).tolist()
            check_committed_tokens(proposal, commit, logits, fused, pipeline, scorer, state)
            open_left = [n - c for n, c in zip(open_left, committed)]
            block_tokens = torch.where(commit, proposal.tokens, state.block_canvas)
            block_open = selectable & ~commit
            edited = None
            if has_edit:  # edits in the block's first max_steps_per_block steps, none after
                if state.block_step < remask_budget:
                    edited = _edits(pipeline, state, proposal, commit, selectable, block_tokens, block_open,
                                    active, logits, fused, scorer)
                if edited is not None:
                    block_tokens = torch.where(edited, proposal.tokens, block_tokens)
                changes = committed if edited is None else [c + e for c, e in zip(committed, edited.sum(dim=1).tolist())]
                another = state.block_step + 1 < remask_budget
                editing = [a and another and n > 0 for a, n in zip(active_list, changes)]
            reopen = None
            if pipeline.has("remask") and state.block_step + 1 < remask_budget:
                state.canvas, state.open = _with_block(state, block_tokens, block_open)
                comp, chosen = pipeline.first("remask", state=state, proposal=proposal, commit=commit)
                if chosen is not None:
                    decided = ~block_open & active[:, None]
                    reopen = check_mask(comp, "remask", chosen, (batch, block_len)) & decided
                    reopen = _keep_one_decided(reopen, decided)
                    reopened = reopen.sum(dim=1).tolist()
                    if any(reopened):  # only the rows that reopen draw noise
                        drawing = [row for row, n in enumerate(reopened) if n]
                        fresh = block_tokens.index_copy(0, torch.tensor(drawing, device=device), _noise(
                            session, [generators[row] for row in drawing], block_len, vocab, denoiser.name))
                        block_tokens = torch.where(reopen, fresh, block_tokens)
                        block_open = block_open | reopen
                        open_left = [n + r for n, r in zip(open_left, reopened)]
            if renoises:
                state.canvas, state.open = _with_block(state, block_tokens, block_open)
                comp, tokens = pipeline.first("renoise", state=state, proposal=proposal, commit=commit)
                if tokens is not None:
                    tokens = check_tokens(comp, "renoise", tokens, (batch, block_len), vocab)
                    block_tokens = torch.where(block_open, tokens, block_tokens)
            state.canvas, state.open = _with_block(state, block_tokens, block_open)
            filled = None
            if exiting is not None:
                filled = _commit_rest(state, exiting, state.canvas_logits, denoiser.name)
                gone = exiting.tolist()
                open_left = [0 if g else n for n, g in zip(open_left, gone)]
                editing = [False if g else e for e, g in zip(editing, gone)]
            if drafts is not None and any(n > 0 for n in open_left):
                calls += _draft_and_verify(pipeline, state, proposal, commit, drafts, session, open_left,
                                           total, vocab, denoiser.name)
            if record_steps:
                pipeline.broadcast("on_step_end", state=state, record=StepRecord(
                    step=state.step, block_index=block, block_step=state.block_step, block_start=start,
                    active_rows=active, proposal=proposal, commit=commit,
                    reopen=torch.zeros_like(commit) if reopen is None else reopen,
                    canvas=state.canvas, edited=edited, filled=filled))
            state.step += 1
            state.block_step += 1
        if eos_ids is not None:
            _stop_at_eos(state, eos_ids, end)
    # the caller's prompt comes back as given, padding ids included (the model saw a valid id there)
    sequences = torch.cat([given, state.canvas[:, prompt_len:]], dim=1)
    output = GenerateOutput(sequences=sequences, nfe=state.nfe, prompt_length=prompt_len,
                            gen_length=gen_len, stats={"forward_calls": calls, "steps": state.step})
    pipeline.broadcast("on_decode_end", state=state, output=output)
    return output


def _extended_forward(pipeline: Pipeline, state: DecodeState, session: DecodeSession, canvas: torch.Tensor,
                      rows: torch.Tensor | None, vocab: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward with the extend component's extra positions: (canvas or block logits, the
    extra positions' checked logits (b, E, V))."""
    comp, extension = pipeline.first("extend", state=state)
    batch, total = state.canvas.shape
    if not isinstance(extension, Extension):
        raise PluginError(f"component {comp.name!r}: extend must return a dllm_decoding.Extension, got "
                          f"{type(extension).__name__}")
    tokens, positions, sees = extension.tokens, extension.positions, extension.sees
    width = tokens.shape[1] if isinstance(tokens, torch.Tensor) and tokens.dim() == 2 else -1
    for field, value, shape, dtype in (("tokens", tokens, (batch, width), torch.long),
                                       ("positions", positions, (batch, width), torch.long),
                                       ("sees", sees, (batch, width, total), torch.bool)):
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape or value.dtype != dtype or width < 1:
            raise PluginError(f"component {comp.name!r}: Extension.{field} must be a {dtype} tensor of shape "
                              f"{shape if width > 0 else '(B, E) with E >= 1'}, got {value!r:.60}")
    if bool(((tokens < 0) | (tokens >= vocab)).any() | ((positions < 0) | (positions >= total)).any()):
        raise PluginError(f"component {comp.name!r}: Extension tokens must be in [0, {vocab}) and positions "
                          f"canvas columns in [0, {total})")
    if rows is not None:
        extension = Extension(tokens=tokens[rows], positions=positions[rows], sees=sees[rows])
    logits, extra = session.forward_extended(canvas, rows, extension)
    extra = check_logits(extra, (canvas.shape[0], width, vocab), name)
    return logits, extra


def _draft_and_verify(pipeline: Pipeline, state: DecodeState, proposal: Proposal, commit: torch.Tensor,
                      drafts: DraftCache, session: Any, open_left: list[int], total: int, vocab: int,
                      name: str) -> int:
    """Rows whose next canvas is not a kept draft get the draft component's drafts forwarded
    in one batched call (one forward per drafting row); returns the calls made (0 or 1)."""
    need = (drafts.lookup(state.block_canvas) < 0) & torch.tensor([n > 0 for n in open_left], device=state.device)
    if not bool(need.any()):
        return 0
    comp, drafted = pipeline.first("draft", state=state, proposal=proposal, commit=commit)
    drafted = check_drafts(comp, drafted, state.batch_size, state.block_length, vocab)
    if drafted is None:
        return 0
    rows = need.nonzero().squeeze(1)
    contents = drafted[rows]  # (n, D, L)
    depth = contents.shape[1]
    canvases = state.canvas[rows].repeat_interleave(depth, dim=0)
    canvases = torch.cat([canvases[:, :state.block_start], contents.flatten(0, 1), canvases[:, state.block_end:]], dim=1)
    logits = _block_logits(session.forward(canvases, rows.repeat_interleave(depth)), canvases.shape[0], total,
                           state.block_start, state.block_end, vocab, name)
    drafts.store(rows, contents, logits.unflatten(0, (rows.shape[0], depth)), state.batch_size)
    state.forwards_per_row = [n + bool(d) for n, d in zip(state.forwards_per_row, need.tolist())]
    return 1


def _edits(pipeline: Pipeline, state: DecodeState, proposal: Proposal, commit: torch.Tensor,
           selectable: torch.Tensor, block_tokens: torch.Tensor, block_open: torch.Tensor,
           active: torch.Tensor, logits: torch.Tensor, fused: torch.Tensor, scorer: Component) -> torch.Tensor | None:
    """The edit component's choice, restricted to positions decided before this step in active
    rows whose proposed token differs (None: no edit)."""
    state.canvas, state.open = _with_block(state, block_tokens, block_open)
    comp, chosen = pipeline.first("edit", state=state, proposal=proposal, commit=commit)
    if chosen is None:
        return None
    decided_before = ~selectable & active[:, None]
    edited = check_mask(comp, "edit", chosen, tuple(commit.shape)) & decided_before & (proposal.tokens != block_tokens)
    check_committed_tokens(proposal, edited, logits, fused, pipeline, scorer, state)
    return edited


def _prefix_forward(session: DecodeSession, canvas: torch.Tensor, rows: torch.Tensor | None, extent: list[int],
                    start: int, end: int, vocab: int, name: str) -> torch.Tensor:
    """The block's logits of a forward on each row's canvas prefix ``[0, extent[row])``: the
    rows run together on the longest prefix, columns beyond a row's own hidden from it."""
    own = extent if rows is None else [extent[r] for r in rows.tolist()]
    stop = max(own)
    if stop >= canvas.shape[1]:
        return session.forward(canvas, rows)
    visible = torch.arange(stop, device=canvas.device)[None, :] < torch.tensor(own, device=canvas.device)[:, None]
    logits = session.forward_prefix(canvas[:, :stop], rows, visible)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (canvas.shape[0], stop, vocab):
        raise ModelError(f"model {name!r}: forward_prefix returned {getattr(logits, 'shape', type(logits))!r}, "
                         f"expected {(canvas.shape[0], stop, vocab)}")
    block = logits[:, start:end]
    if stop < end:
        block = torch.cat([block, block.new_zeros(block.shape[0], end - stop, vocab)], dim=1)
    # block columns beyond a row's own prefix have no prediction: zeros (a uniform distribution)
    beyond = torch.arange(start, end, device=canvas.device)[None, :] >= torch.tensor(own, device=canvas.device)[:, None]
    return block.masked_fill(beyond[..., None], 0.0) if bool(beyond.any()) else block


def _canvas_logits(raw: torch.Tensor, rows: torch.Tensor | None, batch: int, total: int, vocab: int,
                   name: str) -> torch.Tensor:
    """``(B, T, V)``: a forward's canvas-wide logits for the whole batch (zeros for rows not
    forwarded), for an early commit; a session that returned the block only cannot give them."""
    if raw.shape[1] != total:
        raise InputError(f"a component needs the forward's logits for the whole canvas; model {name!r} returned "
                         f"the current block's only (a key-value cache computes just a window: drop --kv-cache)")
    return raw if rows is None else raw.new_zeros(batch, total, vocab).index_copy(0, rows, raw)


def _commit_rest(state: DecodeState, rows: torch.Tensor, canvas_logits: torch.Tensor, name: str) -> torch.Tensor:
    """Every position still open in ``rows`` takes the argmax of ``canvas_logits``; the rows are
    done (no more forwards). Returns the ``(B, T)`` positions filled."""
    rest = state.open & rows[:, None]
    tokens = canvas_logits.argmax(dim=-1)
    if state.mask_id is not None and bool(((tokens == state.mask_id) & rest).any()):
        row, column = (int(i) for i in ((tokens == state.mask_id) & rest).nonzero()[0])
        raise ModelError(f"an early commit would fill answer position {column - state.prompt_length} of row {row} "
                         f"with the mask token (id {state.mask_id}): model {name!r} puts its top logit on [MASK] "
                         f"there; give the mask token's logit -inf in the model")
    state.canvas = torch.where(rest, tokens, state.canvas)
    state.open = state.open & ~rest
    state.finished_rows = state.finished_rows | rows
    return rest


def _noise(session: DecodeSession, generators: list[torch.Generator], length: int, vocab: int,
           name: str) -> torch.Tensor:
    """``(len(generators), length)`` tokens from the session's ``initial_noise``, checked."""
    noise = session.initial_noise(len(generators), length, generators)
    if (not isinstance(noise, torch.Tensor) or noise.dtype != torch.long
            or tuple(noise.shape) != (len(generators), length)):
        raise ModelError(f"model {name!r}: initial_noise must return a long tensor of shape "
                         f"{(len(generators), length)}, got {noise!r:.80}")
    if bool(((noise < 0) | (noise >= vocab)).any()):
        raise ModelError(f"model {name!r}: initial_noise returned token ids outside the vocabulary [0, {vocab})")
    return noise


def _draw_block_noise(state: DecodeState, session: DecodeSession, name: str) -> None:
    """Fill the starting block of every row still decoding with the session's noise."""
    rows = (~state.finished_rows).nonzero().squeeze(1)
    if rows.numel() == 0:
        return
    block = state.block_canvas.index_copy(0, rows, _noise(session, [state.generators[r] for r in rows.tolist()],
                                                          state.block_length, state.vocab_size, name).to(state.device))
    state.canvas, state.open = _with_block(state, block, state.selectable)


def _with_block(state: DecodeState, block_tokens: torch.Tensor, block_open: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """New canvas and open tensors with the current block replaced (never edited in place:
    hooks hold references to the old ones)."""
    start, end = state.block_start, state.block_end
    canvas = torch.cat([state.canvas[:, :start], block_tokens, state.canvas[:, end:]], dim=1)
    open_ = torch.cat([state.open[:, :start], block_open, state.open[:, end:]], dim=1)
    return canvas, open_


def _most_confident(confidence: torch.Tensor, selectable: torch.Tensor, stalled: list[bool]) -> torch.Tensor:
    """(B, L) bool: each stalled row's most confident selectable position (the first one when
    all are -inf), never a position that is not selectable."""
    floor = torch.finfo(confidence.dtype).min
    key = torch.where(selectable, confidence.clamp(min=floor), float("-inf"))
    best = torch.zeros_like(selectable).scatter(1, key.argmax(dim=1, keepdim=True), True)
    return best & selectable & torch.tensor(stalled, device=selectable.device)[:, None]


def _keep_one_decided(reopen: torch.Tensor, decided: torch.Tensor) -> torch.Tensor:
    """The remask promise: a row never reopens everything it has decided in the block (it keeps
    its last decided position, the rightmost, so a decode still progresses)."""
    everything = (reopen == decided).all(dim=1) & decided.any(dim=1)
    if not bool(everything.any()):
        return reopen
    columns = torch.arange(decided.shape[1], device=decided.device)
    last = torch.where(decided, columns, -1).amax(dim=1, keepdim=True)
    keep = (columns[None, :] == last) & everything[:, None]
    return reopen & ~keep


def _stop_at_eos(state: DecodeState, eos_ids: torch.Tensor, block_end: int) -> None:
    """dInfer-style early stop: a row with an EOS id in its finished blocks is done; the rest of
    its answer becomes the first EOS id and costs no more forwards."""
    done = torch.isin(state.canvas[:, state.prompt_length:block_end], eos_ids).any(dim=1) & ~state.finished_rows
    if not bool(done.any()):
        return
    tail = torch.zeros_like(state.open)
    tail[:, block_end:] = True
    tail &= done[:, None]
    state.canvas = state.canvas.masked_fill(tail, state.eos_id)
    state.open = state.open & ~tail
    state.finished_rows = state.finished_rows | done
