"""Toy models and a conformance suite for unit-testing decoders and strategies.

* :class:`ScriptedModel`: you say which token each answer position predicts, with what
  probability, at each forward ("position 3 becomes confident at step 2").
* :class:`ContextModel`: a deterministic pseudo-random model whose predictions depend on the
  whole canvas, exactly invariant to left padding: good for property-based tests.
* :class:`StrategyConformance`: subclass it in your test suite with ``strategy = ...`` to run
  every invariant of the framework (hypothesis properties) against your own strategy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .core.denoiser import DecodeSession, Denoiser

NEG_INF = float("-inf")


def _distribution_logits(tokens: torch.Tensor, prob: torch.Tensor, vocab_size: int,
                         mask_id: int | None) -> torch.Tensor:
    """Logits whose softmax puts ``prob`` on ``tokens`` and spreads the rest evenly over the
    other non-mask tokens; the mask token gets -inf."""
    others = vocab_size - 1 - (mask_id is not None)
    prob = prob.to(torch.float64).clamp(1e-12, 1.0)
    rest = ((1.0 - prob) / max(others, 1)).clamp(min=0.0)
    logits = torch.log(rest)[..., None].expand(*tokens.shape, vocab_size).clone()
    logits.scatter_(-1, tokens[..., None], torch.log(prob)[..., None])
    if mask_id is not None:
        logits[..., mask_id] = NEG_INF
    return logits


class _ScriptedSession(DecodeSession):
    def __init__(self, denoiser: ScriptedModel, attention_mask: torch.Tensor) -> None:
        super().__init__(denoiser, attention_mask)
        self.calls = torch.zeros(attention_mask.shape[0], dtype=torch.long, device=attention_mask.device)

    def forward(self, canvas, rows):
        den: ScriptedModel = self.denoiser  # type: ignore[assignment]
        device = canvas.device
        rows = torch.arange(canvas.shape[0], device=device) if rows is None else rows
        step = self.calls[rows].clamp(max=den.confidence.shape[0] - 1)  # (b,)
        self.calls[rows] += 1
        g = den.confidence.shape[-1]
        prompt_len = canvas.shape[1] - g
        script = den.tokens if den.row_answers is None else den.row_answers
        answer_tokens = script.to(device)[step if den.row_answers is None else rows]
        answer_prob = den.confidence.to(device)[step]
        tokens = torch.cat([canvas[:, :prompt_len], answer_tokens], dim=1)
        prob = torch.cat([torch.ones(canvas.shape[0], prompt_len, dtype=torch.float64, device=device), answer_prob], dim=1)
        return _distribution_logits(tokens, prob, den.vocab_size, den.mask_id).to(den.dtype)

    def forward_prefix(self, canvas, rows, visible):
        """The script does not depend on the canvas: a prefix gets its columns of the step's
        predictions (the rest of the canvas is the placeholder it would hold)."""
        width = self.attention_mask.shape[1]
        full = torch.cat([canvas, canvas.new_zeros(canvas.shape[0], width - canvas.shape[1])], dim=1)
        return self.forward(full, rows)[:, :canvas.shape[1]]


class ScriptedModel(Denoiser):
    """A denoiser whose answer-region predictions follow a script, per forward of each row.

    :param answer: ``(G,)`` the token each answer position predicts (or ``(B, G)`` per row).
    :param confidence: ``(S, G)`` probability of the predicted token at the row's forward ``s``
        (the last row repeats for later forwards); or use :meth:`from_schedule`.
    :param tokens: optional ``(S, G)`` per-forward predicted tokens overriding ``answer`` (to
        script a position that is wrong first and right later).
    """

    def __init__(self, answer: Sequence[int] | torch.Tensor, *, vocab_size: int, mask_id: int,
                 confidence: Sequence[Sequence[float]] | torch.Tensor | None = None,
                 tokens: Sequence[Sequence[int]] | torch.Tensor | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        answer = torch.as_tensor(answer, dtype=torch.long)
        g = answer.shape[-1]
        if confidence is None:
            confidence = torch.full((1, g), 0.9)
        self.confidence = torch.as_tensor(confidence, dtype=torch.float64)
        if self.confidence.dim() != 2 or self.confidence.shape[1] != g:
            raise ValueError(f"confidence must have shape (steps, {g}), got {tuple(self.confidence.shape)}")
        if answer.dim() == 2 and tokens is not None:
            raise ValueError("per-row answers (B, G) cannot be combined with a tokens script")
        if tokens is None and answer.dim() == 1:
            tokens = answer.expand(self.confidence.shape[0], g)
        self.tokens = None if tokens is None else torch.as_tensor(tokens, dtype=torch.long)
        self.row_answers = answer if answer.dim() == 2 else None  # (B, G), fixed over steps
        scripted = answer if self.tokens is None else torch.cat([self.tokens.flatten(), answer.flatten()])
        if int(scripted.max()) >= vocab_size or int(scripted.min()) < 0:
            raise ValueError("scripted tokens must be in [0, vocab_size)")
        if bool((scripted == mask_id).any()):
            raise ValueError("scripted tokens must not be the mask token")
        self.vocab_size, self.mask_id, self.dtype = vocab_size, mask_id, dtype
        self.name = "ScriptedModel"

    @classmethod
    def from_schedule(cls, answer: Sequence[int], *, vocab_size: int, mask_id: int,
                      confident_at: Mapping[int, int], low: float = 0.3, high: float = 0.95,
                      steps: int | None = None) -> ScriptedModel:
        """Every answer position predicts its ``answer`` token with probability ``low`` until
        forward ``confident_at[position]`` (0-based), then ``high``. Positions missing from
        ``confident_at`` stay at ``low``."""
        g = len(answer)
        steps = steps or max([g, *[s + 1 for s in confident_at.values()]])
        conf = torch.full((steps, g), low, dtype=torch.float64)
        for pos, step in confident_at.items():
            conf[step:, pos] = high
        return cls(answer, vocab_size=vocab_size, mask_id=mask_id, confidence=conf)

    def start_session(self, attention_mask):
        return _ScriptedSession(self, attention_mask)


class _ContextSession(DecodeSession):
    def forward(self, canvas, rows):
        return self._forward(canvas, self.rows_mask(rows))

    def forward_prefix(self, canvas, rows, visible):
        """A canvas prefix: the context sums what each row sees (its own prefix, real tokens)."""
        return self._forward(canvas, self.rows_mask(rows)[:, :canvas.shape[1]] * visible)

    def _forward(self, canvas, mask):
        den: ContextModel = self.denoiser  # type: ignore[assignment]
        position = (mask.cumsum(dim=1) - 1).clamp(min=0)  # relative to the first real token
        weights = den.position_weight.to(canvas.device)[position]  # (b, T) int64
        # exact integer context summary: unaffected by left padding (pads weigh 0)
        context = ((canvas * weights * mask).sum(dim=1) % 997).to(torch.float64)  # (b,)
        return self._logits(context[:, None], position)

    def forward_extended(self, canvas, rows, extension):
        """Each extra position's context is the weighted sum of what it sees (the canvas
        columns ``extension.sees`` names, real tokens only, and every extra position), at the
        position of its column; the canvas' logits are the plain forward's."""
        den: ContextModel = self.denoiser  # type: ignore[assignment]
        mask = self.rows_mask(rows)
        position = (mask.cumsum(dim=1) - 1).clamp(min=0)
        weights = den.position_weight.to(canvas.device)[position]
        extra_position = position.gather(1, extension.positions)
        extra_weights = den.position_weight.to(canvas.device)[extra_position]
        seen = ((canvas * weights * mask)[:, None, :] * extension.sees).sum(dim=2)  # (b, E)
        context = ((seen + (extension.tokens * extra_weights).sum(dim=1, keepdim=True)) % 997).to(torch.float64)
        return self.forward(canvas, rows), self._logits(context, extra_position)

    def _logits(self, context: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """``(b, n, V)`` logits for contexts ``(b, n)`` (or ``(b, 1)``) at positions ``(b, n)``."""
        den: ContextModel = self.denoiser  # type: ignore[assignment]
        phase = den.phase.to(position.device)[position]  # (b, n, V)
        frequency = den.frequency.to(position.device)
        logits = (den.scale * torch.sin(context[..., None] * frequency + phase)).to(den.dtype)
        if den.mask_id is not None:
            logits[..., den.mask_id] = NEG_INF
        return logits


class ContextModel(Denoiser):
    """Deterministic pseudo-random logits that depend on every token of the canvas (so decoding
    choices change later predictions) and on positions relative to the first real token, using
    integer arithmetic for the context so a row decodes identically alone or in a padded batch.

    ``scale`` sets how peaked the distributions are (larger = more confident).
    """

    def __init__(self, vocab_size: int = 8, mask_id: int | None = None, *, seed: int = 0,
                 scale: float = 4.0, max_positions: int = 512, dtype: torch.dtype = torch.float32) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.vocab_size = vocab_size
        self.mask_id = vocab_size - 1 if mask_id is None else mask_id
        self.scale = scale
        self.position_weight = torch.randint(1, 97, (max_positions,), generator=gen)
        self.phase = torch.rand(max_positions, vocab_size, generator=gen, dtype=torch.float64) * 2 * math.pi
        self.frequency = torch.rand(vocab_size, generator=gen, dtype=torch.float64) * 0.37 + 0.01
        self.dtype = dtype  # float32 like real models: presets' softmax precision then matters
        self.name = f"ContextModel(seed={seed})"

    def start_session(self, attention_mask):
        return _ContextSession(self, attention_mask)


def registry_with(*components: Any) -> Any:
    """A registry of the built-in components and presets plus ``components`` (Component classes;
    no entry-point plugins): unit-test a component without packaging it as a plugin."""
    from .core.hookspecs import hookimpl
    from .core.manager import get_registry, make_plugin_manager

    class _Plugin:
        @staticmethod
        @hookimpl
        def dllm_decoding_register_components(register):
            for component in components:
                register(component)

    return get_registry(make_plugin_manager(load_entrypoints=False, plugins=[_Plugin()]))


def refuses_kv_cache(strategy: Any) -> bool:
    """Whether a strategy is refused with the key-value cache, by design: it drafts canvases,
    adds extra positions to the forward, or reads canvas-wide logits (an early commit, KLASS's
    answer-wide history), none of which a cached block window gives."""
    from .core.config import load_strategy

    strat = load_strategy(strategy)
    return (strat.draft is not None or strat.extend is not None or strat.early_commit is not None
            or any(getattr(c, "needs_canvas_logits", False) for c in strat.instantiate()))


# --------------------------------------------------------------------------- conformance suite


def _conformance_suite() -> type:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from .core.config import load_strategy
    from .core.loop import generate

    @st.composite
    def decode_cases(draw: Any) -> dict[str, Any]:
        vocab = draw(st.integers(4, 9))
        batch = draw(st.integers(1, 3))
        lengths = draw(st.lists(st.integers(1, 5), min_size=batch, max_size=batch))
        width = max(lengths)
        prompt = torch.zeros(batch, width, dtype=torch.long)
        attention = torch.zeros(batch, width, dtype=torch.long)
        for row, n in enumerate(lengths):
            tokens = draw(st.lists(st.integers(0, vocab - 2), min_size=n, max_size=n))
            prompt[row, width - n:] = torch.tensor(tokens)
            attention[row, width - n:] = 1
        block = draw(st.sampled_from([1, 2, 3, 4]))
        gen_length = block * draw(st.integers(1, 3))
        return {"vocab": vocab, "prompt": prompt, "attention_mask": attention,
                "lengths": lengths, "gen_length": gen_length, "block_length": block,
                "model_seed": draw(st.integers(0, 2**16)), "scale": draw(st.sampled_from([1.0, 4.0, 12.0])),
                "seed": draw(st.integers(0, 2**16))}

    class StrategyConformance:
        """Property-based invariants every strategy must satisfy. Subclass with
        ``strategy = "<preset>" | path | dict`` (and optionally ``overrides = {...}``)."""

        strategy: Any = None
        overrides: Mapping[str, Any] = {}

        def _decode(self, case: dict[str, Any], prompt=None, attention_mask=None, **extra: Any):
            model = ContextModel(case["vocab"], seed=case["model_seed"], scale=case["scale"])
            overrides = {**self.overrides, **extra.pop("overrides", {})}
            steps = case["gen_length"]
            return model, generate(
                model, case["prompt"] if prompt is None else prompt, self.strategy,
                attention_mask=case["attention_mask"] if attention_mask is None else attention_mask,
                gen_length=case["gen_length"], block_length=case["block_length"], steps=steps,
                overrides=overrides, **{"seed": case["seed"], **extra})

        def _revises(self) -> bool:
            """Whether the strategy may change decided tokens (a remask or an edit component)."""
            strat = load_strategy(self.strategy, {**self.overrides})
            return strat.remask is not None or strat.edit is not None

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=decode_cases())
        def test_prompt_untouched_no_mask_left(self, case):
            model, out = self._decode(case)
            width = case["prompt"].shape[1]
            real = case["attention_mask"].bool()
            assert torch.equal(out.sequences[:, :width][real], case["prompt"][real])
            assert out.sequences.shape == (case["prompt"].shape[0], width + case["gen_length"])
            assert not bool((out.answers == model.mask_id).any())

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=decode_cases())
        def test_monotone_unmasking_and_nfe_bound(self, case):
            _, out = self._decode(case, trace=True)
            trace = out.trace
            if self._revises():  # decided tokens may change: the bound on forwards still holds
                blocks = case["gen_length"] // case["block_length"]
                bound = blocks * (2 * case["block_length"] + case["block_length"])
                assert bool((out.nfe <= bound).all())
                return
            # every position commits exactly once, to its final token, and never changes after
            assert torch.equal(trace.committed.sum(dim=0), torch.ones_like(trace.final))
            assert not bool(trace.reopened.any())
            committed_tokens = torch.where(trace.committed, trace.argmax, 0).sum(dim=0)
            assert torch.equal(committed_tokens, trace.final)
            strat = load_strategy(self.strategy, {**self.overrides})
            if strat.renoise is not None:  # positions are re-decided every step: the budget bounds a block
                budget = strat.max_steps_per_block or 2 * case["block_length"]
                assert bool((out.nfe <= budget * (case["gen_length"] // case["block_length"])).all())
            else:  # every active row commits at least one position per step
                per_step = trace.committed.sum(dim=2)
                assert bool((per_step[trace.active] >= 1).all())
                assert bool((out.nfe <= case["gen_length"]).all())
            if strat.draft is None:
                assert torch.equal(out.nfe, trace.active.sum(dim=0))
            else:  # a step that reached a drafted canvas costs no forward
                assert bool((out.nfe <= trace.active.sum(dim=0)).all())

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=decode_cases())
        def test_blocks_finish_in_order(self, case):
            _, out = self._decode(case, trace=True)
            steps = out.trace.commit_step()  # (B, G): last commit step of each position
            blocks = steps.view(steps.shape[0], -1, case["block_length"])
            first_commit = torch.where(out.trace.committed, torch.arange(out.trace.num_steps)[:, None, None], 10**9).amin(0)
            first = first_commit.view_as(blocks)
            if load_strategy(self.strategy, {**self.overrides}).early_commit is None:
                assert bool((blocks.amax(dim=2)[:, :-1] < first.amin(dim=2)[:, 1:]).all())
            else:  # an early commit fills the later blocks in the step that ends the current one
                assert bool((blocks.amax(dim=2)[:, :-1] <= first.amin(dim=2)[:, 1:]).all())

        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=decode_cases(), temperature=st.sampled_from([0.0, 0.8]))
        def test_same_seed_same_output(self, case, temperature):
            _, a = self._decode(case, temperature=temperature)
            _, b = self._decode(case, temperature=temperature)
            assert torch.equal(a.sequences, b.sequences) and torch.equal(a.nfe, b.nfe)

        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=decode_cases())
        def test_batch_equals_rows_one_by_one(self, case):
            seeds = [case["seed"] + 7 * row for row in range(len(case["lengths"]))]
            _, batched = self._decode(case, seed=seeds)
            width = case["prompt"].shape[1]
            for row, n in enumerate(case["lengths"]):
                prompt = case["prompt"][row:row + 1, width - n:]
                _, alone = self._decode(case, prompt=prompt, attention_mask=torch.ones_like(prompt),
                                        seed=[seeds[row]])
                assert torch.equal(alone.answers[0], batched.answers[row]), f"row {row} differs"
                assert int(alone.nfe[0]) == int(batched.nfe[row])

    return StrategyConformance


def __getattr__(name: str) -> Any:  # hypothesis is a test dependency: import it only when asked
    if name == "StrategyConformance":
        cls = _conformance_suite()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
