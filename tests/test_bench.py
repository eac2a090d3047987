"""Benchmark machinery: AUP, Pareto front, validation before work, interrupts, reports, plots,
evaluation on a toy model (never timing asserts)."""

import json
import math

import pytest
import torch

import dllm_decoding as dd
from dllm_decoding import cli
from dllm_decoding.evaluation import bench, metrics, overhead, plots, report
from dllm_decoding.evaluation.evaluate import evaluate
from dllm_decoding.reference.tokenizer import build_tokenizer
from dllm_decoding.testing import ContextModel


def test_aup_hand_computed():
    # the 70% point is more than 5 points below the least parallel one: dropped
    assert metrics.aup([(1, 80), (2, 80), (4, 70)], y_max=80) == pytest.approx(80 + 80)
    w = math.exp(-3 * (1 - 78 / 80))
    assert metrics.aup([(2, 78), (1, 80)], y_max=80) == pytest.approx(80 + (80 + 78 * w) / 2)
    assert metrics.aup_weight(90, 80) == 1.0 and metrics.aup([], 80) == 0.0


def test_pareto_front():
    pts = [(1, 90), (2, 85), (2, 80), (3, 70), (1.5, 60), (4, 70)]
    assert metrics.pareto_front(pts) == [(1, 90), (2, 85), (4, 70)]


def test_settings_parse_and_validate_before_work(monkeypatch):
    settings = bench.parse_settings(["credit_decoding:select.threshold=0.8,fuse.credit.alpha=0.5", "llada_low_confidence"])
    assert settings[0].overrides == {"select.threshold": 0.8, "fuse.credit.alpha": 0.5}
    assert settings[0].label == "credit_decoding(threshold=0.8, alpha=0.5)"
    monkeypatch.setattr(bench, "evaluate", lambda *a, **k: pytest.fail("decoded before validating"))
    with pytest.raises(dd.ConfigError, match="unknown option 'threshhold'"):
        bench.run(None, None, bench.parse_settings(["credit_decoding:select.threshhold=0.8"]), ["sort"], 4, None)
    with pytest.raises(dd.ConfigError, match="unknown task 'sorting'"):
        bench.run(None, None, settings, ["sorting"], 4, None)
    with pytest.raises(dd.ConfigError, match="unknown strategy 'credit'"):
        bench.validate(bench.parse_settings(["credit"]), ["sort"])


def test_cli_rejects_bad_names_before_loading_a_model(capsys, monkeypatch):
    from dllm_decoding.cli import common

    monkeypatch.setattr(common, "load_model", lambda *a, **k: pytest.fail("model loaded before validation"))
    assert cli.main(["bench", "--setting", "fast_dllm_threshold:select.treshold=0.5", "--out", "/tmp/x"]) == 2
    assert "unknown option 'treshold'" in capsys.readouterr().err
    assert cli.main(["bench", "--tasks", "sorting", "--out", "/tmp/x"]) == 2
    assert cli.main(["eval", "--task", "sorting"]) == 2
    for tau in ("0", "-1", "nan"):
        assert cli.main(["bench", "--quick", "--logit-temperature", tau, "--out", "/tmp/x"]) == 2
        assert "--logit-temperature must be a positive number" in capsys.readouterr().err
    assert cli.main(["bench", "--quick", "--logit-noise", "-0.1", "--out", "/tmp/x"]) == 2
    assert "--logit-noise must be a number >= 0" in capsys.readouterr().err


def test_perturbed_logits_temper_keeping_the_argmax_and_add_seeded_noise():
    from dllm_decoding.evaluation.loading import load_model
    from dllm_decoding.models import PerturbedLogits
    from dllm_decoding.tasks import encode_batch, get_task

    model, tokenizer = load_model("reference")
    prompt, mask = encode_batch(tokenizer, get_task("sort").examples("test", 4), get_task("sort"))
    ids = torch.cat([prompt, torch.full((4, 12), model.config.mask_token_id)], dim=1)
    am = torch.cat([mask, torch.ones(4, 12, dtype=torch.long)], dim=1)
    with torch.no_grad():
        sharp = model(input_ids=ids, attention_mask=am).logits
        soft = PerturbedLogits(model, 3.0)(input_ids=ids, attention_mask=am).logits
        noisy = [PerturbedLogits(model, 1.0, noise=0.5, seed=3)(input_ids=ids, attention_mask=am).logits
                 for _ in range(2)]
    assert torch.equal(soft, sharp / 3.0) and torch.equal(soft.argmax(-1), sharp.argmax(-1))
    assert bool((soft.softmax(-1).amax(-1) <= sharp.softmax(-1).amax(-1) + 1e-6).all())
    assert torch.equal(noisy[0], noisy[1])  # seeded: a run repeats exactly
    jitter = noisy[0] - sharp
    assert 0.4 < float(jitter[torch.isfinite(jitter)].std()) < 0.6
    assert torch.equal(torch.isinf(noisy[0]), torch.isinf(sharp))  # ruled-out tokens stay ruled out


def _fake_result(task, label, strategy, acc, nfe, gen=10):
    threshold = float(label.split("threshold=")[1].rstrip(")")) if "threshold=" in label else 0.9
    return {"task": task, "label": label, "strategy": strategy, "overrides": {"select.threshold": threshold},
            "accuracy": acc, "nfe_mean": nfe, "nfe": [nfe], "tpf": gen / nfe, "tokens_per_second": 1.0,
            "latency_per_sample_s": 0.001}


def test_interrupt_keeps_finished_results(tmp_path, monkeypatch):
    calls = []

    def fake_evaluate(model, tokenizer, strategy, task, n, **kw):
        calls.append(strategy)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return _fake_result(task, "x", strategy, 0.5, 4)

    monkeypatch.setattr(bench, "evaluate", fake_evaluate)
    settings = bench.parse_settings(["fast_dllm_threshold", "credit_decoding"])
    with pytest.raises(KeyboardInterrupt):
        bench.run(None, None, settings, ["sort"], 4, tmp_path, progress=False)
    assert not (tmp_path / "bench.json").exists()  # a committed bench.json is never clobbered
    saved = json.loads((tmp_path / "bench.partial.json").read_text())
    assert saved["interrupted"] is True and saved["partial"] is True and len(saved["results"]) == 1
    assert "INTERRUPTED" in report.markdown(saved)


def test_summary_claims_and_markdown():
    results = []
    for task in ("a", "b"):
        results += [_fake_result(task, "llada_low_confidence(k=1)", "llada_low_confidence", 0.9, 10),
                    _fake_result(task, "credit_decoding(threshold=0.9)", "credit_decoding", 0.9, 2),
                    _fake_result(task, "credit_decoding(threshold=0.5)", "credit_decoding", 0.6, 1),
                    _fake_result(task, "fast_dllm_threshold(threshold=0.9)", "fast_dllm_threshold", 0.9, 3),
                    _fake_result(task, "fast_dllm_threshold(threshold=0.5)", "fast_dllm_threshold", 0.6, 1.5)]
    claims = metrics.claims(results)
    speed = claims["speedup_vs_one_token_per_step"]
    assert speed["credit"] == "credit_decoding(threshold=0.9)" and speed["forward_reduction"] == 5.0
    match = {m["credit"]: m for m in claims["credit_vs_fast_dllm"]}["credit_decoding(threshold=0.9)"]
    assert match["fast_dllm_at_same_accuracy_within_0.5"] == [("fast_dllm_threshold(threshold=0.9)", 3)]
    assert match["fast_dllm_nfe_interpolated"] == 3
    same = claims["credit_vs_fast_dllm_same_threshold"]
    assert [(m["threshold"], m["credit_nfe"], m["fast_dllm_nfe"]) for m in same] == [(0.5, 1, 1.5), (0.9, 2, 3)]
    page = report.report({"meta": {"n": 1}, "results": results}, "dllm-decode bench", "img")
    assert "| 0.9 | 90.0 (3.00) | 90.0 (2.00) | +33.3% |" in page
    text = report.markdown({"meta": {"n": 1}, "results": results})
    assert "| `credit_decoding(threshold=0.9)` | 90.0 | 2.00 | 5.00 |" in text
    assert "AUP" in text
    cached = report.markdown({"meta": {"n": 1, "blocks": 2, "kv_cache": "dual", "kv_refresh": 2}, "results": results})
    assert "answers decoded in 2 blocks and key-value cache 'dual', refreshed after every 2 cached forwards" in cached
    blocks_page = report.report({"meta": {"n": 1, "blocks": 2}, "results": results}, "dllm-decode bench", "img")
    assert "one block of the task's answer length" not in blocks_page and "answers decoded in 2 blocks" in blocks_page
    assert "one block of the task's answer length" in page


@pytest.fixture(scope="module")
def toy():
    tokenizer = build_tokenizer()
    return ContextModel(vocab_size=len(tokenizer), mask_id=tokenizer.mask_token_id, scale=8.0), tokenizer


def test_evaluate_on_a_toy_model(toy):
    model, tokenizer = toy
    r = evaluate(model, tokenizer, "fast_dllm_threshold", "copy", 10, batch_size=4,
                 overrides={"select.threshold": 0.5}, keep_predictions=True, trace=True)
    assert r["n"] == 10 and len(r["nfe"]) == 10 and len(r["predictions"]) == 10
    assert all(1 <= x <= 12 for x in r["nfe"]) and r["tpf"] >= 1.0
    assert 0.0 <= r["accuracy"] <= 1.0 and r["peak_rss_mb"] > 0
    assert len(r["traces"]) == 3


def test_plots_write_pngs(tmp_path, toy):
    model, tokenizer = toy
    rows = [{"strategy": "a", "tpf": 1.0, "accuracy": 0.9}, {"strategy": "a", "tpf": 2.0, "accuracy": 0.8},
            {"strategy": "b", "tpf": 3.0, "accuracy": 0.7}]
    out = dd.generate(model, torch.tensor([[5, 6, 7]]), "credit_decoding", gen_length=8, trace=True)
    paths = [plots.plot_accuracy_vs_tpf(rows, tmp_path / "p.png", "t"),
             plots.plot_nfe_histogram({"x": [1, 2, 2, 3]}, tmp_path / "h.png", "t"),
             plots.plot_commit_gap({"x": out.trace.commit_gap()}, tmp_path / "g.png", "t"),
             plots.plot_decode(out.trace, 0, tmp_path / "d.png", "t")]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_page_has_verdicts_tables_and_keeps_hand_written_notes(tmp_path):
    results = []
    for task in ("a", "b"):
        results += [_fake_result(task, "llada_low_confidence(k=1)", "llada_low_confidence", 0.9, 10),
                    _fake_result(task, "credit_decoding(threshold=0.9)", "credit_decoding", 0.9, 2),
                    _fake_result(task, "fast_dllm_threshold(threshold=0.95)", "fast_dllm_threshold", 0.95, 4),
                    _fake_result(task, "fast_dllm_threshold(threshold=0.5)", "fast_dllm_threshold", 0.6, 1.5)]
    payload = {"meta": {"n": 1, "seconds": 60, "threads": 2}, "results": results,
               "overhead": {"batch 1": {"batch": 1, "forwards": 5, "framework_ms": 10.5, "bare_ms": 10.0,
                                        "overhead_percent": 5.0, "overhead_percent_iqr": [3.0, 7.5],
                                        "repeats": 31, "forward_ms": {"framework": 1.9, "bare": 1.9},
                                        "outside_forward_us_per_step": {"framework": 200.0, "bare": 100.0},
                                        "outside_forward_overhead_percent": 4.0}}}
    page = tmp_path / "docs" / "benchmarks.md"
    report.write_report(payload, page, tmp_path / "docs" / "benchmarks")
    text = page.read_text()
    assert "5.00x fewer forwards" in text and "holds" in text
    # Fast-dLLM interpolated at 90%: 1.5 + (4 - 1.5) * (0.9 - 0.6) / (0.95 - 0.6) = 3.643
    assert "| `credit_decoding(threshold=0.9)` | 90.0 | 2.00 | 3.64 | +45.1% |" in text
    assert "| `credit_decoding(threshold=0.9)` | 90.0 (2.0) | 90.0 (2.0) |" in text
    assert "| 1 | 31 | 1.90 / 1.90 | 10.5 | 10.0 | +5.0% [+3.0, +7.5] | 200 / 100 | +4.0% |" in text and "](benchmarks/pareto.png)" in text
    # hand-written analysis between the markers survives regeneration
    page.write_text(text.replace(report.NOTES_START, report.NOTES_START + "\nOur analysis.\n"))
    report.write_report(payload, page, tmp_path / "docs" / "benchmarks")
    assert "Our analysis." in page.read_text()


def test_memory_watch_sees_a_decode_sized_allocation():
    from dllm_decoding.evaluation.memory import MemoryWatch

    watch = MemoryWatch()
    block = torch.ones(25_000_000)  # 95.4 MiB, touched
    del block
    got = watch.finish()
    if got["memory_method"].startswith("VmHWM"):
        assert 90 <= got["decode_peak_mb"] <= 200, got
    else:  # the kernel refused the reset: said so, not faked
        assert got["decode_peak_mb"] is None and got["peak_rss_mb"] > 0


def test_overhead_bench_pairs_identical_decodes_and_splits_out_the_forwards():
    from dllm_decoding.evaluation.loading import load_model

    model, tokenizer = load_model("reference")
    result = overhead.overhead(model, tokenizer, n=4, repeats=3, batch_size=2)
    assert result["batch"] == 2 and result["repeats"] == 3 and result["forwards"] == 16
    assert result["framework_forward_calls"] == 16  # one token per step: the same forwards as the bare loop
    low, high = result["overhead_percent_iqr"]
    assert low <= result["overhead_percent"] <= high
    outside = result["outside_forward_us_per_step"]
    assert outside["framework"] > 0 and outside["bare"] > 0
    # the forwards' own time is most of a decode, on both sides
    assert 0 < result["forward_ms"]["bare"] * result["forwards"] < result["bare_ms"]
    assert 0 < result["forward_ms"]["framework"] * result["forwards"] < result["framework_ms"]


def test_fast_dllm_price_of_an_accuracy_comes_from_its_pareto_front():
    sweep = [{"accuracy": a, "nfe_mean": n} for a, n in
             [(0.957, 1.68), (0.979, 1.73), (0.989, 1.80), (0.991, 1.93), (0.989, 2.39), (0.987, 10.38)]]
    # 98.7% costs at most 1.80 forwards (98.9% at 1.80), never the 10.38 of a dominated setting:
    # on the front, between 97.9% at 1.73 and 98.9% at 1.80
    assert math.isclose(metrics._nfe_at_accuracy(sweep, 0.987), 1.73 + 0.07 * 0.8)
    assert metrics._nfe_at_accuracy(sweep, 0.989) == 1.80
    assert metrics._nfe_at_accuracy(sweep, 0.995) is None and metrics._nfe_at_accuracy(sweep, 0.9) is None
