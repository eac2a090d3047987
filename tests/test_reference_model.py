"""The shipped reference model: offline loading, Auto classes, padding invariance, checked
errors, and its accuracy re-measured on a small test sample."""

import json
import shutil

import pytest
import torch
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

import dllm_decoding as dd
from dllm_decoding.reference import ReferenceConfig, checkpoint_dir, load_reference_model
from dllm_decoding.tasks import TASKS, decode_answer, encode_answers, encode_batch


@pytest.fixture(scope="module")
def reference():
    return load_reference_model()


def test_shipped_checkpoint_is_small_and_complete():
    folder = checkpoint_dir()
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 40e6
    for name in ("config.json", "model.safetensors", "tokenizer.json", "training_report.json", "loss_curve.png"):
        assert (folder / name).is_file(), name


def test_loads_offline_through_auto_classes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = checkpoint_dir()
    assert isinstance(AutoConfig.from_pretrained(folder), ReferenceConfig)
    model = AutoModelForMaskedLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.mask_token_id == tokenizer.mask_token_id
    assert tokenizer.decode(tokenizer.encode("S321=", add_special_tokens=False)) == "S321="


def test_save_and_reload_round_trip(reference, tmp_path):
    model, tokenizer = reference
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    again, _ = load_reference_model(tmp_path)
    ids = torch.tensor([[5, 6, 7, 0, 0]])
    assert torch.equal(model(ids).logits, again(ids).logits)


def test_padding_does_not_change_predictions(reference):
    model, tokenizer = reference
    task = TASKS["sort"]
    examples = task.examples("test", 4)
    prompt, mask = encode_batch(tokenizer, examples, task)
    batched = dd.generate(model, prompt, "fast_dllm_threshold", attention_mask=mask,
                          gen_length=task.gen_length, overrides={"select.threshold": 0.7})
    for row, ex in enumerate(examples):
        p, m = encode_batch(tokenizer, [ex], task)
        alone = dd.generate(model, p, "fast_dllm_threshold", attention_mask=m, gen_length=task.gen_length,
                            overrides={"select.threshold": 0.7})
        assert torch.equal(alone.answers[0], batched.answers[row])
        assert int(alone.nfe[0]) == int(batched.nfe[row])


def test_training_loss_function_runs_and_is_finite(reference):
    from dllm_decoding.reference.train import masked_diffusion_loss

    model, tokenizer = reference
    task = TASKS["addition"]
    examples = task.examples("train", 8)
    prompt, mask = encode_batch(tokenizer, examples, task)
    loss, masked = masked_diffusion_loss(model, prompt, mask, encode_answers(tokenizer, examples, task),
                                         torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and masked > 0


@pytest.mark.parametrize("task_name", list(TASKS))
def test_shipped_accuracy_one_token_per_step(reference, task_name):
    """Re-measure the checkpoint: 48 test examples, one token per step (LLaDA, steps = gen_length)."""
    model, tokenizer = reference
    task = TASKS[task_name]
    examples = task.examples("test", 48, seed=7)
    prompt, mask = encode_batch(tokenizer, examples, task)
    out = dd.generate(model, prompt, "llada_low_confidence", attention_mask=mask,
                      gen_length=task.gen_length, block_length=task.gen_length)
    correct = sum(task.check(decode_answer(tokenizer, a), e) for a, e in zip(out.answers, examples))
    assert correct / len(examples) >= 0.9, f"{task_name}: {correct}/{len(examples)}"
    assert out.nfe.tolist() == [task.gen_length] * len(examples)


def _copy_checkpoint(tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(checkpoint_dir(), target)
    return target


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(dd.ModelError, match="is not a directory"):
        load_reference_model(tmp_path / "nowhere")
    target = _copy_checkpoint(tmp_path)
    (target / "model.safetensors").unlink()
    with pytest.raises(dd.ModelError, match="is missing model.safetensors"):
        load_reference_model(target)


def test_corrupted_weights_are_named(tmp_path):
    target = _copy_checkpoint(tmp_path)
    (target / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(dd.ModelError, match="cannot load the weights in .*model.safetensors"):
        load_reference_model(target)


def test_other_model_type_is_named(tmp_path):
    target = _copy_checkpoint(tmp_path)
    config = json.loads((target / "config.json").read_text())
    config["model_type"] = "bert"
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(dd.ModelError, match="holds a model of type 'bert'"):
        load_reference_model(target)


def test_mismatched_tokenizer_is_named(tmp_path):
    target = _copy_checkpoint(tmp_path)
    vocab = json.loads((target / "tokenizer.json").read_text())
    vocab["model"]["vocab"]["extra"] = len(vocab["model"]["vocab"])
    (target / "tokenizer.json").write_text(json.dumps(vocab))
    with pytest.raises(dd.ModelError, match="does not match the model .*vocab size"):
        load_reference_model(target)
