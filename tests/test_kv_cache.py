"""Fast-dLLM's key-value cache (HFMaskedDiffusionModel(kv_cache=...)) on the reference model."""

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dllm_decoding as dd
from dllm_decoding import cli
from dllm_decoding.models import PerturbedLogits
from dllm_decoding.reference import load_reference_model
from dllm_decoding.tasks import TASKS, encode_batch


@pytest.fixture(scope="module")
def reference():
    return load_reference_model()


def _prompts(tokenizer, task_name, n):
    task = TASKS[task_name]
    examples = task.examples("test", n)
    prompt, mask = encode_batch(tokenizer, examples, task)
    return task, examples, prompt, mask


class _ShapeSpy(torch.nn.Module):
    """The reference model, recording the width of every forward's input."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config, self.widths = model, model.config, []
        self.eval()

    def forward(self, input_ids, attention_mask=None, use_cache=False, key_values=None, window_start=0):
        self.widths.append(input_ids.shape[1])
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache,
                          key_values=key_values, window_start=window_start)


def test_a_window_against_a_fresh_cache_equals_the_full_forward(reference):
    model, tokenizer = reference
    _, _, prompt, mask = _prompts(tokenizer, "insert", 3)  # rows of different lengths: left padding
    ids = torch.cat([prompt, torch.randint(3, 40, (3, 12))], dim=1)
    full_mask = torch.cat([mask, torch.ones(3, 12, dtype=torch.long)], dim=1)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=full_mask, use_cache=True)
        start = prompt.shape[1] + 4
        window = model(input_ids=ids[:, start:start + 5], attention_mask=full_mask,
                       key_values=full.key_values, window_start=start)
        plain = model(input_ids=ids, attention_mask=full_mask)
    assert plain.key_values is None and torch.equal(plain.logits, full.logits)
    assert len(full.key_values) == model.config.num_hidden_layers
    assert window.logits.shape == (3, 5, model.config.vocab_size)
    torch.testing.assert_close(window.logits, full.logits[:, start:start + 5], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="outside the cached"):
        model(input_ids=ids[:, :5], key_values=full.key_values, window_start=ids.shape[1] - 2)


def test_one_step_per_block_decodes_exactly_as_without_a_cache(reference):
    # every block commits in its first step, whose forward is a full one: the cache is never used
    model, tokenizer = reference
    task, _, prompt, mask = _prompts(tokenizer, "sort", 6)
    kw = dict(attention_mask=mask, gen_length=task.gen_length, block_length=4, steps=task.gen_length // 4)
    plain = dd.generate(model, prompt, "llada_low_confidence", overrides={"select.k": 4}, **kw)
    for mode in ("prefix", "dual"):
        cached = dd.generate(dd.HFMaskedDiffusionModel(model, kv_cache=mode), prompt, "llada_low_confidence",
                             overrides={"select.k": 4}, **kw)
        assert torch.equal(cached.sequences, plain.sequences) and torch.equal(cached.nfe, plain.nfe)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_later_steps_of_a_block_compute_only_the_window(reference, mode):
    model, tokenizer = reference
    task, _, prompt, mask = _prompts(tokenizer, "sort", 2)
    spy = _ShapeSpy(model)
    block = 6
    out = dd.generate(dd.HFMaskedDiffusionModel(spy, kv_cache=mode), prompt, "llada_low_confidence",
                      attention_mask=mask, gen_length=task.gen_length, block_length=block, steps=task.gen_length)
    total, p = prompt.shape[1] + task.gen_length, prompt.shape[1]
    per_block = block  # one token per step
    expected = []
    for b in range(task.gen_length // block):
        start = p + b * block
        window = block if mode == "dual" else total - start
        expected += [total] + [window] * (per_block - 1)
    assert spy.widths == expected
    assert out.nfe.tolist() == [task.gen_length] * 2


def test_refresh_runs_a_full_forward_after_every_n_cached_ones(reference):
    model, tokenizer = reference
    task, _, prompt, mask = _prompts(tokenizer, "insert", 2)
    spy = _ShapeSpy(model)
    dd.generate(dd.HFMaskedDiffusionModel(spy, kv_cache="dual", kv_refresh=2), prompt, "llada_low_confidence",
                attention_mask=mask, gen_length=task.gen_length, block_length=12, steps=task.gen_length)
    total = prompt.shape[1] + task.gen_length
    one_block = [total, 12, 12] * 4  # 12 forwards per block: full, two cached, full, ...
    assert spy.widths == one_block * 3


@pytest.mark.parametrize("task_name, block, eos", [("insert", 12, False), ("sort", 4, True), ("insert", 12, True)])
def test_a_cached_batch_decodes_as_its_rows_one_by_one(reference, task_name, block, eos):
    # An under-confident copy of the model (logits / 3) takes several, row-dependent steps per
    # block; with EOS early stop, rows also leave at block starts. So the cache is built for a
    # subset of rows and then shrinks further: it must follow the rows still decoding.
    model, tokenizer = reference
    task, examples, prompt, mask = _prompts(tokenizer, task_name, 6)
    cached = dd.HFMaskedDiffusionModel(PerturbedLogits(model, tau=3.0), kv_cache="dual")
    kw = dict(gen_length=task.gen_length, block_length=block, overrides={"select.threshold": 0.9},
              eos_id=tokenizer.eos_token_id if eos else None)
    batched = dd.generate(cached, prompt, "fast_dllm_threshold", attention_mask=mask, **kw)
    assert len(set(batched.nfe.tolist())) > 1  # the rows did leave at different steps
    for row, example in enumerate(examples):
        p, m = encode_batch(tokenizer, [example], task)
        alone = dd.generate(cached, p, "fast_dllm_threshold", attention_mask=m, **kw)
        assert torch.equal(alone.answers[0], batched.answers[row])
        assert int(alone.nfe[0]) == int(batched.nfe[row])


def test_cache_settings_that_cannot_work_are_explained(reference):
    model, _ = reference
    with pytest.raises(dd.InputError, match="kv_cache='full' is not a cache mode; use one of 'prefix', 'dual'"):
        dd.HFMaskedDiffusionModel(model, kv_cache="full")
    with pytest.raises(dd.InputError, match="kv_refresh is set but kv_cache is None"):
        dd.HFMaskedDiffusionModel(model, kv_refresh=2)
    with pytest.raises(dd.InputError, match="kv_refresh=0: pass a number of cached forwards >= 1"):
        dd.HFMaskedDiffusionModel(model, kv_cache="dual", kv_refresh=0)
    with pytest.raises(dd.InputError, match="shift_logits=True contradicts the model"):
        dd.HFMaskedDiffusionModel(model, kv_cache="dual", shift_logits=True)

    class NoCache(torch.nn.Module):
        config = model.config

        def forward(self, input_ids, attention_mask=None):
            return model(input_ids=input_ids, attention_mask=attention_mask)

    with pytest.raises(dd.InputError, match=r"NoCache.forward does not take key_values, use_cache, window_start"):
        dd.HFMaskedDiffusionModel(NoCache(), kv_cache="prefix")


def test_cli_kv_cache_option(capsys):
    assert cli.main(["eval", "--task", "sort", "--n", "8", "--kv-cache", "dual", "--blocks", "2", "--strategy",
                     "llada_low_confidence", "--logit-temperature", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kv_cache"] == "dual" and result["logit_temperature"] == 2.0 and result["blocks"] == 2
    assert result["nfe_mean"] == TASKS["sort"].gen_length and result["accuracy"] > 0.5
    for argv, message in [
        (["generate", "--model", "toy", "--prompt-ids", "1,2", "--kv-cache", "dual"], "toy model is a plain function"),
        (["bench", "--overhead", "--kv-cache", "prefix"], "drop --logit-temperature, --logit-noise and --kv-cache"),
        (["eval", "--task", "sort", "--kv-refresh", "2"], "--kv-refresh 2 refreshes the key-value cache: it needs --kv-cache"),
        (["eval", "--task", "sort", "--kv-cache", "dual", "--kv-refresh", "0"], "--kv-refresh 0"),
        (["eval", "--task", "sort", "--blocks", "5"], "--blocks 5: task 'sort' has 12-token answers"),
        (["bench", "--tasks", "sort", "insert", "--blocks", "5"], "--blocks 5: task 'sort' has 12-token answers"),
    ]:
        assert cli.main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    with pytest.raises(SystemExit):
        cli.main(["eval", "--task", "sort", "--kv-cache", "full"])
    assert "invalid choice: 'full'" in capsys.readouterr().err


# --------------------------------------------------------------------------- Fast-dLLM's cached loops


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("task_name, block, threshold", [
    ("sort", 4, 0.9), ("insert", 12, 0.9), ("latin_square", 8, 0.7), ("complement", 3, 0.95), ("addition", 6, 0.5),
])
def test_cached_threshold_decoding_equals_fast_dllm_cached_generate(reference, mode, task_name, block, threshold):
    from published_loops import fast_dllm_cached_generate

    model, tokenizer = reference
    task = TASKS[task_name]
    cached = dd.HFMaskedDiffusionModel(model, kv_cache=mode)
    for example in task.examples("test", 6):
        prompt, _ = encode_batch(tokenizer, [example], task)
        ours = dd.generate(cached, prompt, "fast_dllm_threshold", gen_length=task.gen_length, block_length=block,
                           overrides={"select.threshold": threshold})
        with torch.no_grad():
            ref, nfe, idle = fast_dllm_cached_generate(model, prompt, gen_length=task.gen_length, block_length=block,
                                                 mask_id=model.config.mask_token_id, cache=mode, threshold=threshold)
        # upstream forwards once more in a block its full forward completed (docs/reference-equivalence.md)
        assert torch.equal(ours.sequences, ref) and ours.nfe.tolist() == [nfe - idle]


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("task_name, block, per_block", [("sort", 6, 3), ("insert", 12, 6), ("complement", 6, 6)])
def test_cached_top_k_decoding_equals_fast_dllm_cached_generate(reference, mode, task_name, block, per_block):
    from published_loops import fast_dllm_cached_generate

    model, tokenizer = reference
    task = TASKS[task_name]
    cached = dd.HFMaskedDiffusionModel(model, kv_cache=mode)
    steps = per_block * (task.gen_length // block)
    for example in task.examples("test", 6):
        prompt, _ = encode_batch(tokenizer, [example], task)
        ours = dd.generate(cached, prompt, "llada_low_confidence", gen_length=task.gen_length, block_length=block,
                           steps=steps, overrides={"score.precision": "float64"})  # Fast-dLLM ranks in float64
        with torch.no_grad():
            ref, nfe, idle = fast_dllm_cached_generate(model, prompt, gen_length=task.gen_length, block_length=block,
                                                 mask_id=model.config.mask_token_id, cache=mode, steps=steps)
        # upstream forwards once more in a block its full forward completed (docs/reference-equivalence.md)
        assert torch.equal(ours.sequences, ref) and ours.nfe.tolist() == [nfe - idle]


# --------------------------------------------------------------------------- random models


@st.composite
def _random_cached_decodes(draw):
    from dllm_decoding.reference import ReferenceConfig, ReferenceModelForMaskedLM

    torch.manual_seed(draw(st.integers(0, 10**6)))
    heads = draw(st.sampled_from([1, 2, 4]))
    config = ReferenceConfig(vocab_size=draw(st.integers(8, 24)), hidden_size=8 * heads, num_hidden_layers=draw(st.integers(1, 3)),
                             num_attention_heads=heads, intermediate_size=16, initializer_range=0.5)
    model = ReferenceModelForMaskedLM(config).eval()
    batch, prompt_len = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    prompt = torch.randint(3, config.vocab_size, (batch, prompt_len))
    lengths = [draw(st.integers(1, prompt_len)) for _ in range(batch)]
    mask = torch.tensor([[0] * (prompt_len - n) + [1] * n for n in lengths])
    block = draw(st.sampled_from([1, 2, 3, 4]))
    return model, prompt, mask, block, block * draw(st.integers(1, 3)), draw(st.sampled_from(["prefix", "dual"]))


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=_random_cached_decodes(), threshold=st.sampled_from([0.2, 0.5, 0.9]))
def test_on_random_models_a_cached_batch_decodes_as_its_rows_alone(case, threshold):
    model, prompt, mask, block, gen_length, mode = case
    cached = dd.HFMaskedDiffusionModel(model, kv_cache=mode, kv_refresh=None)
    kw = dict(gen_length=gen_length, block_length=block, overrides={"select.threshold": threshold})
    batched = dd.generate(cached, prompt, "fast_dllm_threshold", attention_mask=mask, **kw)
    assert not bool((batched.answers == model.config.mask_token_id).any())
    for row in range(prompt.shape[0]):
        real = int(mask[row].sum())
        alone = dd.generate(cached, prompt[row:row + 1, -real:], "fast_dllm_threshold", **kw)
        assert torch.equal(alone.answers[0], batched.answers[row])
        assert int(alone.nfe[0]) == int(batched.nfe[row])


def test_upstream_spends_one_idle_forward_on_a_block_its_full_forward_completes(reference):
    # Fast-dLLM's cached loops forward before checking for masks; ours check first. Tokens are
    # equal and our NFE is lower by exactly those idle forwards, at most one per block
    from published_loops import fast_dllm_cached_generate

    model, tokenizer = reference
    task = TASKS["insert"]
    block = task.gen_length // 3
    idle_total = 0
    for example in task.examples("test", 4):
        prompt, _ = encode_batch(tokenizer, [example], task)
        ours = dd.generate(dd.HFMaskedDiffusionModel(model, kv_cache="dual"), prompt, "fast_dllm_threshold",
                           gen_length=task.gen_length, block_length=block, overrides={"select.threshold": 0.9})
        with torch.no_grad():
            ref, nfe, idle = fast_dllm_cached_generate(model, prompt, gen_length=task.gen_length, block_length=block,
                                                       mask_id=model.config.mask_token_id, cache="dual", threshold=0.9)
        assert torch.equal(ours.sequences, ref) and int(ours.nfe[0]) == nfe - idle and idle <= 3
        idle_total += idle
    assert idle_total > 0  # the confident reference model completes blocks in their full forward
