"""Our LLaDA and Dream classes (dllm_decoding/models/llada.py, dream.py): the published code's
logits on tiny random checkpoints (fixtures built by tests/fixtures/make_family_fixtures.py from
NVlabs/Fast-dLLM's modeling code), Fast-dLLM's key-value cache on them, loading by model_type,
and the errors for checkpoints that cannot work."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import dllm_decoding as dd
from dllm_decoding import cli
from dllm_decoding.models import DreamForDiffusionLM, LLaDAForDiffusionLM

FIXTURES = Path(__file__).parent / "fixtures"
FAMILIES = {"llada": LLaDAForDiffusionLM, "dream": DreamForDiffusionLM}
MASK = 126


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return request.param


@pytest.fixture(scope="module")
def models():
    return {name: dd.load_model(FIXTURES / f"{name}-tiny") for name in FAMILIES}


def _expected(name):
    return load_file(str(FIXTURES / f"{name}-tiny-expected.safetensors"))


# --------------------------------------------------------------------------- the published logits


def test_logits_equal_the_published_code(models, family):
    model, expected = models[family], _expected(family)
    assert type(model) is FAMILIES[family] and model.dtype == torch.float32
    with torch.no_grad():
        logits = model(input_ids=expected["input_ids"]).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-5)


def test_a_left_padded_row_gives_the_logits_of_the_row_alone(models, family):
    # Fast-dLLM's LLaDA ignores attention_mask and Dream's generate builds a 4-D mask: the
    # property both published codes aim at is that padding does not change a row's logits
    model, expected = models[family], _expected(family)
    with torch.no_grad():
        logits = model(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"]).logits
    real = expected["attention_mask"].bool()
    torch.testing.assert_close(logits[real], expected["logits_rows_alone"][real], rtol=0, atol=1e-5)
    assert bool(logits.isfinite().all())  # padded positions too: the decoder checks every logit


def test_save_and_from_pretrained_give_the_same_logits(models, family, tmp_path):
    # nothing is a non-persistent buffer (the published Dream's rotary inv_freq comes back
    # uninitialised from transformers 5's from_pretrained)
    model, expected = models[family], _expected(family)
    assert list(model.buffers()) == []
    model.save_pretrained(tmp_path)
    again = FAMILIES[family].from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=expected["input_ids"]).logits, expected["logits"], rtol=0, atol=1e-5)
    assert dd.load_model(tmp_path).config.mask_token_id == MASK


def test_the_family_sets_mask_id_eos_ids_and_logit_shift(models):
    llada, dream = models["llada"], models["dream"]
    assert llada.config.mask_token_id == dream.config.mask_token_id == MASK
    assert llada.eos_token_ids == dream.eos_token_ids == (125,)
    assert not dd.HFMaskedDiffusionModel(llada).shift_logits
    assert dd.HFMaskedDiffusionModel(dream).shift_logits
    with pytest.raises(dd.InputError, match="shift_logits=False contradicts the model .DreamForDiffusionLM.: its "
                                            "logits predict the next token"):
        dd.HFMaskedDiffusionModel(dream, shift_logits=False)
    with pytest.raises(dd.InputError, match="shift_logits=True contradicts the model .LLaDAForDiffusionLM."):
        dd.HFMaskedDiffusionModel(llada, kv_cache="dual", shift_logits=True)


def test_dream_decodes_with_its_shift_without_being_told(models):
    dream = models["dream"]
    prompt = _expected("dream")["input_ids"][:1, :6]  # no [MASK] among them
    kw = dict(gen_length=8, block_length=4, overrides={"select.threshold": 0.5})
    plain = dd.generate(dream, prompt, "fast_dllm_threshold", **kw)
    told = dd.generate(dd.HFMaskedDiffusionModel(dream, shift_logits=True), prompt, "fast_dllm_threshold", **kw)
    assert torch.equal(plain.sequences, told.sequences)
    # and by hand: the decoder sees logits[:, i] = model logits at i - 1
    with torch.no_grad():
        raw = dream(input_ids=plain.sequences).logits
    answer = plain.sequences[0, 6:]
    assert bool((raw[0, 5:13].argmax(-1) == answer).any())


# --------------------------------------------------------------------------- key-value cache


def test_a_window_against_a_fresh_cache_equals_the_full_forward(models, family):
    model, expected = models[family], _expected(family)
    ids, mask = expected["input_ids"], expected["attention_mask"]
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, use_cache=True)
        for start, width in [(5, 4), (8, 4), (0, 12)]:
            window = model(input_ids=ids[:, start:start + width], attention_mask=mask, key_values=full.key_values,
                           window_start=start)
            torch.testing.assert_close(window.logits, full.logits[:, start:start + width], rtol=0, atol=1e-5)
        with pytest.raises(ValueError, match="outside the cached 12 positions"):
            model(input_ids=ids[:, :4], key_values=full.key_values, window_start=10)
    assert len(full.key_values) == 2 and full.key_values[0][0].shape == (3, 2, 12, 8)  # grouped-query: 2 kv heads


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("block, threshold, steps", [(4, 0.3, None), (4, 0.9, None), (8, 0.5, None), (4, None, 8),
                                                      (8, None, 6)])
def test_cached_decodes_equal_fast_dllm_cached_generate(models, family, mode, block, threshold, steps):
    from published_loops import fast_dllm_cached_generate

    model = models[family]
    cached = dd.HFMaskedDiffusionModel(model, kv_cache=mode)
    ids = _expected(family)["input_ids"]
    for start, stop in [(0, 5), (2, 9), (4, 7)]:
        prompt = ids[:1, start:stop]  # the first row's first 9 tokens are prompt-like (no [MASK])
        if threshold is None:
            ours = dd.generate(cached, prompt, "llada_low_confidence", gen_length=16, block_length=block, steps=steps,
                               overrides={"score.precision": "float64"})  # Fast-dLLM ranks in float64
        else:
            ours = dd.generate(cached, prompt, "fast_dllm_threshold", gen_length=16, block_length=block,
                               overrides={"select.threshold": threshold})
        with torch.no_grad():
            ref, nfe, idle = fast_dllm_cached_generate(model, prompt, gen_length=16, block_length=block, mask_id=MASK,
                                                       cache=mode, threshold=threshold, steps=steps,
                                                       shift=family == "dream")
        assert torch.equal(ours.sequences, ref), (start, ours.sequences, ref)
        assert ours.nfe.tolist() == [nfe - idle] and idle <= 16 // block


@st.composite
def _padded_batches(draw):
    lengths = [draw(st.integers(1, 6)) for _ in range(draw(st.integers(2, 3)))]
    block = draw(st.sampled_from([2, 4]))
    return (draw(st.sampled_from(sorted(FAMILIES))), lengths, block, block * draw(st.integers(1, 3)),
            draw(st.sampled_from(["prefix", "dual"])), draw(st.sampled_from([0.3, 0.7])), draw(st.integers(0, 1000)))


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=_padded_batches())
def test_a_cached_padded_batch_decodes_as_its_rows_alone(models, case):
    family, lengths, block, gen_length, mode, threshold, seed = case
    cached = dd.HFMaskedDiffusionModel(models[family], kv_cache=mode)
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    prompt = torch.randint(0, 120, (len(lengths), width), generator=generator)
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    prompt[mask == 0] = 125
    kw = dict(gen_length=gen_length, block_length=block, overrides={"select.threshold": threshold})
    batched = dd.generate(cached, prompt, "fast_dllm_threshold", attention_mask=mask, **kw)
    for row, n in enumerate(lengths):
        alone = dd.generate(cached, prompt[row:row + 1, width - n:], "fast_dllm_threshold", **kw)
        assert torch.equal(alone.answers[0], batched.answers[row])
        assert int(alone.nfe[0]) == int(batched.nfe[row])


# --------------------------------------------------------------------------- loading and bad input


def _copy(family, tmp_path, edit_config=None):
    folder = tmp_path / family
    shutil.copytree(FIXTURES / f"{family}-tiny", folder)
    if edit_config:
        config = json.loads((folder / "config.json").read_text())
        edit_config(config)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def _error(exc_type, path):
    with pytest.raises(exc_type) as info:
        dd.load_model(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_an_unknown_family_is_refused_with_the_way_out(tmp_path):
    folder = _copy("llada", tmp_path, lambda c: c.update(model_type="mdm_x"))
    message = _error(dd.ModelError, folder)
    assert "model_type 'mdm_x' is not a family this package implements ('llada' (LLaDA), 'Dream' (Dream))" in message
    assert "--trust-remote-code" in message


def test_cli_unknown_family_messages(capsys, tmp_path):
    plain = _copy("llada", tmp_path, lambda c: c.update(model_type="mdm_x"))
    assert cli.main(["generate", "--model", str(plain), "--mask-id", "3", "--prompt-ids", "1,2"]) == 2
    assert "model_type 'mdm_x' is an unknown family" in capsys.readouterr().err
    custom = _copy("dream", tmp_path, lambda c: c.update(model_type="mdm_y", auto_map={"AutoModel": "m.M"}))
    assert cli.main(["generate", "--model", str(custom), "--mask-id", "3", "--prompt-ids", "1,2"]) == 2
    assert "ships its own modeling code; pass --trust-remote-code" in capsys.readouterr().err


def test_a_config_without_mask_id_is_not_decoded_with_a_default(tmp_path):
    folder = _copy("llada", tmp_path, lambda c: c.pop("mask_token_id"))
    message = _error(dd.ConfigError, folder)
    assert "has no mask_token_id" in message and "pass --mask-id ID" in message and "126336" in message
    assert dd.load_model(folder, mask_id=7).config.mask_token_id == 7
    # the published vocabulary has a known [MASK]: Dream-v0's config without one still decodes right
    from dllm_decoding.models.families import FAMILIES as BY_TYPE, resolve_mask_id

    assert resolve_mask_id(folder, {"vocab_size": 152064}, BY_TYPE["Dream"]) == 151666
    assert resolve_mask_id(folder, {"vocab_size": 126464}, BY_TYPE["llada"]) == 126336


def test_unsupported_architecture_fields_are_named_before_weights_load(tmp_path):
    folder = _copy("llada", tmp_path, lambda c: c.update(block_type="sequential"))
    message = _error(dd.ConfigError, folder)
    assert "block_type='sequential' (supported: 'llama')" in message and "--trust-remote-code" in message
    folder = _copy("dream", tmp_path, lambda c: c.update(rope_scaling={"rope_type": "yarn", "factor": 4.0}))
    assert "rope_scaling=" in _error(dd.ConfigError, folder)


@pytest.mark.parametrize("family_name, edit, fragment", [
    ("llada", lambda c: c.update(n_layers=3), "missing 9 weight(s) the config implies: model.transformer.blocks.2."),
    ("llada", lambda c: c.update(weight_tying=True), "1 weight(s) the config does not explain: model.transformer.ff_out.weight"),
    ("dream", lambda c: c.update(intermediate_size=64), "6 of another shape: model.layers.0.mlp.down_proj.weight"),
    ("dream", lambda c: c.update(tie_word_embeddings=True), "does not explain: lm_head.weight"),
])
def test_weights_that_do_not_fit_the_config_are_refused_naming_them(tmp_path, family_name, edit, fragment):
    folder = _copy(family_name, tmp_path, edit)
    message = _error(dd.ModelError, folder)
    assert "the weights do not fit its config.json" in message and fragment in message


def test_a_checkpoint_missing_a_weight_is_refused(tmp_path):
    folder = _copy("dream", tmp_path)
    weights = load_file(str(folder / "model.safetensors"))
    del weights["model.norm.weight"]
    save_file(weights, str(folder / "model.safetensors"))
    assert "missing 1 weight(s) the config implies: model.norm.weight" in _error(dd.ModelError, folder)


def test_cli_generates_with_our_classes_and_the_cache(capsys):
    for family_name in sorted(FAMILIES):
        for extra in ([], ["--kv-cache", "dual"], ["--kv-cache", "prefix", "--kv-refresh", "2"]):
            argv = ["generate", "--model", str(FIXTURES / f"{family_name}-tiny"), "--prompt-ids", "5,6,7",
                    "--gen-length", "8", "--block-length", "4", "--json", *extra]
            assert cli.main(argv) == 0, argv
            row = json.loads(capsys.readouterr().out)["results"][0]
            assert len(row["answer_ids"]) == 8 and MASK not in row["answer_ids"]
    argv = ["generate", "--model", str(FIXTURES / "llada-tiny"), "--prompt-ids", "5,6", "--shift-logits"]
    assert cli.main(argv) == 2
    assert "shift_logits=True contradicts the model" in capsys.readouterr().err
    argv = ["generate", "--model", str(FIXTURES / "dream-tiny"), "--prompt-ids", "5,6", "--gen-length", "4", "--shift-logits"]
    assert cli.main(argv) == 0
