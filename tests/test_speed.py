"""Benchmarks of the loop's own cost (pytest-benchmark), on a model whose forward is free.

pyproject's ``--benchmark-disable`` makes each run once as a smoke test in the normal suite.
To time them::

    python -m pytest tests/test_speed.py --benchmark-enable --benchmark-columns=median,iqr,rounds

``extra_info`` records the forwards per decode, so median / forward_calls is the loop's cost
per step. These are numbers to compare between commits, never asserted."""

import pytest
import torch

import dllm_decoding as dd

VOCAB, MASK, GEN = 40, 39, 32


def free_model(batch: int, prompt_length: int) -> dd.Denoiser:
    """Returns the same precomputed logits every call: decode time is the loop's alone."""
    logits = torch.randn(batch, prompt_length + GEN, VOCAB, generator=torch.Generator().manual_seed(0)) * 3
    logits[..., MASK] = float("-inf")
    return dd.as_model(lambda ids: logits[: ids.shape[0]], mask_id=MASK, vocab_size=VOCAB)


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("strategy, overrides", [
    ("llada_low_confidence", {"steps": GEN}),  # one token per step: GEN steps
    ("fast_dllm_threshold", {"select.threshold": 1.0}),  # threshold never met: one per step
    ("credit_decoding", {"select.threshold": 1.0}),
    ("entropy_bounded", {"select.gamma": 0.0}),
    ("dinfer_hierarchy", {"select.threshold": None, "select.low_threshold": 1.0}),  # the top-1 only
])
def test_loop_cost(benchmark, strategy, overrides, batch):
    prompt = torch.arange(1, 9).repeat(batch, 1)
    model = free_model(batch, prompt.shape[1])
    with torch.no_grad():
        out = benchmark(dd.generate, model, prompt, strategy, gen_length=GEN, block_length=GEN,
                        overrides=overrides)
    benchmark.extra_info["forward_calls"] = out.stats["forward_calls"]
    assert out.answers.shape == (batch, GEN) and not bool((out.answers == MASK).any())
    assert out.stats["forward_calls"] >= 1
