"""The command line: help, listing, resolved options, generation, JSON, errors."""

import json
import os
from pathlib import Path

import pytest

from dllm_decoding import cli, get_registry, make_plugin_manager

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_reads_well(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for word in ("strategies", "generate", "demo", "eval", "bench", "train-reference", "examples:"):
        assert word in text


def test_strategies_list_and_show(capsys):
    code, out, _ = run(capsys, "strategies")
    assert code == 0 and "credit_decoding" in out and "llada_low_confidence" in out
    code, out, _ = run(capsys, "strategies", "credit_decoding", "--set", "select.threshold=0.8",
                       "--set", "fuse.credit.alpha=0.5", "--json")
    data = json.loads(out)
    assert data["select"] == {"use": "threshold", "threshold": 0.8, "near_max": 1e-5}
    assert data["fuse"][0] == {"use": "credit", "alpha": 0.5, "beta": 0.8, "gamma": 0.2}
    assert data["steps"] == data["gen_length"] == 64
    code, out, _ = run(capsys, "strategies", "llada_low_confidence", "--set", "steps=32")
    assert code == 0 and "steps = 32" in out and '[select]\nuse = "topk"' in out


def test_generate_on_toy_model_json(capsys):
    code, out, _ = run(capsys, "generate", "--model", "toy", "--prompt-ids", "1,2,3", "--gen-length", "8",
                       "--block-length", "4", "--strategy", "fast_dllm_threshold", "--set", "select.threshold=0.3", "--json")
    data = json.loads(out)
    assert code == 0 and len(data["results"][0]["answer_ids"]) == 8
    assert 2 <= data["results"][0]["nfe"] <= 8


@pytest.mark.parametrize("argv, message", [
    (["strategies", "credt"], "did you mean 'credit_decoding'"),
    (["strategies", "credit_decoding", "--set", "select.threshhold=0.8"], "unknown option 'threshhold'"),
    (["strategies", "credit_decoding", "--set", "novalue"], "is not of the form key=value"),
    (["generate", "--model", "toy", "--prompt-ids", "1,2", "--gen-length", "8", "--block-length", "3"],
     "block_length=3 does not divide gen_length=8"),
    (["generate", "--model", "toy"], "give --task NAME, --prompt TEXT or --prompt-ids"),
])
def test_errors_exit_2_with_one_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1


def test_strategy_reference_doc_is_current(monkeypatch):
    monkeypatch.setenv("DLLM_DECODING_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry = get_registry(make_plugin_manager())
    expected = cli.strategy_reference(registry)
    assert (ROOT / "docs" / "strategies.md").read_text() == expected + "\n", \
        "docs/strategies.md is stale: DLLM_DECODING_DISABLE_PLUGIN_AUTOLOAD=1 dllm-decode strategies --markdown > docs/strategies.md"


def test_train_reference_passes_every_argument_to_the_trainer(capsys, monkeypatch):
    from dllm_decoding.reference import train

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train-reference", "--help"])
    assert exit_info.value.code == 0
    assert "usage: dllm-decode train-reference" in capsys.readouterr().out
    seen = []
    monkeypatch.setattr(train, "main", lambda argv, prog=None: seen.append((argv, prog)) or 0)
    assert cli.main(["train-reference", "--steps", "5", "--out", "runs/x"]) == 0
    assert seen == [(["--steps", "5", "--out", "runs/x"], "dllm-decode train-reference")]


def test_model_arguments_are_checked_before_any_work(capsys):
    for argv, message in [
        (["eval", "--task", "sort", "--model", "toy"], "needs a model with a tokenizer"),
        (["bench", "--quick", "--model", "toy", "--out", "/tmp/x"], "needs a model with a tokenizer"),
        (["demo", "--model", "toy"], "needs a model with a tokenizer"),
        (["generate", "--model", "toy", "--prompt-ids", "1,2", "--logit-noise", "1"], "toy model is a plain function"),
        (["eval", "--task", "sort", "--logit-temperature", "0"], "--logit-temperature must be a positive number"),
        (["bench", "--overhead", "--logit-noise", "0.5"], "--overhead times the loop on the model as it is"),
    ]:
        assert cli.main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_eval_on_an_under_confident_model_says_so(capsys):
    assert cli.main(["eval", "--task", "sort", "--n", "4", "--logit-temperature", "3",
                     "--strategy", "fast_dllm_threshold"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["logit_temperature"] == 3.0 and result["model"] == "reference"
    assert result["nfe_mean"] > 1.5  # at 0.9 the flattened confidences rarely pass in one step


def test_demo_marks_each_first_answer_and_explains_tasks_with_several_valid_answers(capsys):
    assert cli.main(["demo", "--tasks", "complement", "copy", "--n", "8", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["task"], r["strategy"]) for r in rows][:3] == [
        ("complement", s) for s in ("llada_low_confidence", "fast_dllm_threshold", "credit_decoding")]
    for r in rows:
        assert isinstance(r["answer_correct"], bool) and 0 <= r["accuracy"] <= 1
        if r["answer"] == r["expected"]:
            assert r["answer_correct"]
    assert cli.main(["demo", "--tasks", "complement", "copy", "--n", "8"]) == 0
    table = capsys.readouterr().out
    assert "| task | strategy | first answer | reference answer | accuracy | mean NFE |" in table
    assert "(right)" in table or "(wrong)" in table
    if any(r["answer_correct"] and r["answer"] != r["expected"] for r in rows):
        assert "several answers are valid; the reference is one of them" in table
