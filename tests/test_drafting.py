"""The draft hook: FreeDave-style draft-and-verify gives exactly the one-token-per-step decode,
never with more forwards, and with fewer on a real model."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dllm_decoding as dd
from dllm_decoding.reference import load_reference_model
from dllm_decoding.tasks import TASKS, encode_batch
from dllm_decoding.testing import ContextModel, StrategyConformance, registry_with


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(vocab=st.integers(5, 20), seed=st.integers(0, 2**16), block=st.sampled_from([1, 2, 4, 8]),
       blocks=st.integers(1, 3), depth=st.integers(1, 6), padded=st.booleans())
def test_drafting_decodes_exactly_as_one_token_per_step(vocab, seed, block, blocks, depth, padded):
    model = ContextModel(vocab, seed=seed, scale=3.0)
    prompt = torch.tensor([[1, 2, 3], [0, 2, 1]]) % (vocab - 1)
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]]) if padded else None
    kwargs = dict(attention_mask=mask, gen_length=block * blocks, block_length=block)
    plain = dd.generate(model, prompt, "llada_low_confidence", overrides={"select.k": 1}, **kwargs)
    drafted = dd.generate(model, prompt, "freedave", overrides={"draft.depth": depth}, **kwargs)
    assert torch.equal(plain.sequences, drafted.sequences)
    assert bool((drafted.nfe <= plain.nfe).all())


@pytest.fixture(scope="module")
def reference():
    return load_reference_model()


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_freedave_equals_one_token_per_step_on_the_reference_test_split(reference, task):
    """Token for token on 32 test examples of every task, in fewer forwards (NFE reported)."""
    model, tokenizer = reference
    t = TASKS[task]
    prompt, mask = encode_batch(tokenizer, t.examples("test", 32), t)
    plain = dd.generate(model, prompt, "llada_low_confidence", attention_mask=mask, gen_length=t.gen_length)
    drafted = dd.generate(model, prompt, "freedave", attention_mask=mask, gen_length=t.gen_length)
    assert torch.equal(plain.sequences, drafted.sequences)
    print(f"{task}: NFE {float(plain.nfe.double().mean()):.2f} -> {float(drafted.nfe.double().mean()):.2f}")
    assert float(drafted.nfe.double().mean()) < float(plain.nfe.double().mean())


def test_drafting_is_refused_with_a_key_value_cache(reference):
    model, tokenizer = reference
    t = TASKS["sort"]
    prompt, mask = encode_batch(tokenizer, t.examples("test", 2), t)
    with pytest.raises(dd.InputError, match="key-value cache"):
        dd.generate(dd.HFMaskedDiffusionModel(model, kv_cache="dual"), prompt, "freedave", attention_mask=mask,
                    gen_length=t.gen_length)


def test_a_bad_draft_names_the_component():
    class BadDraft(dd.Component):
        name = "bad_draft"
        hook_point = "draft"

        @dd.hookimpl
        def draft(self, state, proposal, commit):
            return state.block_canvas  # (B, L), not (B, D, L)

    registry = registry_with(BadDraft)
    with pytest.raises(dd.PluginError, match="component 'bad_draft': draft must return None or a long tensor"):
        dd.generate(ContextModel(9), [[1, 2]], {"select": {"use": "topk", "k": 1}, "draft": {"use": "bad_draft"}},
                    gen_length=4, registry=registry)


class TestFreeDaveConformance(StrategyConformance):
    strategy = "freedave"
