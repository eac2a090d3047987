"""Issue 13's rules that fit fuse / score / select / remask: each equals its reference loop
(tests/published_rules.py) token for token and NFE for NFE at temperature 0 where the hooks can
express it, and passes the conformance suite."""

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dllm_decoding as dd
from dllm_decoding.testing import ContextModel, ScriptedModel, StrategyConformance
from published_rules import dus_generate, klass_generate, pc_sampler_generate, prophet_generate, saber_generate
from published_loops import assert_same_as_reference, toy_logits_fn

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def cases(draw, one_block=False):
    vocab = draw(st.integers(5, 30))
    model = ContextModel(vocab, seed=draw(st.integers(0, 10**6)), scale=draw(st.sampled_from([1.0, 3.0, 6.0, 12.0])))
    prompt = torch.randint(0, vocab - 1, (1, draw(st.integers(1, 6))),
                           generator=torch.Generator().manual_seed(draw(st.integers(0, 999))))
    block = draw(st.sampled_from([1, 2, 3, 4, 8]))
    gen_length = block * (1 if one_block else draw(st.integers(1, 3)))
    return model, prompt, gen_length, block


@SETTINGS
@given(case=cases(), kl=st.sampled_from([0.001, 0.01, 0.1, 1.0]), history=st.integers(1, 3),
       threshold=st.sampled_from([0.0, 0.3, 0.6, 0.9]), k=st.integers(1, 3))
def test_klass_equals_d2cache(case, kl, history, threshold, k):
    """Several blocks included: the KL history is answer-wide, as d2Cache keeps it."""
    model, prompt, gen_length, block = case
    ours = dd.generate(model, prompt, "klass", gen_length=gen_length, block_length=block,
                       overrides={"select.kl_threshold": kl, "select.history": history,
                                  "select.threshold": threshold, "select.k": k})
    assert_same_as_reference(ours, klass_generate(toy_logits_fn(model), prompt.clone(), gen_length=gen_length, block_length=block,
                               mask_id=model.mask_id, vocab_size=model.vocab_size, kl_threshold=kl,
                               history=history, threshold=threshold, k=k))


@SETTINGS
@given(case=cases(), bounds=st.sampled_from([(7.5, 5.0, 2.5), (1.0, 0.5, 0.2), (3.0, 2.0, 1.0)]),
       start=st.integers(0, 3), length=st.integers(1, 5), per_block=st.integers(1, 8))
def test_prophet_equals_prophet(case, bounds, start, length, per_block):
    """Several blocks included: the early commit fills every later block from the triggering
    forward and ends the decode, as Prophet does."""
    model, prompt, gen_length, block = case
    start = min(start, gen_length - 1)
    steps = min(per_block, block) * (gen_length // block)
    early, mid, late = bounds
    ours = dd.generate(model, prompt, "prophet_early_commit", gen_length=gen_length, block_length=block, steps=steps,
                       overrides={"early_commit.early": early, "early_commit.mid": mid, "early_commit.late": late,
                                  "early_commit.answer_start": start, "early_commit.answer_length": length})
    assert_same_as_reference(ours, prophet_generate(toy_logits_fn(model), prompt.clone(), steps=steps, gen_length=gen_length,
                                 block_length=block, mask_id=model.mask_id, answer_start=start,
                                 answer_length=length, early=early, mid=mid, late=late))


@SETTINGS
@given(case=cases(), lambd=st.sampled_from([0.05, 0.25, 1.0]), alpha=st.sampled_from([0.5, 1.0, 10.0]),
       per_block=st.integers(1, 8), data=st.data())
def test_pc_sampler_equals_neuir(case, lambd, alpha, per_block, data, tmp_path_factory):
    model, prompt, gen_length, block = case
    per_block = min(per_block, block)
    steps = per_block * (gen_length // block)
    counts = data.draw(st.lists(st.integers(1, 1000), min_size=model.vocab_size, max_size=model.vocab_size))
    path = tmp_path_factory.mktemp("freq") / "corpus.json"
    path.write_text(json.dumps({"num_token": 10**5, "p_baseline_dict": {str(i): c for i, c in enumerate(counts)}}))
    freq = torch.tensor([c / 10**5 for c in counts], dtype=torch.float32)
    ours = dd.generate(model, prompt, "pc_sampler", gen_length=gen_length, block_length=block, steps=steps,
                       overrides={"score.position_decay": lambd, "score.clip": alpha,
                                  "score.frequency_file": str(path)})
    assert_same_as_reference(ours, pc_sampler_generate(toy_logits_fn(model), prompt.clone(), steps=steps, gen_length=gen_length,
                                    block_length=block, mask_id=model.mask_id, freq=freq, lambd=lambd, alpha=alpha))


@SETTINGS
@given(case=cases(), base=st.sampled_from([1.5, 2.0, 3.0]))
def test_dilated_unmasking_equals_the_schedule(case, base):
    model, prompt, gen_length, block = case
    ours = dd.generate(model, prompt, "dilated_unmasking", gen_length=gen_length, block_length=block,
                       overrides={"select.base": base})
    assert_same_as_reference(ours, dus_generate(toy_logits_fn(model), prompt.clone(), gen_length=gen_length, block_length=block,
                             mask_id=model.mask_id, base=base))


def test_dilated_groups_are_spread_out():
    from dllm_decoding.plugins.dus import dilated_groups
    assert dilated_groups(8, 2.0) == ((0, 4), (2, 6), (1, 3, 5, 7))
    assert sorted(j for g in dilated_groups(32, 2.0) for j in g) == list(range(32))
    assert len(dilated_groups(32, 2.0)) == 5


@SETTINGS
@given(case=cases(one_block=True), n=st.integers(1, 4))
def test_saber_equals_saber(case, n):
    model, prompt, gen_length, _ = case
    budget = 3 * gen_length
    ours = dd.generate(model, prompt, "saber", gen_length=gen_length, block_length=gen_length,
                       overrides={"select.n": n, "remask.n": n, "max_steps_per_block": budget})
    assert_same_as_reference(ours, saber_generate(toy_logits_fn(model), prompt.clone(), gen_length=gen_length, mask_id=model.mask_id,
                               n=n, max_steps=budget))


def test_saber_reopens_the_token_whose_confidence_fell_most():
    # step 0: pos0 and pos1 commit (n = 2, threshold 1 before any commit) and backtracking
    # reopens the one with the smaller gain over 0 (pos1, 0.6); step 1: pos1's prediction changed
    tokens = [[1, 2, 3], [1, 4, 3], [1, 4, 3]]
    conf = [[0.9, 0.6, 0.3], [0.9, 0.95, 0.3], [0.9, 0.95, 0.96]]
    model = ScriptedModel([1, 4, 3], vocab_size=6, mask_id=5, confidence=conf, tokens=tokens)
    out = dd.generate(model, torch.tensor([[0, 1]]), "saber", gen_length=3, trace=True)
    assert out.answers[0].tolist() == [1, 4, 3]
    assert out.trace.reopened[0, 0].tolist() == [False, True, False]


def test_prophet_commits_the_block_once_the_gap_clears():
    # confident (p = 0.99) everywhere: the logit gap log(0.99 / (0.01 / 3)) ~ 5.7 clears late = 2.5 at once
    model = ScriptedModel([1, 2, 3, 4], vocab_size=6, mask_id=5, confidence=[[0.99] * 4])
    out = dd.generate(model, torch.tensor([[0, 1]]), "prophet_early_commit", gen_length=4,
                      overrides={"early_commit.early": 5.0})
    assert out.nfe.tolist() == [1] and out.answers[0].tolist() == [1, 2, 3, 4]
    model = ScriptedModel([1, 2, 3, 4], vocab_size=6, mask_id=5, confidence=[[0.99] * 4])
    out = dd.generate(model, torch.tensor([[0, 1]]), "prophet_early_commit", gen_length=4)  # early = 7.5: not yet
    assert out.nfe.tolist() == [2]  # forward 2 of 4: progress 0.5, the mid bound 5.0 is cleared


def test_prophet_fills_later_blocks_from_the_triggering_forward():
    """The early commit reaches past the block: one forward for a four-block answer, the later
    blocks recorded as committed in that step, and the row costs nothing after it."""
    model = ScriptedModel([1, 2, 3, 4], vocab_size=6, mask_id=5, confidence=[[0.99] * 4])
    out = dd.generate(model, torch.tensor([[0, 1], [0, 1]]), "prophet_early_commit", gen_length=4, block_length=1,
                      overrides={"early_commit.early": 5.0}, trace=True)
    assert out.nfe.tolist() == [1, 1] and out.answers.tolist() == [[1, 2, 3, 4]] * 2
    assert out.trace.num_steps == 1 and bool(out.trace.committed[0].all())


def test_early_commit_needs_canvas_wide_logits():
    from dllm_decoding.reference import load_reference_model

    model, _ = load_reference_model()
    cached = dd.HFMaskedDiffusionModel(model, kv_cache="dual")
    with pytest.raises(dd.InputError, match="needs the forward's logits for the whole canvas.*drop --kv-cache"):
        dd.generate(cached, torch.tensor([[5, 6, 7]]), "prophet_early_commit", gen_length=8, block_length=4)
    with pytest.raises(dd.InputError, match="canvas-wide logits \(an early commit\) and a draft component"):
        dd.generate(model, torch.tensor([[5, 6, 7]]), "prophet_early_commit", gen_length=8,
                    overrides={"draft.use": "next_commits"})


def test_remdm_remasks_at_the_schedules_rate():
    from dllm_decoding.plugins.remdm import ReMDMOptions, remdm_rates
    opts = ReMDMOptions(eta=0.5)
    unmask, sigma = remdm_rates(opts, 0, 4)
    assert unmask == pytest.approx(0.25, abs=1e-5) and sigma == 0.5
    unmask, sigma = remdm_rates(opts, 2, 4)  # t = 0.5, s = 0.25: cap min(0.5, 0.75 / 0.5)
    assert sigma == 0.5 and unmask == pytest.approx((0.75 - 0.5 * 0.5) / 0.5, abs=1e-4)
    assert remdm_rates(opts, 4, 4) is None
    # rescale, last step (t = 0.25, s = eps): sigma = eta * (1 - alpha_s) / alpha_t, nearly 0
    assert remdm_rates(ReMDMOptions(eta=0.5, schedule="rescale"), 3, 4)[1] < 1e-4
    # eta = 0: no remasking at all, every position commits once
    model = ContextModel(9, seed=3)
    out = dd.generate(model, torch.tensor([[1, 2]]), "remdm_cap", gen_length=8, trace=True, seed=1,
                      overrides={"select.eta": 0.0, "remask.eta": 0.0})
    assert not bool(out.trace.reopened.any()) and int(out.nfe[0]) <= 9


class TestKlassConformance(StrategyConformance):
    strategy = "klass"


class TestKlassBlockScopeConformance(StrategyConformance):
    strategy = "klass"
    overrides = {"select.scope": "block"}


def test_klass_block_scope_equals_d2cache_with_one_block():
    model = ContextModel(11, seed=4, scale=6.0)
    prompt = torch.tensor([[1, 2, 3]])
    ours = dd.generate(model, prompt, "klass", gen_length=8, overrides={"select.scope": "block"})
    assert_same_as_reference(ours, klass_generate(toy_logits_fn(model), prompt.clone(), gen_length=8,
                                                  block_length=8, mask_id=model.mask_id,
                                                  vocab_size=model.vocab_size))


class TestProphetConformance(StrategyConformance):
    strategy = "prophet_early_commit"


class TestDilatedUnmaskingConformance(StrategyConformance):
    strategy = "dilated_unmasking"


class TestPCSamplerConformance(StrategyConformance):
    strategy = "pc_sampler"


class TestSaberConformance(StrategyConformance):
    strategy = "saber"


class TestReMDMConformance(StrategyConformance):
    strategy = "remdm_cap"
    overrides = {"select.eta": 0.3, "remask.eta": 0.3}
