"""dllm-decode tune: the search space, feasibility, determinism, the test split used only for the
final report, and bad input refused before any model loads."""

import json

import pytest

from dllm_decoding import cli
from dllm_decoding.core.errors import ConfigError
from dllm_decoding.evaluation import tune as tuning
from dllm_decoding.evaluation.evaluate import evaluate
from dllm_decoding.evaluation.loading import load_model


@pytest.fixture(scope="module")
def reference():
    return load_model("reference")


def fake_evaluate(calls):
    """An evaluator whose accuracy rises and NFE rises with the threshold (no model)."""
    def run(model, tokenizer, strategy, task, n, *, split, overrides, **_):
        calls.append((split, dict(overrides)))
        t = overrides["select.threshold"]
        return {"accuracy": min(1.0, 0.5 + t / 2), "nfe_mean": 1 + 10 * t, "tpf": 1.0}
    return run


def test_default_space_from_field_bounds():
    dims, skipped = tuning.default_space("credit_decoding")
    by_key = {d.key: d for d in dims}
    assert by_key["fuse.credit.beta"].low == 0 and by_key["fuse.credit.beta"].high == 1
    assert 0 < by_key["select.threshold"].low < 0.05 and by_key["select.threshold"].high == 1  # gt=0: inside
    assert by_key["fuse.credit.gamma"].log  # no upper bound: a decade either side of 0.2
    assert any(s.startswith("fuse.credit.slots") for s in skipped)


def test_parse_space_and_its_errors():
    dims = tuning.parse_space(["select.threshold=0.5:0.99", "fuse.credit.alpha=0.1:10:log", "select.k=1,2,4"])
    assert dims[0].value(0) == 0.5 and dims[0].value(1) == 0.99
    assert dims[1].log and abs(dims[1].value(0.5) - 1.0) < 1e-9
    assert dims[2].value(0.5) == 2
    for bad in ["select.threshold", "select.threshold=0.9:0.5", "x=0:1:log", "a=1:2:3", "k=1", "a=1:2",
                "a=b:c"]:
        with pytest.raises(ConfigError):
            tuning.parse_space([bad, "a=0:1"] if bad == "a=1:2" else [bad])


@pytest.mark.parametrize("space", [["select.treshold=0.5:0.9"], ["select.threshold=0.5:1.5"]])
def test_validate_space_names_the_option(space):
    with pytest.raises(ConfigError, match=r"select\.th?reshold"):
        tuning.validate_space("fast_dllm_threshold", tuning.parse_space(space), "sort")


def test_feasibility_fastest_feasible_and_split_use():
    calls = []
    dims = tuning.parse_space(["select.threshold=0.1:1.0"])
    result = tuning.tune(None, None, "fast_dllm_threshold", "sort", dims=dims, target=0.9, budget=12, n=5,
                         test_n=7, evaluate_fn=fake_evaluate(calls))
    trace = result["trace"]
    assert len(trace) == result["evaluations"] <= 12
    for t in trace:
        assert t["feasible"] == (t["accuracy"] >= 0.9)
    chosen = result["chosen"]
    feasible = [t for t in trace if t["feasible"]]
    assert chosen["validation"]["nfe_mean"] == min(t["nfe_mean"] for t in feasible)
    assert abs(chosen["overrides"]["select.threshold"] - 0.8) < 0.05  # refinement homes in on the boundary
    splits = [s for s, _ in calls]
    assert splits[:-1] == ["validation"] * len(trace) and splits[-1] == "test"  # test only at the end, once
    assert calls[-1][1]["select.threshold"] == chosen["overrides"]["select.threshold"]


def test_no_feasible_setting_reports_the_most_accurate():
    calls = []
    result = tuning.tune(None, None, "fast_dllm_threshold", "sort", dims=tuning.parse_space(["select.threshold=0.1:0.5"]),
                         target=0.99, budget=6, n=5, evaluate_fn=fake_evaluate(calls))
    assert result["chosen"] is None and result["most_accurate"]["overrides"]["select.threshold"] == 0.5
    assert all(s == "validation" for s, _ in calls)
    assert "No setting met the target" in tuning.markdown(result)


def test_pareto_mode_measures_the_front_on_test():
    calls = []
    result = tuning.tune(None, None, "fast_dllm_threshold", "sort", dims=tuning.parse_space(["select.threshold=0.1:1.0"]),
                         target=None, budget=8, n=5, evaluate_fn=fake_evaluate(calls))
    assert len(result["front_test"]) == len(result["front"]) == len(result["trace"])  # every point is on this front
    assert [s for s, _ in calls].count("test") == len(result["front"])


def test_bad_budget_and_target():
    dims = tuning.parse_space(["select.threshold=0.1:1.0"])
    with pytest.raises(ConfigError, match="--budget"):
        tuning.tune(None, None, "fast_dllm_threshold", "sort", dims=dims, target=0.9, budget=1)
    with pytest.raises(ConfigError, match="--target-accuracy"):
        tuning.tune(None, None, "fast_dllm_threshold", "sort", dims=dims, target=1.5)


def test_latin_hypercube_is_seeded():
    dims = tuning.default_space("credit_decoding")[0]
    assert tuning._coarse_points(dims, 6, 0) == tuning._coarse_points(dims, 6, 0) != tuning._coarse_points(dims, 6, 1)


def test_real_search_is_deterministic(reference):
    model, tokenizer = reference
    dims = tuning.parse_space(["select.threshold=0.3:0.99"])
    runs = [tuning.tune(model, tokenizer, "fast_dllm_threshold", "addition", dims=dims, target=0.9, budget=5, n=8,
                        test_n=8, seed=1) for _ in range(2)]
    strip = lambda r: [{k: v for k, v in t.items() if k != "seconds"} for t in r["trace"]]  # noqa: E731
    assert strip(runs[0]) == strip(runs[1]) and runs[0]["chosen"] == runs[1]["chosen"]
    chosen = runs[0]["chosen"]
    if chosen:
        direct = evaluate(model, tokenizer, "fast_dllm_threshold", "addition", 8, split="test",
                          overrides=chosen["overrides"], seed=1)
        assert direct["accuracy"] == chosen["test"]["accuracy"]


def test_cli_end_to_end(tmp_path, capsys):
    rc = cli.main(["tune", "--task", "sort", "--strategy", "fast_dllm_threshold", "--target-accuracy", "0.9",
                   "--budget", "3", "--n", "6", "--test-n", "6", "--out", str(tmp_path), "--json", "--no-progress",
                   "--threads", "1"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["evaluations"] == 3 and out["chosen"]["test"]["accuracy"] >= 0
    assert (tmp_path / "tune.png").stat().st_size > 0
    assert json.loads((tmp_path / "tune.json").read_text())["trace"] == out["trace"]


@pytest.mark.parametrize("argv, message", [
    (["--space", "select.nope=0:1"], "select.nope"),
    (["--space", "select.threshold=0.5:2"], "select.threshold"),
    (["--task", "sortt"], "sortt"),
    (["--budget", "1"], "--budget"),
    (["--target-accuracy", "0"], "--target-accuracy"),
    (["--set", "select.threshold=0.5", "--space", "select.threshold=0.5:0.9"], "either searched or fixed"),
    (["--strategy", "llada_low_confidence"], "nothing to search"),
])
def test_cli_errors_before_loading(monkeypatch, capsys, argv, message):
    from dllm_decoding.cli import tune as tune_cli

    monkeypatch.setattr(tune_cli, "model_from_args", lambda *a, **k: pytest.fail("the model loaded"))
    base = {"--task": "sort", "--strategy": "fast_dllm_threshold", "--target-accuracy": "0.9"}
    for flag, value in zip(argv[::2], argv[1::2]):
        if flag in base:
            base[flag] = value
    rest = [a for f, v in zip(argv[::2], argv[1::2]) if f not in base for a in (f, v)]
    rc = cli.main(["tune", *[a for kv in base.items() for a in kv], *rest, "--threads", "1"])
    assert rc == 2 and message in capsys.readouterr().err
