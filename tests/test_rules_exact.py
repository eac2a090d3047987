"""Each rule on small hand-computed cases (ScriptedModel: we say what the model predicts,
with which probability, at each forward)."""

import math

import pytest
import torch

import dllm_decoding as dd
from dllm_decoding.testing import ContextModel, ScriptedModel

V, MASK = 6, 5
PROMPT = torch.tensor([[0, 1]])
ANSWER = [1, 2, 3, 4]
# probability of the proposed (answer) token at positions 0..3, per forward
CONF = [[0.50, 0.95, 0.20, 0.30],
        [0.60, 0.96, 0.92, 0.35],
        [0.70, 0.97, 0.93, 0.40],
        [0.80, 0.98, 0.94, 0.45]]


def decode(strategy, model=None, **kw):
    model = model or ScriptedModel(ANSWER, vocab_size=V, mask_id=MASK, confidence=CONF)
    out = dd.generate(model, PROMPT, strategy, trace=True, **{"gen_length": 4, **kw})
    return out, out.trace.commit_step()[0].tolist()


def test_threshold_commits_all_above_and_at_least_the_best():
    out, steps = decode("fast_dllm_threshold")
    # step 0: only pos1 >= 0.9; step 1: pos2 (0.92); step 2: none >= 0.9 -> best pos0 (0.70); step 3: pos3
    assert steps == [2, 0, 1, 3]
    assert out.answers[0].tolist() == ANSWER and out.nfe.tolist() == [4]


def test_threshold_is_inclusive():
    out, steps = decode("fast_dllm_threshold", overrides={"select.threshold": 0.92})
    assert steps == [2, 0, 1, 3]  # 0.92 >= 0.92 commits pos2 at step 1


def test_llada_schedule_two_steps():
    # steps=2 over one block of 4 masks: 2 tokens per step, most confident first
    out, steps = decode("llada_low_confidence", steps=2)
    assert steps == [0, 0, 1, 1] and out.nfe.tolist() == [2]


def test_llada_schedule_remainder_goes_first():
    # 4 masks over 3 steps: 2, 1, 1
    _, steps = decode("llada_low_confidence", steps=3)
    assert steps == [0, 0, 1, 2]


def test_llada_schedule_per_block():
    # two blocks of 2, steps=2 -> one step per block, 2 tokens each
    out, steps = decode("llada_low_confidence", steps=2, block_length=2)
    assert steps == [0, 0, 1, 1] and out.nfe.tolist() == [2]


def test_fixed_k():
    _, steps = decode("llada_low_confidence", overrides={"select.k": 3})
    assert steps == [0, 0, 1, 0]


def test_factor_rule():
    # step 0 sorted: 0.95, 0.50, 0.30, 0.20; thresholds n=1: -1, n=2: 1-1/3=0.667 -> stop at n=2: commit 1
    # step 1 open {0,2,3}: 0.92, 0.60, 0.35 ; n=2 needs 0.667 -> 0.60 fails -> commit 1 (pos2)
    # step 2 open {0,3}: 0.70, 0.40: stopping at the last index commits all (Fast-dLLM's quirk)
    out, steps = decode("fast_dllm_factor")
    assert steps == [2, 0, 1, 2] and out.nfe.tolist() == [3]


def test_entropy_bound_rule():
    # entropies with V-1 = 5 non-mask tokens: p on one, (1-p)/4 on the others
    def h(p):
        q = (1 - p) / 4
        return -(p * math.log(p) + 4 * q * math.log(q))
    gamma = h(0.95) + 1e-9  # admits exactly the two lowest-entropy positions when both are 0.95
    model = ScriptedModel(ANSWER, vocab_size=V, mask_id=MASK,
                          confidence=[[0.95, 0.95, 0.2, 0.2]] * 4)
    _, steps = decode({"select": {"use": "entropy_bound", "gamma": gamma}}, model=model)
    # step 1: two 0.2-positions: their excess h(0.2) > gamma, so only one commits per step
    assert steps[:2] == [0, 0] and sorted(steps[2:]) == [1, 2]


def test_margin_and_entropy_rank_like_confidence_on_scripted_model():
    for preset in ("margin_topk", "entropy_topk"):
        _, steps = decode(preset, steps=2)
        assert steps == [0, 0, 1, 1], preset


def test_credit_alpha_zero_equals_plain_threshold():
    for seed in range(5):
        model = ContextModel(vocab_size=9, seed=seed, scale=6.0)
        prompt = torch.tensor([[1, 2, 3, 4]])
        a = dd.generate(model, prompt, "credit_decoding", gen_length=12, block_length=4,
                        overrides={"fuse.credit.alpha": 0.0, "select.threshold": 0.6})
        b = dd.generate(model, prompt, "fast_dllm_threshold", gen_length=12, block_length=4,
                        overrides={"select.threshold": 0.6, "select.near_max": 1e-5,
                                   "score.precision": "float32"})
        assert torch.equal(a.sequences, b.sequences) and torch.equal(a.nfe, b.nfe)


def test_threshold_one_equals_one_token_per_step():
    for seed in range(5):
        model = ContextModel(vocab_size=9, seed=seed, scale=3.0)
        prompt = torch.tensor([[3, 1, 4]])
        a = dd.generate(model, prompt, "fast_dllm_threshold", gen_length=8, block_length=4,
                        overrides={"select.threshold": 1.0})
        b = dd.generate(model, prompt, "llada_low_confidence", gen_length=8, block_length=4,
                        overrides={"score.precision": "float64"})
        assert torch.equal(a.sequences, b.sequences) and a.nfe.tolist() == b.nfe.tolist() == [8]


def test_credit_commits_a_steady_token_sooner():
    # two positions steady at p=0.85: plain threshold 0.9 needs 2 steps; with credit
    # (alpha 1, first step: fused odds = 0.85 * 1.85 / 0.15 / (V - 2) spread) both commit at once
    model = ScriptedModel([1, 2], vocab_size=V, mask_id=MASK, confidence=[[0.85, 0.85]])
    plain = dd.generate(model, PROMPT, "fast_dllm_threshold", gen_length=2)
    model = ScriptedModel([1, 2], vocab_size=V, mask_id=MASK, confidence=[[0.85, 0.85]])
    credit = dd.generate(model, PROMPT, "credit_decoding", gen_length=2,
                         overrides={"fuse.credit.alpha": 1.0})
    assert plain.nfe.tolist() == [2] and credit.nfe.tolist() == [1]


def test_eos_early_stop_fills_and_saves_forwards():
    eos = 4
    answer = [1, eos, 2, 3, 2, 3]
    model = ScriptedModel(answer, vocab_size=V, mask_id=MASK, confidence=[[0.99] * 6])
    off = dd.generate(model, PROMPT, "fast_dllm_threshold", gen_length=6, block_length=2)
    model = ScriptedModel(answer, vocab_size=V, mask_id=MASK, confidence=[[0.99] * 6])
    on = dd.generate(model, PROMPT, "fast_dllm_threshold", gen_length=6, block_length=2, eos_id=eos)
    assert off.answers[0].tolist() == answer and off.nfe.tolist() == [3]
    assert on.answers[0].tolist() == [1, eos, eos, eos, eos, eos] and on.nfe.tolist() == [1]


def test_finished_rows_stop_costing_forwards():
    # row 0 is confident everywhere (1 step per block); row 1 needs one step per token
    answers = torch.tensor([[1, 2, 3, 1], [2, 3, 1, 2]])
    conf = [[0.99, 0.99, 0.99, 0.99]]
    model = ScriptedModel(answers, vocab_size=V, mask_id=MASK, confidence=conf)
    out = dd.generate(model, torch.tensor([[0, 1], [1, 0]]), "fast_dllm_threshold", gen_length=4,
                      block_length=2, overrides={"select.threshold": 0.9})
    assert out.nfe.tolist() == [2, 2]
    out = dd.generate(model, torch.tensor([[0, 1], [1, 0]]), "llada_low_confidence", gen_length=4,
                      block_length=2, steps=4)
    assert out.nfe.tolist() == [4, 4]


def test_remask_reopens_a_token_whose_probability_dropped():
    # pos0 is committed at step 0 (0.99) but its token's probability falls to 0.1 at step 1;
    # the remask component reopens it, and the model then proposes token 3 confidently.
    tokens = [[1, 2], [1, 2], [3, 2], [3, 2]]
    conf = [[0.99, 0.2], [0.1, 0.2], [0.99, 0.2], [0.99, 0.99]]
    model = ScriptedModel([1, 2], vocab_size=V, mask_id=MASK, confidence=conf, tokens=tokens)
    out = dd.generate(model, PROMPT, "threshold_remask", gen_length=2, trace=True)
    # step 0 commits pos0=1; step 1 commits pos1 (progress) and reopens pos0 (p=0.1 < 0.3);
    # step 2 commits pos0=3 and reopens pos1 (p=0.2 < 0.3); step 3 commits pos1 again
    assert out.answers[0].tolist() == [3, 2]
    assert out.trace.reopened[:, 0, 0].tolist() == [False, True, False, False]
    assert out.trace.reopened[:, 0, 1].tolist() == [False, False, True, False]
    assert out.nfe.tolist() == [4]


def test_trace_earliest_correct_and_gap():
    # pos0's argmax is wrong (token 3) at forwards 0-1, right (1) from forward 2; committed at 3
    tokens = [[3, 2], [3, 2], [1, 2], [1, 2]]
    conf = [[0.3, 0.95], [0.3, 0.5], [0.4, 0.5], [0.5, 0.5]]
    model = ScriptedModel([1, 2], vocab_size=V, mask_id=MASK, confidence=conf, tokens=tokens)
    out = dd.generate(model, PROMPT, "llada_low_confidence", gen_length=2, steps=2, trace=True)
    # steps=2, 1 token per step: step 0 commits pos1 (0.95); step 1 commits pos0 -> token 3 (wrong)
    assert out.answers[0].tolist() == [3, 2]
    tr = out.trace
    assert tr.commit_step()[0].tolist() == [1, 0]
    assert tr.earliest_correct_step()[0].tolist() == [0, 0]
    assert tr.commit_gap()[0].tolist() == [1, 0]
    # pos0 proposes 2 (wrong) at step 0, then 1 (its final token); committed last, at step 2
    tokens = [[2, 2, 3], [1, 2, 3], [1, 2, 3]]
    conf = [[0.3, 0.9, 0.5], [0.3, 0.9, 0.8], [0.3, 0.9, 0.8]]
    model = ScriptedModel([1, 2, 3], vocab_size=V, mask_id=MASK, confidence=conf, tokens=tokens)
    out = dd.generate(model, PROMPT, "llada_low_confidence", gen_length=3, trace=True)
    tr = out.trace
    assert out.answers[0].tolist() == [1, 2, 3]
    assert tr.commit_step()[0].tolist() == [2, 0, 1]
    assert tr.earliest_correct_step()[0].tolist() == [1, 0, 0]
    assert tr.commit_gap()[0].tolist() == [1, 0, 1]


def test_temperature_sampling_is_seeded():
    model = ContextModel(vocab_size=9, scale=1.0)
    prompt = torch.tensor([[1, 2, 3]])
    a = dd.generate(model, prompt, "fast_dllm_threshold", gen_length=8, temperature=1.0, seed=1)
    b = dd.generate(model, prompt, "fast_dllm_threshold", gen_length=8, temperature=1.0, seed=1)
    c = dd.generate(model, prompt, "fast_dllm_threshold", gen_length=8, temperature=1.0, seed=2)
    greedy = dd.generate(model, prompt, "fast_dllm_threshold", gen_length=8)
    assert torch.equal(a.sequences, b.sequences)
    assert not torch.equal(a.sequences, c.sequences) or not torch.equal(a.sequences, greedy.sequences)


@pytest.mark.parametrize("strategy", ["llada_low_confidence", "fast_dllm_threshold", "fast_dllm_factor"])
def test_exact_ties_resolve_alike_alone_and_in_a_padded_batch(strategy):
    # every position gets the same distribution: all confidences tie exactly, every step
    def uniform_peak(ids):
        logits = torch.zeros(*ids.shape, V)
        logits[..., 2] = 3.0
        logits[..., MASK] = float("-inf")
        return logits

    model = dd.as_model(uniform_peak, mask_id=MASK, vocab_size=V)
    kw = dict(gen_length=8, block_length=4, steps=8, trace=True)
    batched = dd.generate(model, torch.tensor([[0, 0, 1], [0, 0, 1]]), strategy,
                          attention_mask=torch.tensor([[1, 1, 1], [0, 0, 1]]), **kw)
    alone = dd.generate(model, torch.tensor([[1]]), strategy, **kw)
    assert torch.equal(batched.trace.commit_step()[1], alone.trace.commit_step()[0])
    # (A different prompt length may break ties differently: torch.topk ranks the whole row, as
    # the published loops do, and its choice among ties depends on the row's length.)


def test_tracing_off_builds_no_step_records(monkeypatch):
    from dllm_decoding.core import loop

    built = []
    real = loop.StepRecord
    monkeypatch.setattr(loop, "StepRecord", lambda **kw: built.append(1) or real(**kw))
    out, _ = decode("fast_dllm_threshold")
    dd.generate(ScriptedModel(ANSWER, vocab_size=V, mask_id=MASK, confidence=CONF), PROMPT,
                "fast_dllm_threshold", gen_length=4)
    assert len(built) == int(out.nfe[0])  # only the traced decode built one record per step


@pytest.mark.parametrize("scorer", ["confidence", "margin", "entropy"])
def test_scorers_score_the_current_block_only_and_exactly(scorer):
    """Step hooks see the current block only: a built-in scorer's proposal is (B, L), bit for bit
    the whole-distribution computation on the block's logits (B, L, V)."""
    from dllm_decoding.plugins.scoring import Confidence, Margin, NegativeEntropy

    seen = []

    class Spy(dd.Component):
        name = "spy"
        hook_point = "observer"

        @dd.hookimpl
        def on_step_end(self, state, record):
            seen.append((state.block_start, state.block_end, record.proposal))

    model = ContextModel(9, seed=1, scale=3.0)
    dd.generate(model, torch.tensor([[1, 2, 3]]), {"score": {"use": scorer}, "select": {"use": "topk"}},
                gen_length=8, block_length=4, steps=8, observers=[Spy()])
    assert {start for start, _, _ in seen} == {3, 7}  # both blocks were seen
    cls = {"confidence": Confidence, "margin": Margin, "entropy": NegativeEntropy}[scorer]
    for start, end, proposal in seen:
        logits = proposal.logits.to(torch.float64)
        if scorer == "confidence":
            full = logits.softmax(-1).gather(-1, proposal.tokens[..., None]).squeeze(-1)
        elif scorer == "margin":
            top2 = logits.softmax(-1).topk(2, dim=-1).values
            full = top2[..., 0] - top2[..., 1]
        else:
            logp = logits.log_softmax(-1)
            full = (logp.exp() * logp).nan_to_num(0.0).sum(-1)
        assert proposal.logits.shape == (1, end - start, 9) and proposal.tokens.shape == (1, end - start)
        assert torch.equal(proposal.confidence, full), cls.__name__


def test_state_nfe_counts_each_rows_forwards_during_the_decode():
    # row 0 stops at EOS after its first block; row 1 decodes all four blocks
    eos = 4
    answers = torch.tensor([[1, eos, 1, 2, 3, 1, 2, 3], [1, 2, 3, 1, 2, 3, 1, 2]])
    model = ScriptedModel(answers, vocab_size=V, mask_id=MASK, confidence=[[0.5] * 8])
    seen = []

    class NfeSpy(dd.Component):
        name, hook_point = "nfe_spy", "observer"

        @dd.hookimpl
        def on_step_end(self, state, record):
            seen.append((state.nfe.tolist(), record.active_rows.tolist()))

    out = dd.generate(model, torch.tensor([[0, 1], [1, 0]]), "llada_low_confidence", gen_length=8,
                      block_length=2, steps=8, eos_id=eos, observers=[NfeSpy()])
    previous = [0, 0]
    for nfe, active in seen:
        assert nfe == [p + a for p, a in zip(previous, active)]
        previous = nfe
    assert out.nfe.tolist() == previous == [2, 8]
