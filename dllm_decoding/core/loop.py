"""The core denoising loop: one forward per step, then fuse -> score -> select -> remask.

The core, not the plugins, guarantees: prompt tokens never change; commits are restricted to
open positions of the current block of active rows; every active row commits at least one
position per step; blocks finish in order; finished rows stop costing forwards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pluggy
import torch

from . import hookspecs
from .components import Component
from .config import Strategy, load_strategy
from .errors import InputError, ModelError, PluginError
from .inputs import check_prompt
from .manager import PluginRegistry, get_registry
from .denoiser import as_denoiser, check_logits
from .state import DecodeState, GenerateOutput, Proposal, StepRecord

_STEP_HOOKS = ("fuse", "score", "select", "remask")
_LIFECYCLE_HOOKS = ("on_decode_start", "on_block_start", "on_step_end", "on_decode_end")


class Pipeline:
    """The component instances of one strategy, registered with their own plugin manager.

    Each hook is called per component (through a pluggy subset caller), so ``fuse`` can chain in
    the configured order and an exception names the component and the hook it came from.
    """

    def __init__(self, components: Sequence[Component]) -> None:
        self.components = list(components)
        pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        for i, comp in enumerate(self.components):
            try:
                pm.register(comp, name=f"{i}:{comp.name}")
            except pluggy.PluginValidationError as exc:
                raise PluginError(f"component {comp.name!r}: invalid hook implementation: {exc}") from exc
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"component {exc.plugin!r} implements an unknown hook: {exc}") from exc
        self._callers: dict[str, list[tuple[Component, Any]]] = {}
        for hook in _STEP_HOOKS + _LIFECYCLE_HOOKS:
            callers = []
            for comp in self.components:
                impls = [i for i in getattr(pm.hook, hook).get_hookimpls() if i.plugin is comp]
                if not impls:
                    continue
                if hook in _STEP_HOOKS and hook != comp.hook_point:
                    raise PluginError(f"component {comp.name!r} is a {comp.hook_point} component "
                                      f"but also implements the {hook!r} hook; a component "
                                      f"implements one step hook")
                callers.append((comp, _component_caller(pm, hook, comp, impls, self.components)))
            self._callers[hook] = callers
        self.plugin_manager = pm
        self.registry: PluginRegistry | None = None

    def has(self, hook: str) -> bool:
        return bool(self._callers[hook])

    def call(self, hook: str, comp: Component, caller: Any, **kwargs: Any) -> Any:
        try:
            return caller(**kwargs)
        except Exception as exc:
            raise PluginError(f"component {comp.name!r} ({type(comp).__module__}."
                              f"{type(comp).__qualname__}) raised in hook {hook!r}: "
                              f"{type(exc).__name__}: {exc}") from exc

    def broadcast(self, hook: str, **kwargs: Any) -> None:
        for comp, caller in self._callers[hook]:
            self.call(hook, comp, caller, **kwargs)

    def fuse(self, state: DecodeState, logits: torch.Tensor) -> torch.Tensor:
        for comp, caller in self._callers["fuse"]:
            out = self._guarded("fuse", comp, caller, {"logits": logits}, state=state, logits=logits)
            if not isinstance(out, torch.Tensor) or out.shape != logits.shape:
                raise PluginError(f"component {comp.name!r}: fuse must return a tensor of shape "
                                  f"{tuple(logits.shape)}, got {_describe(out)}")
            logits = out
        return logits

    def first(self, hook: str, **kwargs: Any) -> Any:
        comp, caller = self._callers[hook][0]
        inputs = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        proposal = kwargs.get("proposal")
        if isinstance(proposal, Proposal):
            inputs.update(tokens=proposal.tokens, confidence=proposal.confidence, logits=proposal.logits)
        return comp, self._guarded(hook, comp, caller, inputs, **kwargs)

    def _guarded(self, hook: str, comp: Component, caller: Any,
                 inputs: dict[str, torch.Tensor], **kwargs: Any) -> Any:
        """Call one component, failing loudly if it modified any input in place (tensor
        version counters make the check free)."""
        state = kwargs["state"]
        watched = (*inputs.values(), state.canvas, state.open, state.block_mask, state.selectable,
                   state.active_rows)
        versions = [t._version for t in watched]
        result = self.call(hook, comp, caller, **kwargs)
        if versions != [t._version for t in watched]:
            names = [*inputs, "state.canvas", "state.open", "state.block_mask", "state.selectable",
                     "state.active_rows"]
            changed = next(n for n, t, v in zip(names, watched, versions) if t._version != v)
            raise PluginError(f"component {comp.name!r} modified its input {changed!r} in place "
                              f"in hook {hook!r}; hooks must return new tensors (x = x + y, not "
                              f"x += y)")
        return result


def _component_caller(pm: pluggy.PluginManager, hook: str, comp: Component, impls: list[Any],
                      components: list[Component]) -> Any:
    """A function calling ``comp``'s implementation of ``hook`` with keyword arguments and
    returning its single result.

    pluggy validated and registered the implementation; a plain one (no wrapper) is then called
    directly, as pluggy's own dispatch would (each declared argument by name), which saves ~5 us
    per call on the per-step path. Wrappers keep pluggy's full dispatch."""
    if len(impls) == 1 and not (impls[0].hookwrapper or impls[0].wrapper):
        function, argnames = impls[0].function, impls[0].argnames

        def direct(**kwargs: Any) -> Any:
            return function(*[kwargs[name] for name in argnames])
        return direct
    subset = pm.subset_hook_caller(hook, remove_plugins=[c for c in components if c is not comp])

    def via_pluggy(**kwargs: Any) -> Any:
        result = subset(**kwargs)
        if isinstance(result, list):  # non-firstresult hooks return a list of results
            return result[0] if result else None
        return result
    return via_pluggy


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return repr(value) if value is None else type(value).__name__


def _check_mask(comp: Component, hook: str, value: Any, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.bool or tuple(value.shape) != shape:
        raise PluginError(f"component {comp.name!r}: {hook} must return a bool tensor of shape "
                          f"{shape}, got {_describe(value)}")
    return value


def _check_proposal(comp: Component, value: Any, shape: tuple[int, int], vocab: int) -> Proposal:
    if not isinstance(value, Proposal):
        raise PluginError(f"component {comp.name!r}: score must return a Proposal, got {_describe(value)}")
    if tuple(value.tokens.shape) != shape or value.tokens.dtype != torch.long:
        raise PluginError(f"component {comp.name!r}: Proposal.tokens must be a long tensor of shape "
                          f"{shape}, got {_describe(value.tokens)}")
    if tuple(value.confidence.shape) != shape or not value.confidence.is_floating_point():
        raise PluginError(f"component {comp.name!r}: Proposal.confidence must be a float tensor of "
                          f"shape {shape}, got {_describe(value.confidence)}")
    return value


# --------------------------------------------------------------------------- the loop


def generate(model: Any, prompt_ids: Any, strategy: str | Path | Mapping[str, Any] | Strategy = "credit_decoding",
             *, gen_length: int | None = None, block_length: int | None = None,
             steps: int | None = None, temperature: float | None = None,
             overrides: Mapping[str, Any] | None = None, attention_mask: Any = None,
             eos_id: int | None = None, seed: int | Sequence[int] = 0, trace: bool = False,
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
    :param eos_id: when set, a row whose finished blocks contain EOS stops (no more forwards) and
        the rest of its answer is filled with EOS. Off by default.
    :param seed: an int (row ``i`` gets ``seed + i``) or one seed per row. Each row draws from
        its own generator, so row ``i`` of a batch decodes exactly as it does alone with seed
        ``seed[i]``; at temperature 0 deterministic strategies use no randomness.
    :param trace: record every step (``out.trace``); costs nothing when off.
    :param observers: extra observer components (lifecycle hooks only), e.g. progress reporting.
    """
    registry = registry or get_registry()
    merged = dict(overrides or {})
    for key, value in (("gen_length", gen_length), ("block_length", block_length),
                       ("steps", steps), ("temperature", temperature)):
        if value is not None:
            merged[key] = value
    strat = load_strategy(strategy, merged, registry)
    denoiser = as_denoiser(model)
    prompt, prompt_mask = check_prompt(prompt_ids, attention_mask, denoiser.mask_id, denoiser.vocab_size)
    if eos_id is not None and not 0 <= eos_id < denoiser.vocab_size:
        raise InputError(f"eos_id={eos_id} is outside the model's vocabulary [0, {denoiser.vocab_size})")
    if observers:
        pipeline = Pipeline(strat.instantiate(registry) + _tracer(trace) + list(observers))
    else:
        pipeline = _cached_pipeline(strat, registry, trace)
    return _run(pipeline, strat, denoiser, prompt, prompt_mask, eos_id, seed)


def _tracer(trace: bool) -> list[Component]:
    from .trace import TraceRecorder

    return [TraceRecorder()] if trace else []


_PIPELINES: dict[tuple[str, int, bool], Pipeline] = {}


def _cached_pipeline(strat: Strategy, registry: PluginRegistry, trace: bool) -> Pipeline:
    """Components keep no per-decode memory on themselves (it lives in the decode state), so
    one pipeline per (strategy, registry) serves every decode; building one costs ~1 ms."""
    key = (strat.model_dump_json(), id(registry), trace)
    pipeline = _PIPELINES.get(key)
    if pipeline is None or pipeline.registry is not registry:
        if len(_PIPELINES) >= 64:
            _PIPELINES.pop(next(iter(_PIPELINES)))
        pipeline = _PIPELINES[key] = Pipeline(strat.instantiate(registry) + _tracer(trace))
        pipeline.registry = registry
    return pipeline


def _run(pipeline: Pipeline, strat: Strategy, denoiser: Any, prompt: torch.Tensor,
         prompt_mask: torch.Tensor, eos_id: int | None, seed: int) -> GenerateOutput:
    batch, prompt_len = prompt.shape
    gen_len, block_len = strat.gen_length, strat.effective_block_length
    total = prompt_len + gen_len
    vocab, mask_id = denoiser.vocab_size, denoiser.mask_id
    seeds = [seed + row for row in range(batch)] if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != batch:
        raise InputError(f"seed: got {len(seeds)} seeds for a batch of {batch} rows; pass one int "
                         f"or one seed per row")
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    attention_mask = torch.cat([prompt_mask, torch.ones(batch, gen_len, dtype=torch.long)], dim=1)
    session = denoiser.start_session(attention_mask)
    noise = session.initial_noise(batch, gen_len, generators)
    open_ = torch.zeros(batch, total, dtype=torch.bool)
    open_[:, prompt_len:] = True
    state = DecodeState(
        canvas=torch.cat([prompt, noise], dim=1), open=open_, attention_mask=attention_mask,
        prompt_length=prompt_len, gen_length=gen_len, block_length=block_len,
        steps_per_block=strat.steps_per_block, mask_id=mask_id, vocab_size=vocab,
        temperature=strat.temperature, generators=generators, eos_id=eos_id,
        active_rows=torch.ones(batch, dtype=torch.bool),
        finished_rows=torch.zeros(batch, dtype=torch.bool), forwards_per_row=[0] * batch)
    remask_budget = strat.max_steps_per_block or 2 * block_len
    all_rows = torch.ones(batch, dtype=torch.bool)  # state.active_rows while every row decodes
    record_steps = pipeline.has("on_step_end")
    pipeline.broadcast("on_decode_start", state=state)
    for block in range(strat.gen_length // block_len):
        state.block_index, state.block_step = block, 0
        start, end = state.block_start, state.block_end
        session.start_block(start, end)
        pipeline.broadcast("on_block_start", state=state)
        # open positions of this block per row, kept as Python ints: one sync per step then
        # serves both the progress check and the next step's active rows. Finished (EOS) rows
        # have none, as _stop_at_eos closes everything after their last block.
        open_left = state.open[:, start:end].sum(dim=1).tolist()
        while True:
            active_list = [n > 0 for n in open_left]
            n_active = sum(active_list)
            if n_active == 0:
                break
            active = all_rows if n_active == batch else torch.tensor(active_list)
            state.active_rows = active
            rows = None if n_active == batch else active.nonzero().squeeze(1)
            canvas_in = state.canvas if rows is None else state.canvas[rows]
            logits = session.forward(canvas_in, rows)
            logits = check_logits(logits, (canvas_in.shape[0], total, vocab), denoiser.name)
            if rows is not None:  # hooks see the whole batch; inactive rows get zeros
                full = logits.new_zeros(batch, total, vocab)
                full[rows] = logits
                logits = full
            state.forwards_per_row = [n + a for n, a in zip(state.forwards_per_row, active_list)]
            fused = pipeline.fuse(state, logits)
            session.observe_fused(fused if rows is None else fused[rows], rows)
            comp, proposal = pipeline.first("score", state=state, logits=fused)
            proposal = _check_proposal(comp, proposal, (batch, total), vocab)
            selectable = state.selectable
            comp, chosen = pipeline.first("select", state=state, proposal=proposal)
            commit = _check_mask(comp, "select", chosen, (batch, total)) & selectable
            committed = commit.sum(dim=1).tolist()
            stalled = [a and c == 0 for a, c in zip(active_list, committed)]
            if any(stalled):  # progress guarantee: the most confident open position
                best = proposal.confidence.masked_fill(~selectable, float("-inf")).argmax(dim=1)
                commit = commit | (torch.nn.functional.one_hot(best, total).bool() & torch.tensor(stalled)[:, None])
                committed = [c + s for c, s in zip(committed, stalled)]
            open_left = [n - c for n, c in zip(open_left, committed)]
            state.canvas = torch.where(commit, proposal.tokens, state.canvas)
            state.open = state.open ^ commit  # commit is a subset of open: this closes it
            reopen = None
            if pipeline.has("remask") and state.block_step + 1 < remask_budget:
                comp, chosen = pipeline.first("remask", state=state, proposal=proposal, commit=commit)
                if chosen is not None:
                    decided = ~state.open & state.block_mask & active[:, None]
                    reopen = _check_mask(comp, "remask", chosen, (batch, total)) & decided
                    reopened = reopen.sum(dim=1).tolist()
                    if any(reopened):
                        fresh = session.initial_noise(batch, gen_len, generators)
                        fresh = torch.cat([prompt, fresh], dim=1)
                        state.canvas = torch.where(reopen, fresh, state.canvas)
                        state.open = state.open | reopen
                        open_left = [n + r for n, r in zip(open_left, reopened)]
            if record_steps:
                pipeline.broadcast("on_step_end", state=state, record=StepRecord(
                    step=state.step, block_index=block, block_step=state.block_step,
                    active_rows=active, proposal=proposal, commit=commit,
                    reopen=torch.zeros_like(commit) if reopen is None else reopen,
                    canvas=state.canvas))
            state.step += 1
            state.block_step += 1
        if mask_id is not None:
            _check_no_mask_committed(state, mask_id, start, end)
        if eos_id is not None:
            _stop_at_eos(state, eos_id, end)
    output = GenerateOutput(sequences=state.canvas, nfe=state.nfe, prompt_length=prompt_len,
                            gen_length=gen_len, stats={"forward_calls": state.step})
    pipeline.broadcast("on_decode_end", state=state, output=output)
    return output


def _check_no_mask_committed(state: DecodeState, mask_id: int, start: int, end: int) -> None:
    """A finished block holds no [MASK]: one committed means the model's top prediction was the
    mask token. Checked once per block, not per step (the output would be corrupt either way)."""
    committed_mask = state.canvas[:, start:end] == mask_id
    if bool(committed_mask.any()):
        row, column = (int(i) for i in committed_mask.nonzero()[0])
        raise ModelError(f"the decode committed the mask token (id {mask_id}) at row {row}, answer "
                         f"position {column + start - state.prompt_length} (block {state.block_index}); "
                         f"the model puts its top probability on [MASK]. Give the mask token's "
                         f"logit -inf in the model")


def _stop_at_eos(state: DecodeState, eos_id: int, block_end: int) -> None:
    """dInfer-style early stop: a row with EOS in its finished blocks is done; the rest of its
    answer becomes EOS and costs no more forwards."""
    done = (state.canvas[:, state.prompt_length:block_end] == eos_id).any(dim=1) & ~state.finished_rows
    if not bool(done.any()):
        return
    tail = torch.zeros_like(state.open)
    tail[:, block_end:] = True
    tail &= done[:, None]
    state.canvas = state.canvas.masked_fill(tail, eos_id)
    state.open = state.open & ~tail
    state.finished_rows = state.finished_rows | done
