"""bench --scaling: the synthetic block-logits model, the measurements, the report files."""

import json

import torch

import dllm_decoding as dd
from dllm_decoding import cli
from dllm_decoding.evaluation import scaling


def test_scaling_bench_writes_json_markdown_and_png(tmp_path, capsys):
    assert cli.main(["bench", "--scaling", "--lengths", "32", "64", "--vocab", "64", "--strategies",
                     "credit_decoding", "credit_decoding_sparse", "--dtypes", "float32", "--dinfer-lengths",
                     "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "scaling.json").read_text())
    rows = payload["results"]
    assert {(r["strategy"], r["gen_length"]) for r in rows} == {
        (s, g) for s in ("credit_decoding", "credit_decoding_sparse") for g in (32, 64)}
    assert all(r["steps"] >= r["gen_length"] // 32 and r["loop_ms_per_step_median"] > 0 for r in rows)
    page = (tmp_path / "scaling.md").read_text()
    assert "| `credit_decoding_sparse` | 1 | float32 |" in page and "64 / 32" in page
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out


def test_scaling_bench_checks_its_arguments_first(tmp_path, capsys):
    assert cli.main(["bench", "--scaling", "--lengths", "33", "--out", str(tmp_path)]) == 2
    assert "multiples of the block length 32" in capsys.readouterr().err
    assert cli.main(["bench", "--scaling", "--strategies", "credit", "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "scaling.json").exists()


def test_the_synthetic_model_returns_block_logits_that_sharpen():
    model = scaling.SyntheticModel(50, block_length=8, growth=2.0)
    session = model.start_session(torch.ones(2, 12, dtype=torch.long))
    session.start_block(4, 12)
    first = session.forward(torch.zeros(2, 12, dtype=torch.long), None)
    second = session.forward(torch.zeros(2, 12, dtype=torch.long), None)
    assert first.shape == (2, 8, 50) and bool((first[..., 0] == float("-inf")).all())
    target = model.target[:8][None, :, None].expand(2, 8, 1)
    p1, p2 = first.softmax(-1).gather(-1, target), second.softmax(-1).gather(-1, target)
    assert bool((p2 > p1).all())  # each position's target token gains every forward


def test_credit_vs_dinfer_checks_the_outputs_agree():
    result = scaling.credit_vs_dinfer(vocab=300, gen_length=64, repeats=1)
    assert result["forwards"] == result["nfe"] and result["ratio"] > 0
    out = dd.generate(scaling.SyntheticModel(300), torch.randint(1, 300, (1, 32), generator=torch.Generator().manual_seed(1)),
                      "credit_decoding", gen_length=64, block_length=32)
    assert int(out.nfe[0]) == result["nfe"]
