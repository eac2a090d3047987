"""Credit tables: the sparse table (K token slots per position) decodes exactly as the dense one
while no position has more than K argmax tokens in a block; both match dInfer's loop."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dllm_decoding as dd
from dllm_decoding.evaluation.scaling import SyntheticModel, dinfer_credit_loop
from dllm_decoding.testing import ContextModel, StrategyConformance


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(vocab=st.integers(5, 40), seed=st.integers(0, 2**16), scale=st.sampled_from([0.5, 2.0, 6.0]),
       block=st.sampled_from([2, 4, 8]), blocks=st.integers(1, 3), threshold=st.sampled_from([0.3, 0.6, 0.9, 0.99]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), padded=st.booleans())
def test_sparse_credit_equals_dense_when_slots_cover_the_block(vocab, seed, scale, block, blocks, threshold,
                                                                dtype, padded):
    model = ContextModel(vocab, seed=seed, scale=scale, dtype=dtype)
    prompt = torch.tensor([[1, 2, 3], [0, 2, 1]]) % (vocab - 1)
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]]) if padded else None
    kwargs = dict(attention_mask=mask, gen_length=block * blocks, block_length=block,
                  overrides={"select.threshold": threshold})
    dense = dd.generate(model, prompt, "credit_decoding", **kwargs)
    sparse = dd.generate(model, prompt, "credit_decoding", **{**kwargs, "overrides": {
        "select.threshold": threshold, "fuse.credit.slots": block}})
    assert torch.equal(dense.sequences, sparse.sequences) and torch.equal(dense.nfe, sparse.nfe)


def test_the_sparse_preset_equals_dinfers_loop_at_a_large_vocabulary():
    model = SyntheticModel(4096, block_length=32, growth=1.5)
    prompt = torch.randint(1, 4096, (2, 8), generator=torch.Generator().manual_seed(3))
    out = dd.generate(model, prompt, "credit_decoding_sparse", gen_length=64, block_length=32)
    ref, forwards = dinfer_credit_loop(model, prompt, gen_length=64, block_length=32)
    assert torch.equal(out.sequences, ref) and int(out.stats["forward_calls"]) == forwards


def test_few_slots_still_decode_validly():
    """K = 1: an approximation (the least credited token is replaced), still a valid decode."""
    model = ContextModel(12, seed=5, scale=1.0)
    out = dd.generate(model, torch.tensor([[1, 2, 3]]), "credit_decoding", gen_length=16, block_length=8,
                      overrides={"fuse.credit.slots": 1, "select.threshold": 0.99})
    assert not bool((out.answers == model.mask_id).any())


@pytest.mark.parametrize("slots", [0, -1, 1.5])
def test_slots_must_be_a_positive_count(slots):
    with pytest.raises(dd.ConfigError, match="slots"):
        dd.load_strategy("credit_decoding", {"fuse.credit.slots": slots})


class TestSparseCreditConformance(StrategyConformance):
    strategy = "credit_decoding_sparse"
