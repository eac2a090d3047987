"""torch.compile and reduced precision are orthogonal to the decoding rule: every preset decodes a
compiled model and a bf16 model (the CreditDecoding paper claims both compose)."""

import pytest
import torch

import dllm_decoding as dd
from dllm_decoding.testing import refuses_kv_cache
from dllm_decoding.reference import ReferenceConfig, ReferenceModelForMaskedLM

PROMPT = torch.tensor([[3, 4, 5, 6], [1, 7, 8, 9]])
MASK = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    config = ReferenceConfig(vocab_size=17, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, mask_token_id=0, pad_token_id=1, eos_token_id=2)
    return ReferenceModelForMaskedLM(config).eval().to(dtype)


def _valid(out, model):
    assert out.sequences[:, :4].tolist() == PROMPT.tolist()
    assert not bool((out.answers == model.config.mask_token_id).any())
    assert bool((out.nfe >= 1).all())


@pytest.fixture(scope="module")
def compiled():
    model = _model()
    # aot_eager traces through dynamo and AOTAutograd without generating C++: the composition
    # is what is tested here (graph capture of the model under our loop, recompiles as rows finish)
    return model, torch.compile(model, backend="aot_eager", dynamic=True)


@pytest.mark.parametrize("preset", dd.list_strategies())
def test_every_preset_decodes_a_compiled_model(compiled, preset):
    model, fast = compiled
    with torch.no_grad():
        eager_logits = model(input_ids=PROMPT).logits
        compiled_logits = fast(input_ids=PROMPT).logits
    assert torch.allclose(eager_logits, compiled_logits, atol=1e-4)
    # the adapter reads the original module's signature: the padding mask and the cache still reach it
    assert dd.HFMaskedDiffusionModel(fast, kv_cache="dual").takes_attention_mask
    out = dd.generate(fast, PROMPT, preset, attention_mask=MASK, gen_length=8, block_length=4, temperature=0.5)
    _valid(out, model)
    if refuses_kv_cache(preset):  # drafts, extra positions, canvas-wide logits: no cache, by design
        with pytest.raises(dd.InputError, match="key-value cache|kv_cache|--kv-cache"):
            dd.generate(dd.HFMaskedDiffusionModel(fast, kv_cache="dual"), PROMPT, preset, attention_mask=MASK,
                        gen_length=8, block_length=4)
        return
    cached = dd.generate(dd.HFMaskedDiffusionModel(fast, kv_cache="dual"), PROMPT, preset, attention_mask=MASK,
                         gen_length=8, block_length=4)
    _valid(cached, model)


@pytest.mark.parametrize("kv_cache", [None, "dual"])
@pytest.mark.parametrize("preset", dd.list_strategies())
def test_every_preset_decodes_a_bf16_model(preset, kv_cache):
    model = _model(torch.bfloat16)
    wrapped = dd.HFMaskedDiffusionModel(model, kv_cache=kv_cache) if kv_cache else model
    if kv_cache and refuses_kv_cache(preset):  # refused, by design
        with pytest.raises(dd.InputError, match="key-value cache|kv_cache|--kv-cache"):
            dd.generate(wrapped, PROMPT, preset, attention_mask=MASK, gen_length=8, block_length=4)
        return
    out = dd.generate(wrapped, PROMPT, preset, attention_mask=MASK, gen_length=8, block_length=4)
    _valid(out, model)
    alone = dd.generate(wrapped, PROMPT[1:, 1:], preset, gen_length=8, block_length=4, seed=[1])
    assert torch.equal(alone.answers[0], out.answers[1])  # bf16 ties included, a row decodes as alone


def test_bench_compile_decodes_a_compiled_reference_model(tmp_path, monkeypatch):
    """bench --compile: the sweep runs on the compiled network (aot_eager here: no C++ build in
    the suite) and says so in its results."""
    import json

    from dllm_decoding import cli
    from dllm_decoding.evaluation import loading

    real = loading.compile_model
    monkeypatch.setattr("dllm_decoding.cli.bench.compile_model", lambda m: real(m, backend="aot_eager"))
    assert cli.main(["bench", "--compile", "--setting", "fast_dllm_threshold", "--tasks", "sort", "--n", "4",
                     "--no-plots", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "bench.json").read_text())
    assert payload["meta"]["compiled"] is True and payload["results"][0]["accuracy"] > 0.5
    with pytest.raises(dd.ConfigError, match="not a torch module"):
        loading.compile_model(lambda ids: ids)
