"""The lm-eval integration: the dllm model, our tasks as lm-eval tasks, the CLI, bad input,
data-parallel evaluation and the results report. Offline: the reference model and shipped tasks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dllm_decoding import ConfigError
from dllm_decoding.evaluation.lm_eval import TASKS_DIR, MissingDependency, require_lm_eval
from dllm_decoding.evaluation.lm_eval.likelihood import masked_counts, mc_loglikelihood
from dllm_decoding.evaluation.lm_eval.options import LmEvalOptions
from dllm_decoding.evaluation.lm_eval.taskfiles import expected_files

lm_eval = pytest.importorskip("lm_eval", reason="the eval extra (pip install -e '.[eval]') is part of the test extra")

from dllm_decoding.evaluation.evaluate import evaluate  # noqa: E402
from dllm_decoding.evaluation.lm_eval import harness, model as dllm_model  # noqa: E402
from dllm_decoding.evaluation.lm_eval.report import comparison_rows, markdown_table, read_results  # noqa: E402
from dllm_decoding.reference import load_reference_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GENERATION_TASKS = ["copy", "reverse", "sort", "insert", "addition", "complement", "latin_square"]


@pytest.fixture(scope="module")
def reference():
    return load_reference_model()


def run(model_args, tasks, limit, **kwargs):
    kwargs.setdefault("bootstrap_iters", 0)
    return harness.simple_evaluate(model_args=model_args, tasks=tasks, limit=limit, **kwargs)


# --- our tasks as lm-eval tasks ------------------------------------------------------------

def test_shipped_task_files_are_generated_from_the_tasks():
    shipped = {p.name: p.read_text() for p in TASKS_DIR.iterdir() if p.suffix in (".yaml", ".jsonl")}
    assert shipped == expected_files(), "run `python -m dllm_decoding.evaluation.lm_eval.taskfiles`"


@pytest.mark.parametrize("strategy, extra", [("credit_decoding", ""), ("fast_dllm_threshold", ",kv_cache=dual"),
                                             ("llada_low_confidence", ",block_length=4")])
def test_lm_eval_gives_the_accuracy_and_nfe_of_our_evaluate(reference, strategy, extra):
    """The same examples through lm-eval and through `evaluate`: the same accuracy and NFE."""
    n = 12
    tasks = GENERATION_TASKS if strategy == "credit_decoding" else ["copy", "latin_square"]
    results = run(f"pretrained=reference,strategy={strategy},batch_size=5{extra}", [f"dllm_{t}" for t in tasks], n)
    stats = results["config"]["dllm"]["tasks"]
    model, tokenizer = reference
    if "kv_cache" in extra:
        from dllm_decoding.evaluation.loading import load_model
        model, tokenizer = load_model("reference", kv_cache="dual")
    for task in tasks:
        blocks = {"copy": 3, "latin_square": 4}[task] if "block_length" in extra else 1
        ours = evaluate(model, tokenizer, strategy, task, n, batch_size=7, blocks=blocks)
        assert results["results"][f"dllm_{task}"]["acc,none"] == pytest.approx(ours["accuracy"]), task
        assert stats[f"dllm_{task}"]["nfe_mean"] == pytest.approx(ours["nfe_mean"]), task
        assert stats[f"dllm_{task}"]["tokens_per_forward"] == pytest.approx(ours["tpf"]), task
        assert stats[f"dllm_{task}"]["requests"] == n
        assert stats[f"dllm_{task}"]["resolved_strategy"]["gen_length"] == ours["gen_length"]


def test_the_cli_runs_offline_and_writes_speed_statistics(tmp_path, reference, capsys):
    from dllm_decoding import cli

    code = cli.main(["lm-eval", "--model_args", "pretrained=reference,strategy=credit_decoding", "--tasks",
                     "dllm_copy,dllm_addition", "--limit", "6", "--batch_size", "4", "--output_path", str(tmp_path)])
    assert code == 0
    (run_file,) = read_results([tmp_path])
    dllm = run_file["config"]["dllm"]
    assert dllm["strategy"] == "credit_decoding" and dllm["batch_size"] == 4 and dllm["device"] == "cpu"
    model, tokenizer = reference
    for task in ("copy", "addition"):
        ours = evaluate(model, tokenizer, "credit_decoding", task, 6)
        assert run_file["results"][f"dllm_{task}"]["acc,none"] == pytest.approx(ours["accuracy"])
        entry = dllm["tasks"][f"dllm_{task}"]
        assert entry["nfe_mean"] == pytest.approx(ours["nfe_mean"])
        assert entry["tokens_per_second"] > 0
        assert entry["resolved_strategy"]["select"]["use"] == "threshold"
    assert "dllm_copy" in capsys.readouterr().out  # lm-eval's own table


def test_multiple_choice_runs_through_the_monte_carlo_loglikelihood():
    results = run("pretrained=reference,mc_num=8,batch_size=8", ["dllm_copy_choice"], 8, log_samples=True)
    # the reference model copies digits exactly: the right copy is far likelier than a corrupted one
    assert results["results"]["dllm_copy_choice"]["acc,none"] >= 0.75
    stats = results["config"]["dllm"]["tasks"]["dllm_copy_choice"]
    assert stats["request_type"] == "loglikelihood" and stats["requests"] == 8 * 4 and stats["nfe_mean"] == 1
    again = run("pretrained=reference,mc_num=8,batch_size=8", ["dllm_copy_choice"], 8, log_samples=True)
    resps = [s["resps"] for s in results["samples"]["dllm_copy_choice"]]
    assert resps == [s["resps"] for s in again["samples"]["dllm_copy_choice"]]  # seeded per request


# --- generate_until details -----------------------------------------------------------------

def requests(kind, args_list, task="t"):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=args, idx=0, metadata=(task, doc_id, 1))
            for doc_id, args in enumerate(args_list)]


def test_generate_until_honours_stop_sequences_and_max_gen_toks():
    lm = dllm_model.DllmLM(pretrained="reference", strategy="llada_low_confidence", gen_length=12)
    out = lm.generate_until(requests("generate_until", [
        ("C12345678=", {"until": ["5"]}),
        ("C12345678=", {"until": [], "max_gen_toks": 3}),
        ("C12345678=", {}),
    ]))
    assert out == ["1234", "123", "12345678"]
    assert lm.get_model_info()["dllm"]["tasks"]["t"]["requests"] == 3


def test_loglikelihood_rolling_is_refused_clearly():
    lm = dllm_model.DllmLM()
    with pytest.raises(NotImplementedError, match="loglikelihood_rolling.*not supported"):
        lm.loglikelihood_rolling(requests("loglikelihood_rolling", [("some text",)], task="wikitext"))


# --- bad input: one ConfigError each, before any model loads ---------------------------------

@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(dllm_model, "load_model", refuse)


@pytest.mark.parametrize("model_args, message", [
    ("pretrained=reference,strategi=credit_decoding", "unknown key 'strategi'; did you mean 'strategy'"),
    ("pretrained=reference,set.select.threshhold=0.8", "threshhold.*did you mean 'threshold'"),
    ("pretrained=reference,strategy=llada_low_confidence,set.select.threshold=0.8", "select"),
    ("pretrained=reference,set.select.threshold=1.5", "threshold"),
    ("pretrained=reference,gen_length=8,block_length=3", "block_length"),
    ("pretrained=reference,kv_cache=full", "kv_cache='full'"),
    ("pretrained=reference,batch_size=auto", "no automatic batch size"),
    ("pretrained=./no-such-dir", "neither 'reference' nor a local checkpoint directory"),
    ("pretrained=reference,chat_template=true", "no chat template"),
    ("pretrained=reference,mask_id=5", "for checkpoints other than the reference model"),
])
def test_bad_model_args_fail_before_any_model_loads(no_model_loads, model_args, message):
    with pytest.raises(ConfigError, match=message):
        run(model_args, ["dllm_copy"], 2)


def test_max_gen_toks_beyond_gen_length_fails_before_any_model_loads(no_model_loads):
    with pytest.raises(ConfigError, match=r"max_gen_toks=36 tokens, but gen_length=16.*--gen_kwargs max_gen_toks=16"):
        run("pretrained=reference,gen_length=16", ["dllm_copy", "dllm_insert"], 2)
    with pytest.raises(ConfigError, match="max_gen_toks=40"):
        run("pretrained=reference,gen_length=16", ["dllm_copy"], 2, gen_kwargs="max_gen_toks=40")


def test_an_unsupported_output_type_fails_before_any_model_loads(no_model_loads, tmp_path):
    (tmp_path / "ppl.yaml").write_text((TASKS_DIR / "dllm_copy.yaml").read_text()
                                       .replace("task: dllm_copy", "task: my_perplexity")
                                       .replace("output_type: generate_until", "output_type: loglikelihood_rolling")
                                       .replace("!function loader.", f"!function {TASKS_DIR}/loader.")
                                       .replace("tag: dllm_reference\n", ""))
    with pytest.raises(ConfigError, match="'my_perplexity' has output_type 'loglikelihood_rolling'"):
        run("pretrained=reference", ["dllm_copy", "my_perplexity"], 2, include_path=str(tmp_path))
    with pytest.raises(ConfigError, match="unknown task 'dllm_cpy'; did you mean 'dllm_copy'"):
        run("pretrained=reference", ["dllm_cpy"], 2)


def test_the_cli_reports_bad_input_in_one_line(no_model_loads, capsys):
    from dllm_decoding import cli

    assert cli.main(["lm-eval", "--model_args", "pretrained=reference,gen_lenght=8", "--tasks", "dllm_copy"]) == 2
    err = capsys.readouterr().err
    assert "dllm-decode lm-eval: error: model_args: unknown key 'gen_lenght'; did you mean 'gen_length'" in err


def test_a_missing_lm_eval_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(MissingDependency, match=r'pip install -e "\.\[eval\]"'):
        require_lm_eval()


def test_options_without_model_checks_accept_a_path_of_another_machine():
    options = LmEvalOptions.from_model_args(
        {"pretrained": "./LLaDA-8B-Instruct", "mask_id": 126336, "trust_remote_code": True, "gen_length": 256,
         "block_length": 32, "strategy": "credit_decoding", "set.select.threshold": "0.8"}, check_model=False)
    assert options.overrides == {"select.threshold": 0.8} and options.gen_length_for(None, "gsm8k") == 256
    with pytest.raises(ConfigError, match="neither 'reference'"):
        LmEvalOptions.from_model_args({"pretrained": "./LLaDA-8B-Instruct"})


# --- the Monte-Carlo estimator ---------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(length=st.integers(1, 40), samples=st.integers(1, 200), seed=st.integers(0, 2**31))
def test_masked_counts_are_stratified_over_one_to_length(length, samples, seed):
    counts = masked_counts(length, samples, torch.Generator().manual_seed(seed))
    assert counts.min() >= 1 and counts.max() <= length
    per_value = torch.bincount(counts - 1, minlength=length)
    assert per_value.max() - per_value.min() <= 1  # every count about equally often


def test_the_estimate_is_unbiased_for_a_model_that_ignores_its_input():
    """Each position is masked with probability l / L and weighted by L / l: the expectation is
    the exact sum of -log p, whatever the masking counts."""
    vocab, mask_id = 6, 5
    log_probs = torch.log_softmax(torch.randn(9, vocab, generator=torch.Generator().manual_seed(1)), dim=-1)
    log_probs[:, mask_id] = float("-inf")
    log_probs = torch.log_softmax(log_probs, dim=-1)

    def logits_fn(ids):
        return log_probs[: ids.shape[1]].expand(ids.shape[0], -1, -1)

    context, continuation = torch.tensor([1, 2, 3]), torch.tensor([0, 4, 2, 1, 3, 0])
    exact = float(log_probs[torch.arange(3, 9), continuation].sum())
    estimate, forwards = mc_loglikelihood(logits_fn, context, continuation, mask_id=mask_id, mc_num=3000,
                                          rows_per_forward=512, generator=torch.Generator().manual_seed(0))
    assert forwards == 6
    assert estimate == pytest.approx(exact, rel=0.03)


# --- data parallel ---------------------------------------------------------------------------

DP_SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
from dllm_decoding.evaluation.lm_eval.harness import simple_evaluate
r = simple_evaluate(model_args="pretrained=reference,strategy=credit_decoding,batch_size=3,mc_num=4",
                    tasks=["dllm_copy", "dllm_latin_square", "dllm_copy_choice"], limit=5, bootstrap_iters=0,
                    log_samples=True)
if r is not None:
    out = {"results": r["results"], "stats": r["config"]["dllm"]["tasks"], "world": r["config"]["dllm"]["world_size"],
           "samples": {t: sorted([s["doc_id"], s["filtered_resps"]] for s in v) for t, v in r["samples"].items()}}
    open(sys.argv[1], "w").write(json.dumps(out))
"""


def _comparable(result):
    stats = {t: {k: v for k, v in s.items() if k not in ("decode_seconds", "tokens_per_second")}
             for t, s in result["stats"].items()}
    return result["results"], stats, result["samples"]


@pytest.mark.slow
def test_two_processes_give_exactly_the_results_of_one(tmp_path):
    script = tmp_path / "dp.py"
    script.write_text(DP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, double = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, str(script), str(single)], check=True, env=env, cwd=tmp_path, timeout=600)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    str(script), str(double)], check=True, env=env, cwd=tmp_path, timeout=600)
    one, two = json.loads(single.read_text()), json.loads(double.read_text())
    assert one["world"] == 1 and two["world"] == 2
    assert _comparable(one) == _comparable(two)
    assert two["stats"]["dllm_copy"]["requests"] == 5  # rank 1's padding copy is not counted


# --- the report ------------------------------------------------------------------------------

def test_the_report_compares_settings_against_the_baseline(tmp_path):
    from dllm_decoding import cli

    for name, args in (("llada", "strategy=llada_low_confidence"), ("credit", "strategy=credit_decoding"),
                       ("credit_dual", "strategy=credit_decoding,kv_cache=dual")):
        result = run(f"pretrained=reference,{args},batch_size=8", ["dllm_copy", "dllm_sort"], 8)
        (tmp_path / name).mkdir()
        (tmp_path / name / "results_x.json").write_text(json.dumps(result, default=str))
    rows = comparison_rows(read_results([tmp_path]))
    by = {(r["task"], r["setting"]): r for r in rows}
    base = by[("dllm_copy", "llada_low_confidence")]
    assert base["nfe"] == 12 and base["speedup_nfe"] == 1
    credit = by[("dllm_copy", "credit_decoding +dual cache")]
    assert credit["speedup_nfe"] == pytest.approx(12 / credit["nfe"])
    assert "| dllm_sort | 12 | `credit_decoding` |" in markdown_table(rows)
    out, png = tmp_path / "table.md", tmp_path / "pareto.png"
    assert cli.main(["lm-eval-report", str(tmp_path), "--out", str(out), "--plot", str(png),
                     "--baseline", "credit_decoding"]) == 0
    assert "Speed-ups against `credit_decoding`" in out.read_text()
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="--baseline 'nope' is none of the settings"):
        comparison_rows(read_results([tmp_path]), baseline="nope")
