"""The command line: help, listing, resolved options, generation, JSON, errors."""

import json
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
    assert data["select"] == {"use": "threshold", "threshold": 0.8, "near_max": 1e-5, "strict": False}
    assert data["fuse"][0] == {"use": "credit", "alpha": 0.5, "beta": 0.8, "gamma": 0.2, "slots": None}
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
    expected = cli.strategies.strategy_reference(registry)
    assert (ROOT / "docs" / "strategies.md").read_text() == expected + "\n", \
        "docs/strategies.md is stale: DLLM_DECODING_DISABLE_PLUGIN_AUTOLOAD=1 dllm-decode strategies --markdown > docs/strategies.md"


def test_train_reference_passes_every_argument_to_the_trainer(capsys, monkeypatch):
    from dllm_decoding.cli import train

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


@pytest.fixture(scope="module")
def bert_checkpoint(tmp_path_factory):
    """A tiny Hugging Face masked LM that is not the reference architecture, with a tokenizer and
    no mask_token_id in its config (as LLaDA's)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from dllm_decoding.reference.tokenizer import build_tokenizer

    folder = tmp_path_factory.mktemp("bert")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32, max_position_embeddings=64))
    with torch.no_grad():  # a dLLM never proposes its special tokens
        model.cls.predictions.bias[[tokenizer.mask_token_id, tokenizer.pad_token_id]] = -1e4
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


def test_generate_decodes_any_hugging_face_checkpoint(capsys, bert_checkpoint):
    folder, tokenizer = bert_checkpoint
    argv = ["generate", "--model", str(folder), "--mask-id", str(tokenizer.mask_token_id), "--prompt", "abc",
            "--gen-length", "6", "--strategy", "fast_dllm_threshold", "--json"]
    assert cli.main(argv) == 0
    row = json.loads(capsys.readouterr().out)["results"][0]
    assert len(row["answer_ids"]) == 6 and row["answer"] == tokenizer.decode(row["answer_ids"], skip_special_tokens=True)
    assert cli.main(argv[:5] + ["--prompt-ids", "5,6,7", "--gen-length", "4", "--kv-cache", "dual"]) == 2
    assert "BertForMaskedLM.forward does not take key_values, use_cache, window_start" in capsys.readouterr().err


def test_foreign_checkpoints_say_what_they_need(capsys, bert_checkpoint, tmp_path):
    folder, _ = bert_checkpoint
    for argv, message in [
        (["generate", "--model", str(folder), "--prompt", "abc"], "its config has no mask_token_id; pass --mask-id"),
        (["eval", "--model", str(folder), "--task", "sort"], "is another model. Decode your own prompts with"),
        (["bench", "--quick", "--model", str(folder), "--out", str(tmp_path)], "bench decodes the reference tasks"),
        (["generate", "--mask-id", "3", "--prompt", "abc"], "--mask-id: for checkpoints other than the reference"),
        (["generate", "--model", str(tmp_path), "--mask-id", "3", "--prompt", "abc"],
         "is not a model checkpoint: it has no config.json (the folder is empty)"),
    ]:
        assert cli.main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


CUSTOM_MODELING = '''
import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput


class TinyDlmConfig(PretrainedConfig):
    model_type = "tinydlm"

    def __init__(self, vocab_size=12, hidden_size=8, **kwargs):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        super().__init__(**kwargs)


class TinyDlm(PreTrainedModel):  # registered as AutoModel, as LLaDA and Dream register theirs
    config_class = TinyDlmConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.head = torch.nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(self, input_ids, attention_mask=None):
        logits = self.head(self.embed(input_ids).cumsum(dim=1))
        logits[..., 0] = float("-inf")  # token 0 is [MASK]
        return MaskedLMOutput(logits=logits)
'''


def test_a_checkpoint_with_its_own_modeling_code_runs_only_when_trusted(capsys, tmp_path):
    import importlib.util

    source = tmp_path / "src" / "modeling_tinydlm.py"
    source.parent.mkdir()
    source.write_text(CUSTOM_MODELING)
    spec = importlib.util.spec_from_file_location("modeling_tinydlm", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = tmp_path / "ckpt"
    config = module.TinyDlmConfig(auto_map={"AutoConfig": "modeling_tinydlm.TinyDlmConfig",
                                            "AutoModel": "modeling_tinydlm.TinyDlm"})
    module.TinyDlm(config).save_pretrained(folder)
    (folder / "modeling_tinydlm.py").write_text(CUSTOM_MODELING)
    argv = ["generate", "--model", str(folder), "--mask-id", "0", "--prompt-ids", "1,2,3", "--gen-length", "4", "--json"]
    assert cli.main(argv) == 2
    assert "ships its own modeling code; pass --trust-remote-code to run it" in capsys.readouterr().err
    assert cli.main(argv + ["--trust-remote-code"]) == 0
    row = json.loads(capsys.readouterr().out)["results"][0]
    assert len(row["answer_ids"]) == 4 and 0 not in row["answer_ids"] and row["nfe"] <= 4
