"""Hook specifications: the whole contract between the core loop and plugins.

Every function here is a docstring-only spec in pytest's style. Hooks are always called with
keyword arguments only, so an implementation may accept any subset of the parameters, in any
order.

There are two kinds of hooks:

* **Discovery hooks** (``dllm_decoding_*``) are implemented by plugin *modules* (built-in ones in
  ``dllm_decoding.plugins`` and third-party ones found through the ``dllm_decoding`` entry-point
  group). They tell the framework which components exist.
* **Component hooks** (``fuse``, ``score``, ``select``, ``edit``, ``remask``, ``renoise``,
  ``draft`` and the ``on_*`` lifecycle hooks) are implemented by *component instances*: a
  strategy names one component per hook point (several, in order, for ``fuse``), the core
  instantiates them with their validated options and calls them once per step with batched
  tensors, never per token.

Tensor conventions for component hooks: ``B`` rows, ``L = block_length`` positions of the
current block, ``V`` vocabulary entries. **Step hooks see the current block only**: logits are
``(B, L, V)``, proposals and masks ``(B, L)``; column ``j`` is canvas position
``state.block_start + j`` (only the block can change in a step, so work per step scales with the
block, not the canvas; ``state.canvas`` and ``state.open`` stay ``(B, T)``, ``state.selectable``
and ``state.block_canvas`` are their block columns). Hooks see the whole batch;
``state.active_rows`` says which rows are being decoded this step (logits of inactive rows are
zeros and their results are ignored). A hook never modifies its inputs or the state in place;
it returns new tensors (a component's own memory in ``state.plugin_state`` is its own to update).
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "dllm_decoding"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --------------------------------------------------------------------------- discovery hooks


@hookspec
def dllm_decoding_register_components(register):
    """Register decoding components (subclasses of :class:`dllm_decoding.Component`).

    :param register: call ``register(ComponentClass)`` once per component. A component's
        ``name`` must be unique across all plugins; registering a second component under an
        existing name is an error that names both plugins.

    All implementations are called.
    """


@hookspec
def dllm_decoding_register_strategies(register):
    """Register strategy presets shipped by a plugin.

    :param register: call ``register(name, source)`` where ``source`` is a path to a TOML file
        or a mapping with the same content. Preset names must be unique.

    All implementations are called.
    """


# --------------------------------------------------------------------------- step hooks


@hookspec
def fuse(state, logits):
    """Transform this step's logits before scoring (credit fusion, temperature, processors).

    :param state: the :class:`~dllm_decoding.DecodeState` of this decode.
    :param logits: float tensor ``(B, L, V)``: the model's logits for the current block, or the
        previous fuse component's output. Must not be modified in place.
    :return: a new float tensor of the same shape (its dtype may be promoted, e.g. bf16 logits
        plus float32 credit give float32, as the reference implementations do).

    Fuse components run one after another in the order the strategy lists them; each receives
    the previous one's result.
    """


@hookspec(firstresult=True)
def score(state, logits):
    """Propose a token and a confidence for every position of the current block.

    :param state: the decode state.
    :param logits: the fused block logits ``(B, L, V)``.
    :return: a :class:`~dllm_decoding.Proposal` (``tokens`` ``(B, L)`` long, ``confidence``
        ``(B, L)`` float, larger = more certain, ``logits`` the logits it scored). The core
        checks every committed token: one outside the vocabulary, the mask token, or a NaN
        confidence is a ``PluginError`` naming this component (or the fuse chain, or the model,
        when the fault is theirs).

    First result wins; a strategy has exactly one score component.
    """


@hookspec(firstresult=True)
def select(state, proposal):
    """Choose which open positions of the current block commit their proposed token now.

    :param state: the decode state (``state.selectable`` ``(B, L)`` says what may be chosen;
        ``state.block_step`` and ``state.steps_per_block`` give the schedule position).
    :param proposal: the :class:`~dllm_decoding.Proposal` of this step.
    :return: bool tensor ``(B, L)``. The core intersects it with ``state.selectable`` and, for a
        row that would commit nothing, commits its most confident selectable position (the
        progress guarantee; never a prompt or decided position, -inf confidences included),
        except in renoising strategies (see ``renoise``), whose blocks end at their step budget.

    First result wins; a strategy has exactly one select component.
    """


@hookspec(firstresult=True)
def edit(state, proposal, commit):
    """Optionally replace decided tokens of the current block by better ones, without reopening
    them as noise (token-to-token editing, as LLaDA2.1 / SGLang's ``JointThreshold`` does).

    :param state: the decode state, *after* this step's commits were applied.
    :param proposal: this step's proposal.
    :param commit: bool ``(B, L)``: the block positions committed in this step.
    :return: bool tensor ``(B, L)`` of positions that take ``proposal.tokens`` now, or None.
        The core restricts it to positions decided *before* this step in active rows, where the
        proposed token differs from the current one (the same checks as committed tokens apply).

    With an ``edit`` component a block does not end when its last position is committed: a row
    keeps taking steps in the block while its previous step changed something (a commit or an
    edit), and never beyond ``max_steps_per_block`` steps, so every decode ends. NFE counts
    these steps. First result wins; at most one edit component per strategy.
    """


@hookspec(firstresult=True)
def remask(state, proposal, commit):
    """Optionally send already decided positions of the current block back to noise.

    :param state: the decode state, *after* this step's commits were applied.
    :param proposal: this step's proposal.
    :param commit: bool ``(B, L)``: the block positions committed in this step.
    :return: bool tensor ``(B, L)`` of block positions to reopen. The core restricts it to
        decided positions of active rows, never reopens everything a row has decided in the
        block (it keeps the rightmost decided one), and stops calling ``remask`` once a block
        has used ``max_steps_per_block`` steps, so every decode ends.

    First result wins; at most one remask component per strategy.
    """


@hookspec(firstresult=True)
def renoise(state, proposal, commit):
    """Uniform-noise decoding: the tokens the block's still-open positions hold for the next
    forward (DiffusionGemma's sampler keeps the sampled token where it accepts one and draws a
    fresh random token everywhere else, every step).

    :param state: the decode state, *after* this step's commits and remasks were applied.
    :param proposal: this step's proposal; None in the call at a block's start, before its
        first forward, where the component may set the block's starting tokens (None: keep the
        model's noise).
    :param commit: bool ``(B, L)``: the block positions committed in this step (None at a
        block's start).
    :return: long tensor ``(B, L)`` of token ids in ``[0, vocab_size)``, or None (keep the
        current tokens). The core writes them at the block positions still open in active rows;
        it calls the hook in every step of every active row, also in a row's last step of the
        block, so a component that draws random tokens draws in the same order as a reference
        loop that renoises before it checks whether to stop.

    With a ``renoise`` component every open position is re-decided each step, so the core's
    one-commit-per-step guarantee does not apply: ``select`` may commit nothing (or the whole
    block at once, when its stopping rule fires), and a block ends at the latest after
    ``max_steps_per_block`` steps, when every position still open commits its proposed token.
    First result wins; at most one renoise component per strategy.
    """


@hookspec(firstresult=True)
def draft(state, proposal, commit):
    """Optionally draft the canvases the next steps will reach, to verify them in one batched
    forward (FreeDave's draft-and-verify: the output stays the rule's own, in fewer forwards).

    :param state: the decode state at the end of this step (commits, edits, remasks applied).
    :param proposal: this step's proposal.
    :param commit: bool ``(B, L)``: the block positions committed in this step.
    :return: None, or a long tensor ``(B, D, L)``: ``D`` drafted contents of the current block
        per row. The core forwards the drafted canvases of every row that still has open
        positions and whose canvas is not already a kept draft, all in one batched model call
        (one forward per drafting row in NFE), and keeps their block logits until the block
        ends; a later step whose canvas equals a kept draft uses its logits and costs no forward.
        A wrong draft costs compute, never changes the output (for a model whose logits depend
        on the canvas alone, not on the batch). Not with a key-value cache.

    First result wins; at most one draft component per strategy.
    """


@hookspec(firstresult=True)
def extend(state):
    """Optionally add extra positions to this step's forward (a forward transform: WINO's
    shadow block, a copy of the block all ``[MASK]`` in which each position sees everything but
    its own block column, so one forward also gives every decided token's verification score).

    :param state: the decode state before the step's forward.
    :return: None, or an :class:`~dllm_decoding.Extension` (``tokens`` ``(B, E)``,
        ``positions`` ``(B, E)`` canvas columns whose positions they take, ``sees`` ``(B, E, T)``
        which canvas columns each attends to). The session runs the model once on the canvas
        plus these positions with a 4-D attention mask in which no canvas position sees an extra
        one; their logits are ``state.extension_logits`` ``(B, E, V)`` for this step's hooks.
        Needs a model whose forward takes a 4-D ``attention_mask`` and ``position_ids`` (ours
        do); not with a key-value cache or drafts. NFE is unchanged (one forward per step).

    First result wins; at most one extend component per strategy.
    """


@hookspec(firstresult=True)
def early_commit(state, proposal, logits):
    """Optionally end rows' answers now: every position still open in the whole answer, later
    blocks included, takes the argmax of this forward's logits (Prophet's early commit: once
    the model is sure of its answer, fill the rest of the canvas and stop).

    :param state: the decode state after this step's select, before its commits are written.
    :param proposal: this step's proposal (block-width).
    :param logits: float ``(B, T, V)``: this forward's logits for the *whole canvas*, as the
        model returned them (no fuse; zeros for rows not forwarded). Read-only. Needs a session
        that returns canvas-wide logits (not a key-value cache's block windows).
    :return: bool ``(B,)`` of rows whose answer ends now, or None. The core restricts it to
        active rows; their open block positions commit ``proposal.tokens`` this step (as if
        selected), the open positions after the block take the argmax (``record.filled``), and
        the rows cost no more forwards. Not with drafts.

    First result wins; at most one early_commit component per strategy.
    """


@hookspec
def forward_extent(state):
    """Optionally run this step's forward on a prefix of the canvas only (SlowFast's fast phase
    runs the model on the canvas up to its span's end: later columns are neither computed nor
    attended to). Any component may implement it next to its step hook.

    :param state: the decode state before the step's forward.
    :return: None (the whole canvas), or a long tensor ``(B,)`` of canvas columns: row ``b``'s
        forward covers columns ``[0, extent[b])``, at least one column of the current block. The
        core runs the rows forwarded together on the longest of their prefixes, with the columns
        beyond a row's own extent hidden from it (as padding is), so each row gets the logits of
        its own truncated canvas; block columns beyond a row's extent get zero logits (a uniform
        distribution): the rule must not commit there. Not with extra positions, canvas-wide
        logits, drafts or a key-value cache. Every implementation is called; the largest extent
        wins.
    """


# --------------------------------------------------------------------------- lifecycle hooks


@hookspec
def on_decode_start(state):
    """Called once after the decode state is built, before the first forward.

    Stateful components initialise their per-decode memory here, in
    ``state.plugin_state[self.state_key]`` (never on ``self``: one strategy object may serve
    concurrent decodes).
    """


@hookspec
def on_block_start(state):
    """Called when a new semi-autoregressive block starts (``state.block_index`` is set)."""


@hookspec
def on_step_end(state, record):
    """Called after every step with the step's :class:`~dllm_decoding.StepRecord` (its
    proposal and masks are block-width, ``record.block_start`` says where the block starts).

    Observers (trace recorder, progress bars) use it. Skipped entirely, record and all, when no
    component implements it.
    """


@hookspec
def on_decode_end(state, output):
    """Called once with the finished :class:`~dllm_decoding.GenerateOutput`."""
