"""LocalLeap and SlowFast Sampling (issue 13): each equals its reference loop
(tests/published_rules.py) token for token and NFE for NFE at temperature 0, on toy models and
on the reference model, a left-padded batch decodes as its rows alone, and both pass the
conformance suite (tests/test_conformance.py runs it on the presets' defaults; here on other
options)."""

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dllm_decoding as dd
from dllm_decoding.plugins.local_leap import near_anchors
from dllm_decoding.reference import load_reference_model
from dllm_decoding.tasks import TASKS, encode_batch
from dllm_decoding.testing import ContextModel, ScriptedModel, StrategyConformance
from published_rules import local_leap_generate, slow_fast_generate
from published_loops import assert_same_as_reference, toy_logits_fn

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def cases(draw):
    vocab = draw(st.integers(5, 30))
    model = ContextModel(vocab, seed=draw(st.integers(0, 10**6)), scale=draw(st.sampled_from([1.0, 3.0, 6.0, 12.0])))
    prompt = torch.randint(0, vocab - 1, (1, draw(st.integers(1, 6))),
                           generator=torch.Generator().manual_seed(draw(st.integers(0, 999))))
    block = draw(st.sampled_from([1, 2, 3, 4, 8, 12]))
    gen_length = block * draw(st.integers(1, 3))
    return model, prompt, gen_length, block


# --------------------------------------------------------------------------- LocalLeap


def test_near_anchors_is_the_dilation_by_the_radius():
    anchors = torch.tensor([[False, False, True, False, False, False, False, True],
                            [False] * 8])
    assert near_anchors(anchors, 0).tolist() == anchors.tolist()
    assert near_anchors(anchors, 1)[0].tolist() == [False, True, True, True, False, False, True, True]
    assert near_anchors(anchors, 2)[0].tolist() == [True, True, True, True, True, True, True, True]
    assert not bool(near_anchors(anchors, 9)[1].any())


def test_local_leap_relaxes_the_threshold_next_to_an_anchor_only():
    # one anchor (0.95 at column 0); 0.8 commits at distance 1, not at distance 3 (radius 2)
    model = ScriptedModel([1, 2, 3, 4], vocab_size=6, mask_id=5, confidence=[[0.95, 0.8, 0.5, 0.8]] * 4)
    out = dd.generate(model, torch.tensor([[0, 1]]), "local_leap", gen_length=4, trace=True,
                      overrides={"select.radius": 2})
    assert out.trace.committed[0, 0].tolist() == [True, True, False, False]
    assert out.answers[0].tolist() == [1, 2, 3, 4]
    # without an anchor nothing is relaxed: the best position alone (Fast-dLLM's rule)
    model = ScriptedModel([1, 2, 3, 4], vocab_size=6, mask_id=5, confidence=[[0.85, 0.8, 0.5, 0.8]] * 4)
    out = dd.generate(model, torch.tensor([[0, 1]]), "local_leap", gen_length=4, trace=True)
    assert out.trace.committed[0, 0].tolist() == [True, False, False, False]


@SETTINGS
@given(case=cases(), threshold=st.sampled_from([0.5, 0.7, 0.9, 0.99]),
       relaxed=st.sampled_from([0.0, 0.3, 0.6, 0.75, 0.95]), radius=st.integers(0, 5))
def test_local_leap_equals_localleap(case, threshold, relaxed, radius):
    model, prompt, gen_length, block = case
    ours = dd.generate(model, prompt, "local_leap", gen_length=gen_length, block_length=block,
                       overrides={"select.threshold": threshold, "select.relaxed_threshold": relaxed,
                                  "select.radius": radius})
    assert_same_as_reference(ours, local_leap_generate(toy_logits_fn(model), prompt.clone(), gen_length=gen_length, block_length=block,
                                    mask_id=model.mask_id, threshold=threshold, relaxed_threshold=relaxed,
                                    radius=radius))


def test_local_leap_with_radius_zero_is_fast_dllm_threshold():
    model = ContextModel(11, seed=5, scale=4.0)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    a = dd.generate(model, prompt, "local_leap", gen_length=16, block_length=8, overrides={"select.radius": 0})
    b = dd.generate(model, prompt, "fast_dllm_threshold", gen_length=16, block_length=8)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.nfe, b.nfe)


# --------------------------------------------------------------------------- SlowFast


@SETTINGS
@given(case=cases(), explore=st.integers(1, 8), span=st.sampled_from([0.0, 0.1, 0.3, 0.6]),
       high=st.sampled_from([0.5, 0.85, 0.9, 0.99]), window=st.integers(1, 4),
       stability=st.sampled_from([0.5, 1.0, 2.0]), early=st.booleans(), truncate=st.booleans())
def test_slow_fast_equals_slow_fast_sampling(case, explore, span, high, window, stability, early, truncate):
    """truncate_fast (the default) runs a fast phase's later forwards on the canvas up to the
    span's end, as the reference does; False forwards the whole canvas."""
    model, prompt, gen_length, block = case
    options = {"explore_steps": explore, "span_threshold": span, "high_threshold": high, "window": window,
               "stability": stability, "end_explore_when_stable": early, "truncate_fast": truncate}
    ours = dd.generate(model, prompt, "slow_fast", gen_length=gen_length, block_length=block,
                       overrides={f"select.{k}": v for k, v in options.items()})
    assert_same_as_reference(ours, slow_fast_generate(toy_logits_fn(model), prompt.clone(), gen_length=gen_length, block_length=block,
                                   mask_id=model.mask_id, **options))


def test_slow_fast_fills_the_located_span_in_parallel():
    # p >= 0.3 reaches column 3 from the first step on: the span is [0, 4); the slow phase
    # commits one token per step (nothing reaches 0.9), the fast phase the span's rest at once
    conf = [[0.8, 0.7, 0.6, 0.5, 0.2, 0.2, 0.2, 0.2]] * 2 + [[0.8, 0.95, 0.95, 0.95, 0.2, 0.2, 0.2, 0.2]] * 8
    model = ScriptedModel(list(range(8)), vocab_size=10, mask_id=9, confidence=conf)
    out = dd.generate(model, torch.tensor([[0, 1]]), "slow_fast", gen_length=8, trace=True,
                      overrides={"select.explore_steps": 2})
    committed = out.trace.committed[:, 0]
    assert committed[0].tolist() == [True] + [False] * 7
    assert committed[1].tolist() == [False, True] + [False] * 6
    assert committed[2].tolist() == [False, False, True, True] + [False] * 4  # the fast phase
    assert out.answers[0].tolist() == list(range(8))


def test_slow_fast_before_its_first_fast_phase_is_the_threshold_rule():
    """The slow phase commits the open positions >= high_threshold, else the best: Fast-dLLM's
    rule over the block (all of a block's masks lie after the span start). With at least
    `block_length` slow steps no block reaches a fast phase, so the decode is
    fast_dllm_threshold's (at the same precision)."""
    for seed, scale in ((1, 3.0), (2, 6.0), (3, 1.0)):
        model = ContextModel(13, seed=seed, scale=scale)
        prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
        a = dd.generate(model, prompt, "slow_fast", gen_length=16, block_length=8,
                        overrides={"select.explore_steps": 8})
        b = dd.generate(model, prompt, "fast_dllm_threshold", gen_length=16, block_length=8,
                        overrides={"score.precision": "float32"})
        assert torch.equal(a.sequences, b.sequences) and torch.equal(a.nfe, b.nfe)


# --------------------------------------------------------------------------- the reference model


@pytest.fixture(scope="module")
def reference():
    return load_reference_model()


def _model_fn(model):
    def fn(ids):
        with torch.no_grad():
            return model(ids).logits
    return fn


@pytest.mark.slow
@pytest.mark.parametrize("task_name", list(TASKS))
def test_both_equal_their_references_on_the_reference_model(reference, task_name):
    """Token for token and NFE for NFE on 4 test examples of every task (one row each, blocks
    of half the answer), and the left-padded batch of them decodes as each row alone."""
    model, tokenizer = reference
    task = TASKS[task_name]
    block = task.gen_length // 2 if task.gen_length % 2 == 0 else task.gen_length
    examples = task.examples("test", 4, seed=3)
    batch, mask = encode_batch(tokenizer, examples, task)
    for preset, oracle in (("local_leap", local_leap_generate),
                           ("slow_fast", functools.partial(slow_fast_generate, truncate_fast=True))):
        batched = dd.generate(model, batch, preset, attention_mask=mask, gen_length=task.gen_length,
                              block_length=block)
        for row, example in enumerate(examples):
            prompt, _ = encode_batch(tokenizer, [example], task)
            alone = dd.generate(model, prompt, preset, gen_length=task.gen_length, block_length=block)
            ref, nfe = oracle(_model_fn(model), prompt.clone(), gen_length=task.gen_length, block_length=block,
                              mask_id=model.config.mask_token_id)
            assert torch.equal(alone.sequences, ref) and alone.nfe.tolist() == [nfe], (preset, row)
            assert torch.equal(batched.answers[row], alone.answers[0]), (preset, row)
            assert int(batched.nfe[row]) == nfe, (preset, row)


class TestLocalLeapWideRadiusConformance(StrategyConformance):
    strategy = "local_leap"
    overrides = {"select.radius": 2, "select.relaxed_threshold": 0.3}


class TestSlowFastPaperRuleConformance(StrategyConformance):
    strategy = "slow_fast"
    overrides = {"select.explore_steps": 2, "select.window": 3, "select.span_threshold": 0.1,
                 "select.high_threshold": 0.85, "select.end_explore_when_stable": True}
