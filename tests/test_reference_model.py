"""The shipped reference model: offline loading, Auto classes, padding invariance, checked
errors, the training entry point, and its accuracy re-measured on a small test sample."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

import dllm_decoding as dd
from dllm_decoding.reference import (MODEL_TYPE, ReferenceConfig, ReferenceModelForMaskedLM, checkpoint_dir,
                                     load_reference_model)
from dllm_decoding.tasks import TASKS, decode_answer, encode_answers, encode_batch


@pytest.fixture(scope="module")
def reference():
    return load_reference_model()


# --------------------------------------------------------------------------- the shipped files


def test_shipped_checkpoint_is_small_and_complete():
    folder = checkpoint_dir()
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 40e6
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "training_report.json", "loss_curve.png"):
        assert (folder / name).is_file(), name
    report = json.loads((folder / "training_report.json").read_text())
    for key in ("config", "seed", "steps", "train_seconds", "final_val_loss", "test_accuracy", "loss_curve"):
        assert key in report, key
    assert set(report["test_accuracy"]["one token per step"]) == set(TASKS)


def test_architecture_and_special_ids(reference):
    model, tokenizer = reference
    cfg = model.config
    assert cfg.model_type == MODEL_TYPE and not model.training
    assert (tokenizer.mask_token, tokenizer.eos_token, tokenizer.pad_token) == ("[MASK]", "[EOS]", "[PAD]")
    assert (cfg.mask_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
        tokenizer.mask_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert cfg.vocab_size == len(tokenizer) == model.lm_head.out_features
    assert model.lm_head.weight.data_ptr() != model.embed.weight.data_ptr()  # untied head
    assert tokenizer.chat_template is None
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_fresh_interpreter_loads_offline_fast():
    """A new process with HF_HUB_OFFLINE=1: Auto classes, load_reference_model in < 2 s."""
    code = (
        "import time, torch, transformers\n"
        "from dllm_decoding.reference import checkpoint_dir, load_reference_model\n"
        "t = time.perf_counter(); model, tok = load_reference_model(); took = time.perf_counter() - t\n"
        "from transformers import AutoModelForMaskedLM, AutoTokenizer\n"
        "auto = AutoModelForMaskedLM.from_pretrained(checkpoint_dir()).eval()\n"
        "ids = torch.tensor([tok.encode('S321=', add_special_tokens=False) + [tok.mask_token_id] * 3])\n"
        "same = torch.equal(auto(ids).logits, model(ids).logits)\n"
        "print(took, same, type(AutoTokenizer.from_pretrained(checkpoint_dir())).__name__)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               HF_HOME="/nonexistent-hf-home")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    took, same, _ = done.stdout.split()
    assert same == "True"
    assert float(took) < 2.0, f"load_reference_model took {float(took):.2f} s"


def test_loads_through_auto_classes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = checkpoint_dir()
    assert isinstance(AutoConfig.from_pretrained(folder), ReferenceConfig)
    model = AutoModelForMaskedLM.from_pretrained(folder)
    assert isinstance(model, ReferenceModelForMaskedLM)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.mask_token_id == tokenizer.mask_token_id
    assert tokenizer.decode(tokenizer.encode("S321=", add_special_tokens=False)) == "S321="


def test_save_and_reload_round_trip(reference, tmp_path):
    model, tokenizer = reference
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    again, tok2 = load_reference_model(tmp_path)
    auto = AutoModelForMaskedLM.from_pretrained(tmp_path, local_files_only=True).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0]])
    assert torch.equal(model(ids).logits, again(ids).logits)
    assert torch.equal(model(ids).logits, auto(ids).logits)
    assert tok2.get_vocab() == tokenizer.get_vocab()


# --------------------------------------------------------------------------- forward contract


def test_logits_shape_alignment_and_never_mask_or_pad(reference):
    model, tokenizer = reference
    ids = torch.tensor([tokenizer.encode("C8531=", add_special_tokens=False) + [tokenizer.mask_token_id] * 4])
    with torch.no_grad():
        out = model(input_ids=ids)
    assert out.logits.shape == (1, ids.shape[1], model.config.vocab_size)
    best = out.logits.argmax(-1)[0]
    assert tokenizer.mask_token_id not in best.tolist() and tokenizer.pad_token_id not in best.tolist()
    # logits[:, i] predicts token i (no shift): the first answer position of a copy is its first digit
    assert tokenizer.decode(best[6:7].tolist()) == "8"


def test_labels_give_a_loss(reference):
    model, tokenizer = reference
    ids = torch.tensor([tokenizer.encode("C123=", add_special_tokens=False) + [tokenizer.mask_token_id]])
    labels = torch.full_like(ids, -100)
    labels[0, -1] = tokenizer.convert_tokens_to_ids("1")
    assert torch.isfinite(model(ids, labels=labels).loss)


def test_left_padding_does_not_change_logits(reference):
    model, _ = reference
    gen = torch.Generator().manual_seed(0)
    lengths = [7, 12, 3, 10]
    width = max(lengths)
    rows = [torch.randint(3, model.config.vocab_size, (n,), generator=gen) for n in lengths]
    ids = torch.full((len(rows), width), model.config.pad_token_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    with torch.no_grad():
        batched = model(ids, attention_mask=mask).logits
        for i, r in enumerate(rows):
            alone = model(r[None]).logits[0]
            torch.testing.assert_close(batched[i, width - len(r):], alone, atol=1e-4, rtol=1e-4)
    # a bool mask means the same as a 0/1 mask
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask.bool()).logits, batched)


def test_padding_does_not_change_decodes(reference):
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


# --------------------------------------------------------------------------- accuracy


BELOW_TARGET: dict[str, str] = {}  # task -> why it is below the 95% target (strict xfail)


@pytest.mark.parametrize("task_name", [
    pytest.param(name, marks=pytest.mark.xfail(reason=BELOW_TARGET[name], strict=True)) if name in BELOW_TARGET
    else name for name in TASKS])
def test_shipped_accuracy_one_token_per_step(reference, task_name):
    """Re-measure the checkpoint: 32 test examples, one token per step (LLaDA, steps = gen_length):
    at least 90% (the 95% target, less sampling noise at n = 32), and within 20 points of what
    training_report.json says for 200 examples."""
    model, tokenizer = reference
    task = TASKS[task_name]
    examples = task.examples("test", 32, seed=7)
    prompt, mask = encode_batch(tokenizer, examples, task)
    out = dd.generate(model, prompt, "llada_low_confidence", attention_mask=mask,
                      gen_length=task.gen_length, block_length=task.gen_length,
                      overrides={"steps": task.gen_length})
    assert out.sequences.shape == (len(examples), prompt.shape[1] + task.gen_length)
    assert out.nfe.tolist() == [task.gen_length] * len(examples)
    predictions = [decode_answer(tokenizer, a) for a in out.sequences[:, prompt.shape[1]:]]
    accuracy = sum(task.check(p, e) for p, e in zip(predictions, examples)) / len(examples)
    report = json.loads((checkpoint_dir() / "training_report.json").read_text())
    reported = report["test_accuracy"]["one token per step"][task_name]
    assert abs(accuracy - reported) <= 0.2, f"{task_name}: {accuracy:.2f} now, {reported:.2f} in the report"
    assert accuracy >= 0.9, f"{task_name}: {accuracy:.2f}"


def _accuracy(model, tokenizer, task, examples, strategy, **overrides):
    prompt, mask = encode_batch(tokenizer, examples, task)
    out = dd.generate(model, prompt, strategy, attention_mask=mask, gen_length=task.gen_length,
                      block_length=task.gen_length, overrides=overrides)
    return sum(task.check(decode_answer(tokenizer, a), e) for a, e in zip(out.answers, examples)) / len(examples)


@pytest.mark.parametrize("task_name", ["complement", "latin_square"])
def test_aggressive_parallel_decoding_costs_accuracy_where_tokens_depend_on_each_other(reference, task_name):
    """The reference model tells strategies apart: on tasks whose answer tokens constrain each
    other, committing 8 tokens per step or everything above 0.5 loses at least 10 points."""
    model, tokenizer = reference
    task = TASKS[task_name]
    examples = task.examples("test", 48, seed=11)
    careful = _accuracy(model, tokenizer, task, examples, "llada_low_confidence")
    for strategy, overrides in (("llada_low_confidence", {"select.k": 8}),
                                ("fast_dllm_threshold", {"select.threshold": 0.5})):
        hasty = _accuracy(model, tokenizer, task, examples, strategy, **overrides)
        assert careful - hasty >= 0.10, f"{task_name} {strategy} {overrides}: {careful:.2f} vs {hasty:.2f}"


# --------------------------------------------------------------------------- training entry point


def test_training_loss_function_runs_and_is_finite(reference):
    from dllm_decoding.reference.train import masked_diffusion_loss

    model, tokenizer = reference
    task = TASKS["addition"]
    examples = task.examples("train", 8)
    prompt, mask = encode_batch(tokenizer, examples, task)
    answers = encode_answers(tokenizer, examples, task)
    loss, masked = masked_diffusion_loss(model, prompt, mask, answers, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and masked > 0
    # t = 1 masks every answer token (EOS fill included) and never the prompt
    loss1, masked1 = masked_diffusion_loss(model, prompt, mask, answers, torch.Generator().manual_seed(0),
                                           t=torch.ones(8, 1))
    assert masked1 == answers.numel() and torch.isfinite(loss1)


def test_tiny_training_run_writes_a_loadable_checkpoint_and_is_seeded(tmp_path):
    from dllm_decoding.cli import train

    args = ["--steps", "6", "--hidden", "16", "--layers", "1", "--heads", "2", "--ff", "32", "--batch-tokens", "256",
            "--eval-every", "3", "--save-every", "4", "--val-n", "4", "--eval-n", "2", "--quiet", "--seed", "3"]
    curves = []
    for run in ("a", "b"):
        assert train.main(args + ["--out", str(tmp_path / run)]) == 0
        report = json.loads((tmp_path / run / "training_report.json").read_text())
        curves.append([c["val_loss"] for c in report["loss_curve"]])
    assert curves[0] == curves[1] and len(curves[0]) == 2
    assert report["steps"] == 6 and report["seed"] == 3 and "one token per step" in report["test_accuracy"]
    assert (tmp_path / "a" / "loss_curve.png").stat().st_size > 0
    # --save-every counts optimiser steps, whatever the validation interval (4 is not a multiple of 3)
    assert (tmp_path / "a" / "latest" / "model.safetensors").is_file()
    model, _ = load_reference_model(tmp_path / "a")
    assert model.config.hidden_size == 16
    # a continuation run starts from those weights, with its own mix override
    assert train.main(args[:1] + ["2"] + args[2:] + ["--init-from", str(tmp_path / "a"), "--mix", "insert=3",
                                                     "--out", str(tmp_path / "c")]) == 0
    report = json.loads((tmp_path / "c" / "training_report.json").read_text())
    assert report["init_from"] == str(tmp_path / "a") and report["base_mix"]["insert"] == 3.0
    assert report["config"]["hidden_size"] == 16


def test_training_help_and_bad_threads():
    from dllm_decoding.cli.train import build_parser

    text = build_parser().format_help()
    for flag in ("--minutes", "--steps", "--threads", "--seed", "--out"):
        assert flag in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--threads", "many"])
    assert build_parser().parse_args(["--mix", "insert=2"]).mix == [("insert", 2.0)]
    for bad in ("inserts=2", "insert=0", "insert=two", "insert"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--mix", bad])


# --------------------------------------------------------------------------- clear errors


def _copy_checkpoint(tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(checkpoint_dir(), target)
    return target


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(dd.ModelError, match="is not a directory"):
        load_reference_model(tmp_path / "nowhere")
    target = _copy_checkpoint(tmp_path)
    (target / "model.safetensors").unlink()
    with pytest.raises(dd.ModelError, match=r"ckpt.*is missing model.safetensors"):
        load_reference_model(target)
    target = _copy_checkpoint(tmp_path / "again")
    (target / "tokenizer.json").unlink()
    with pytest.raises(dd.ModelError, match="is missing tokenizer.json"):
        load_reference_model(target)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupted_weights_are_named(tmp_path, damage):
    target = _copy_checkpoint(tmp_path)
    weights = target / "model.safetensors"
    if damage == "garbage":
        weights.write_bytes(b"not a safetensors file")
    else:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(dd.ModelError, match="cannot load the weights in .*model.safetensors"):
        load_reference_model(target)


def test_weights_that_do_not_fit_the_config_are_named(tmp_path):
    target = _copy_checkpoint(tmp_path)
    tensors = load_file(target / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(dd.ModelError, match="cannot load the weights in .*model.safetensors.*lm_head"):
        load_reference_model(target)


def test_bad_config_is_named(tmp_path):
    target = _copy_checkpoint(tmp_path)
    config = json.loads((target / "config.json").read_text())
    config["model_type"] = "bert"
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(dd.ModelError, match="holds a model of type 'bert'"):
        load_reference_model(target)
    (target / "config.json").write_text("{not json")
    with pytest.raises(dd.ModelError, match="config.json.* is not valid JSON"):
        load_reference_model(target)


def test_mismatched_tokenizer_is_named(tmp_path):
    target = _copy_checkpoint(tmp_path)
    vocab = json.loads((target / "tokenizer.json").read_text())
    vocab["model"]["vocab"]["extra"] = len(vocab["model"]["vocab"])
    (target / "tokenizer.json").write_text(json.dumps(vocab))
    with pytest.raises(dd.ModelError, match="does not match the model .*vocab size"):
        load_reference_model(target)


def test_mismatched_special_ids_are_named(tmp_path):
    target = _copy_checkpoint(tmp_path)
    config = json.loads((target / "config.json").read_text())
    config["mask_token_id"], config["eos_token_id"] = config["eos_token_id"], config["mask_token_id"]
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(dd.ModelError, match=r"does not match the model .*mask id: tokenizer 0 vs model 2"):
        load_reference_model(target)
