"""WINO (issue 13): the ``extend`` hook's forward with a shadow block, and the ``wino`` preset
equal to d2Cache's loop (re-stated in ``published_rules.wino_generate``, which builds the 4-D
mask and positions itself) token for token and NFE for NFE."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dllm_decoding as dd
from dllm_decoding.reference import load_reference_model
from dllm_decoding.tasks import TASKS, encode_batch
from dllm_decoding.testing import ContextModel, StrategyConformance
from published_rules import wino_generate

FIXTURES = Path(__file__).parent / "fixtures"


def _hf_fn(model):
    def fn(ids, mask, positions):
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    return fn


@pytest.fixture(scope="module")
def reference():
    return load_reference_model()


@pytest.fixture(scope="module")
def llada():
    return dd.load_model(FIXTURES / "llada-tiny")


@pytest.mark.parametrize("task_name", list(TASKS))
def test_wino_equals_d2cache_on_the_reference_model(reference, task_name):
    """4 test examples of every task, one row each, blocks of half the answer; the left-padded
    batch of them decodes as each row alone."""
    model, tokenizer = reference
    task = TASKS[task_name]
    block = task.gen_length // 2 if task.gen_length % 2 == 0 else task.gen_length
    examples = task.examples("test", 4, seed=5)
    batch, mask = encode_batch(tokenizer, examples, task)
    batched = dd.generate(model, batch, "wino", attention_mask=mask, gen_length=task.gen_length, block_length=block)
    for row, example in enumerate(examples):
        prompt, _ = encode_batch(tokenizer, [example], task)
        ref, nfe = wino_generate(_hf_fn(model), prompt.clone(), gen_length=task.gen_length, block_length=block,
                                 mask_id=model.config.mask_token_id)
        alone = dd.generate(model, prompt, "wino", gen_length=task.gen_length, block_length=block)
        assert torch.equal(alone.sequences, ref) and alone.nfe.tolist() == [nfe], row
        assert torch.equal(batched.answers[row], alone.answers[0]) and int(batched.nfe[row]) == nfe, row


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**16), pad=st.integers(0, 3), blocks=st.integers(1, 3),
       wide_in=st.sampled_from([0.0, 0.3, 0.6, 0.95]), narrow_out=st.sampled_from([0.5, 0.9, 0.999]),
       n=st.integers(1, 2))
def test_wino_equals_d2cache_on_a_left_padded_llada(llada, seed, pad, blocks, wide_in, narrow_out, n):
    """Our LLaDA class (random weights), a left-padded row as d2Cache runs it, every option."""
    gen = torch.Generator().manual_seed(seed)
    width, block = 6, 4
    prompt = torch.randint(0, 100, (1, width), generator=gen)
    mask = torch.ones(1, width, dtype=torch.long)
    mask[:, :pad] = 0
    overrides = {"select.wide_in_threshold": wide_in, "select.n": n, "remask.narrow_out_threshold": narrow_out,
                 "remask.n": n}
    ours = dd.generate(llada, prompt, "wino", attention_mask=mask, gen_length=block * blocks, block_length=block,
                       overrides=overrides)
    ref, nfe = wino_generate(_hf_fn(llada), prompt.clone(), gen_length=block * blocks, block_length=block,
                             mask_id=llada.config.mask_token_id, attention_mask=mask, wide_in=wide_in,
                             narrow_out=narrow_out, n=n)
    assert ours.answers.tolist() == ref[:, width:].tolist() and ours.nfe.tolist() == [nfe]


def test_the_shadow_block_does_not_change_the_canvas_logits_and_leaves_its_column_out(reference):
    model, _ = reference
    session = dd.HFMaskedDiffusionModel(model).start_session(torch.ones(1, 12, dtype=torch.long))
    canvas = torch.randint(0, 20, (1, 12), generator=torch.Generator().manual_seed(0))
    columns = torch.arange(8, 12)
    sees = ~(columns[:, None] == torch.arange(12)[None, :])
    extension = dd.Extension(tokens=torch.full((1, 4), model.config.mask_token_id), positions=columns[None],
                             sees=sees[None])
    plain = session.forward(canvas, None)
    logits, shadow = session.forward_extended(canvas, None, extension)
    assert torch.allclose(logits, plain, atol=1e-5)
    # the mask the model got: no canvas query sees a shadow key; shadow j does not see block column
    # 8 + j directly (deeper layers still mix in what the other shadow positions saw, as in d2Cache)
    seen = {}
    forward = model.forward

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return forward(*args, **kwargs)

    model.forward = spy
    try:
        session.forward_extended(canvas, None, extension)
    finally:
        del model.forward
    mask = seen["attention_mask"][0, 0]
    assert mask.shape == (16, 16) and not bool(mask[:12, 12:].any())
    assert not bool(mask[12:, 8:12].diagonal().any()) and bool(mask[12:, :8].all()) and bool(mask[12:, 12:].all())
    assert seen["position_ids"][0, 12:].tolist() == [8, 9, 10, 11]


def test_wino_revokes_tokens_on_the_reference_model(reference):
    """Not vacuous: on an under-confident copy, narrow out remasks decided tokens."""
    model, tokenizer = reference
    task = TASKS["latin_square"]
    examples = task.examples("test", 8, seed=1)
    batch, mask = encode_batch(tokenizer, examples, task)
    out = dd.generate(dd.models.PerturbedLogits(model, 3.0, 0.0), batch, "wino", attention_mask=mask,
                      gen_length=task.gen_length, trace=True)
    assert int(out.trace.reopened.sum()) > 0


def test_extend_is_refused_where_it_cannot_run(reference, llada):
    model, _ = reference
    prompt = torch.tensor([[5, 6, 7]])
    with pytest.raises(dd.InputError, match="does not run with kv_cache: drop --kv-cache"):
        dd.generate(dd.HFMaskedDiffusionModel(model, kv_cache="dual"), prompt, "wino", gen_length=8)
    with pytest.raises(dd.InputError, match="an extend component and a draft component in one strategy"):
        dd.generate(model, prompt, "wino", gen_length=8, overrides={"draft.use": "next_commits"})
    dream = dd.load_model(FIXTURES / "dream-tiny")
    with pytest.raises(dd.InputError, match="predicts the next position"):
        dd.generate(dream, prompt, "wino", gen_length=8)
    with pytest.raises(dd.PluginError, match="add extend = 'shadow_block'"):
        dd.generate(ContextModel(vocab_size=9), prompt, "wino", gen_length=8, overrides={"extend": None})


class TestWinoStrictConformance(StrategyConformance):
    strategy = "wino"
    overrides = {"select.wide_in_threshold": 0.2, "remask.narrow_out_threshold": 0.99}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_wino_on_cuda_equals_d2cache_there(reference):
    model, tokenizer = reference
    model = model.cuda()
    try:
        task = TASKS["insert"]
        prompt, _ = encode_batch(tokenizer, task.examples("test", 1, seed=2), task)
        prompt = prompt.cuda()
        ours = dd.generate(model, prompt, "wino", gen_length=task.gen_length)
        ref, nfe = wino_generate(_hf_fn(model), prompt.clone(), gen_length=task.gen_length,
                                 block_length=task.gen_length, mask_id=model.config.mask_token_id)
        assert ours.sequences.is_cuda and torch.equal(ours.sequences, ref) and ours.nfe.tolist() == [nfe]
    finally:
        model.cpu()
