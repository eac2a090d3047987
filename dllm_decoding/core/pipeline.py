"""A strategy's component instances as one pipeline: how the core calls them, checks what they
return and guards their inputs, and the per-strategy pipeline cache."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pluggy
import torch

from . import hookspecs
from .components import Component
from .config import Strategy
from .errors import ModelError, PluginError
from .manager import PluginRegistry
from .state import DecodeState, Proposal

STEP_HOOKS = ("fuse", "score", "select", "edit", "remask", "renoise", "draft", "extend", "early_commit")
LIFECYCLE_HOOKS = ("on_decode_start", "on_block_start", "on_step_end", "on_decode_end")
#: hooks any component may implement besides its step hook, every implementation called
SHARED_HOOKS = ("forward_extent",)


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
        for hook in STEP_HOOKS + LIFECYCLE_HOOKS + SHARED_HOOKS:
            callers = []
            for comp in self.components:
                impls = [i for i in getattr(pm.hook, hook).get_hookimpls() if i.plugin is comp]
                if not impls:
                    continue
                if hook in STEP_HOOKS and hook != comp.hook_point:
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
            self._guarded(hook, comp, caller, {}, **kwargs)

    def forward_extent(self, state: DecodeState) -> list[int] | None:
        """The canvas columns this step's forward covers per row: the largest any component asks
        for (a component returning None asks for the whole canvas), checked; None: all."""
        batch, total = state.canvas.shape
        extent = None
        for comp, caller in self._callers["forward_extent"]:
            asked = self._guarded("forward_extent", comp, caller, {}, state=state)
            if asked is None:
                return None
            if (not isinstance(asked, torch.Tensor) or asked.dtype != torch.long or tuple(asked.shape) != (batch,)
                    or bool(((asked <= state.block_start) | (asked > total)).any())):
                raise PluginError(f"component {comp.name!r}: forward_extent must return a long tensor of shape "
                                  f"({batch},) of canvas columns in [{state.block_start + 1}, {total}] (at least "
                                  f"one block column), or None; got {_describe(asked)}")
            extent = asked if extent is None else torch.maximum(extent, asked)
        return None if extent is None else extent.tolist()

    def fuse(self, state: DecodeState, logits: torch.Tensor) -> torch.Tensor:
        for comp, caller in self._callers["fuse"]:
            out = self._guarded("fuse", comp, caller, {"logits": logits}, state=state, logits=logits)
            if not isinstance(out, torch.Tensor) or out.shape != logits.shape or not out.is_floating_point():
                raise PluginError(f"component {comp.name!r}: fuse must return a float tensor of shape "
                                  f"{tuple(logits.shape)}, got {_describe(out)}{BLOCK_WIDTH_HINT}")
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
        watched = (*inputs.values(), state.canvas, state.open, state.active_rows)
        versions = [t._version for t in watched]
        result = self.call(hook, comp, caller, **kwargs)
        if versions != [t._version for t in watched]:
            names = [*inputs, "state.canvas", "state.open", "state.active_rows"]
            changed = next(n for n, t, v in zip(names, watched, versions) if t._version != v)
            view = {"state.open": " (state.selectable is a view of it)",
                    "state.canvas": " (state.block_canvas is a view of it)"}.get(changed, "")
            raise PluginError(f"component {comp.name!r} modified its input {changed!r} in place "
                              f"in hook {hook!r}{view}; hooks must return new tensors (x = x + y, not "
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


#: appended to shape errors: plugins written for dllm-decoding 0.1 saw canvas-wide tensors
BLOCK_WIDTH_HINT = ("; step hooks see the current block only: logits (B, L, V), proposals and masks "
                    "(B, L), L = block_length (docs/writing-a-plugin.md, 'Block-width step hooks')")


def check_mask(comp: Component, hook: str, value: Any, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.bool or tuple(value.shape) != shape:
        raise PluginError(f"component {comp.name!r}: {hook} must return a bool tensor of shape "
                          f"{shape}, got {_describe(value)}{BLOCK_WIDTH_HINT}")
    return value


def check_tokens(comp: Component, hook: str, value: Any, shape: tuple[int, ...], vocab: int) -> torch.Tensor:
    """A hook's token ids: a long tensor of ``shape`` inside the vocabulary (one sync)."""
    if not isinstance(value, torch.Tensor) or value.dtype != torch.long or tuple(value.shape) != shape:
        raise PluginError(f"component {comp.name!r}: {hook} must return a long tensor of shape "
                          f"{shape}, got {_describe(value)}{BLOCK_WIDTH_HINT}")
    if bool(((value < 0) | (value >= vocab)).any()):
        raise PluginError(f"component {comp.name!r}: {hook} returned token ids outside the vocabulary [0, {vocab})")
    return value


def check_proposal(comp: Component, value: Any, shape: tuple[int, int]) -> Proposal:
    if not isinstance(value, Proposal):
        raise PluginError(f"component {comp.name!r}: score must return a Proposal, got {_describe(value)}")
    for field, kind, ok in (("tokens", "long", lambda t: t.dtype == torch.long),
                            ("confidence", "float", lambda t: t.is_floating_point())):
        tensor = getattr(value, field)
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape or not ok(tensor):
            raise PluginError(f"component {comp.name!r}: Proposal.{field} must be a {kind} tensor of "
                              f"shape {shape}, got {_describe(tensor)}{BLOCK_WIDTH_HINT}")
    if not isinstance(value.logits, torch.Tensor):
        raise PluginError(f"component {comp.name!r}: Proposal.logits must be the fused logits it "
                          f"scored, got {_describe(value.logits)}")
    return value


def tracer(trace: bool) -> list[Component]:
    from .trace import TraceRecorder

    return [TraceRecorder()] if trace else []


_PIPELINES: dict[tuple[str, int, bool], Pipeline] = {}
_PIPELINES_LOCK = threading.Lock()  # decodes may run in threads: the cache is shared


def cached_pipeline(strat: Strategy, registry: PluginRegistry, trace: bool) -> Pipeline:
    """Components keep no per-decode memory on themselves (it lives in the decode state), so
    one pipeline per (strategy, registry) serves every decode; building one costs ~1 ms."""
    key = (strat.model_dump_json(), id(registry), trace)
    with _PIPELINES_LOCK:
        pipeline = _PIPELINES.get(key)
        if pipeline is None or pipeline.registry is not registry:
            if len(_PIPELINES) >= 64:
                _PIPELINES.pop(next(iter(_PIPELINES)))
            pipeline = _PIPELINES[key] = Pipeline(strat.instantiate(registry) + tracer(trace))
            pipeline.registry = registry
    return pipeline


def check_committed_tokens(proposal: Proposal, commit: torch.Tensor, logits: torch.Tensor,
                            fused: torch.Tensor, pipeline: Pipeline, scorer: Component,
                            state: DecodeState) -> None:
    """Every committed token is a real token (in the vocabulary, not [MASK]) and no open
    position has a NaN confidence; one sync per step. On failure, find who is at fault: the
    model (its own argmax is [MASK]), the fuse chain (its output is NaN or its argmax is [MASK])
    or the score component."""
    tokens, confidence = proposal.tokens, proposal.confidence
    bad = (tokens < 0) | (tokens >= state.vocab_size)
    if state.mask_id is not None:
        bad = bad | (tokens == state.mask_id)
    bad = bad & commit
    nan = torch.isnan(confidence) & state.selectable
    if not bool(bad.any() | nan.any()):
        return
    fusers = [c.name for c, _ in pipeline._callers["fuse"]]
    fuse_chain = f"the fuse component{'s' if len(fusers) > 1 else ''} {', '.join(map(repr, fusers))}"
    if bool(nan.any()):
        row, column = (int(i) for i in nan.nonzero()[0])
        culprit = fuse_chain if fusers and bool(torch.isnan(fused[row, column]).any()) else f"score component {scorer.name!r}"
        raise PluginError(f"{culprit} produced NaN at row {row}, answer position "
                          f"{state.block_start + column - state.prompt_length}, although the model's logits "
                          f"there are finite")
    row, column = (int(i) for i in bad.nonzero()[0])
    token = int(tokens[row, column])
    where = f"row {row}, answer position {state.block_start + column - state.prompt_length} (block {state.block_index})"
    if token != state.mask_id:
        raise PluginError(f"score component {scorer.name!r} proposed token id {token} at {where}, outside "
                          f"the vocabulary [0, {state.vocab_size})")
    if int(logits[row, column].argmax()) == state.mask_id:
        raise ModelError(f"the decode committed the mask token (id {state.mask_id}) at {where}; the model "
                         f"puts its top probability on [MASK]. Give the mask token's logit -inf in the model")
    if fusers and int(fused[row, column].argmax()) == state.mask_id:
        raise PluginError(f"{fuse_chain} made the mask token (id {state.mask_id}) the most likely token at "
                          f"{where}, though the model's own top token is {int(logits[row, column].argmax())}")
    raise PluginError(f"score component {scorer.name!r} proposed the mask token (id {state.mask_id}) at "
                      f"{where}, though it is not the top token of the logits it scored (at temperature > 0 "
                      f"it can be sampled when the model gives [MASK] a finite logit: make it -inf)")
