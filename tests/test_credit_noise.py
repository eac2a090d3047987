"""credit_noise (wrong tokens earning credit) and the noisy-credit failure analysis."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

import dllm_decoding as dd
from dllm_decoding import cli
from dllm_decoding.core.errors import ConfigError
from dllm_decoding.evaluation import credit_noise
from dllm_decoding.evaluation.loading import load_model
from dllm_decoding.tasks import get_task
from dllm_decoding.testing import ContextModel, StrategyConformance

NOISY = {"fuse.0.use": "credit_noise", "fuse.0.p": 0.3}


def decode(model, prompt, overrides, seed=0, mask=None):
    return dd.generate(model, prompt, "credit_decoding", attention_mask=mask, gen_length=16, block_length=8,
                       seed=seed, overrides=overrides)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), model_seed=st.integers(0, 100), target=st.sampled_from(["random", "runner_up"]),
       scale=st.sampled_from([0.5, 1.0, 4.0]))
def test_p_zero_is_plain_credit_exactly(seed, model_seed, target, scale):
    model = ContextModel(vocab_size=16, seed=model_seed)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    plain = decode(model, prompt, {}, seed)
    noisy = decode(model, prompt, {**NOISY, "fuse.0.p": 0.0, "fuse.0.target": target, "fuse.0.scale": scale}, seed)
    assert torch.equal(plain.sequences, noisy.sequences) and torch.equal(plain.nfe, noisy.nfe)


@pytest.mark.parametrize("target", ["random", "runner_up"])
def test_seeded_and_noise_changes_the_decode(target):
    model = ContextModel(vocab_size=16, seed=3, scale=2.0)
    prompt = torch.randint(0, 14, (6, 4), generator=torch.Generator().manual_seed(0))
    noisy = {**NOISY, "fuse.0.p": 1.0, "fuse.0.target": target, "fuse.0.scale": 50.0}
    first, again = decode(model, prompt, noisy, seed=5), decode(model, prompt, noisy, seed=5)
    assert torch.equal(first.sequences, again.sequences)
    assert not torch.equal(first.sequences, decode(model, prompt, {}, seed=5).sequences)


def test_noise_credits_a_wrong_token():
    """One step by hand: with p = 1 the wrong token's credit equals the argmax's (scale 1)."""
    from dllm_decoding.plugins.credit_noise import CreditNoise, CreditNoiseOptions

    class State:
        plugin_state = {}
        batch_size = 1
        selectable = torch.ones(1, 3, dtype=torch.bool)
        active_rows = torch.ones(1, dtype=torch.bool)

        def uniform(self, *shape):
            return torch.full((1, *shape), 0.25, dtype=torch.float64)

    comp = CreditNoise(CreditNoiseOptions(p=1.0, target="runner_up"))
    state = State()
    state.plugin_state = {}
    comp.on_block_start(state)
    logits = torch.tensor([[[3.0, 2.0, 0.0, -1.0]] * 3])
    fused = comp.fuse(state, logits)
    bonus = fused - logits
    assert torch.allclose(bonus[..., 0], bonus[..., 1]) and bool((bonus[..., 0] > 0).all())
    assert bool((bonus[..., 2:] == 0).all())
    comp = CreditNoise(CreditNoiseOptions(p=1.0, target="random"))
    comp.on_block_start(state)
    bonus = comp.fuse(state, logits) - logits
    assert bool((bonus[..., 0] > 0).all()) and int((bonus[..., 1:] > 0).sum()) == 3  # one wrong token per position


def test_options_refused():
    for bad in ({"fuse.0.p": 1.5}, {"fuse.0.target": "worst"}, {"fuse.0.slots": 8}, {"fuse.0.scale": -1.0}):
        with pytest.raises(ConfigError):
            dd.load_strategy("credit_decoding", {"fuse.0.use": "credit_noise", **bad})


class TestNoisyCreditConformance(StrategyConformance):
    """A row decodes the same alone as in a batch, the prompt stays, and the rest of the suite."""

    strategy = "credit_decoding"
    overrides = {"fuse.0.use": "credit_noise", "fuse.0.p": 0.4, "fuse.0.target": "random", "fuse.0.scale": 4.0}


class TestRunnerUpCreditConformance(StrategyConformance):
    strategy = "credit_decoding"
    overrides = {"fuse.0.use": "credit_noise", "fuse.0.p": 0.4, "fuse.0.target": "runner_up", "fuse.0.scale": 4.0}


def test_compare_counts():
    credit = torch.tensor([[1, 2, 3], [1, 2, 3]])
    threshold = torch.tensor([[1, 2, 4], [1, 5, 3]])
    reference = torch.tensor([[1, 2, 4], [1, 2, 3]])
    counts = credit_noise.compare(credit, threshold, reference, credit_ok=[False, True], threshold_ok=[True, False])
    assert counts == {"positions": 6, "differs_from_threshold": 2, "differs_from_reference": 1, "credit_caused": 1,
                      "credit_fixed": 1, "threshold_differs_from_reference": 1}


def test_analysis_on_a_tiny_n(tmp_path):
    model, tokenizer = load_model("reference")
    payload = credit_noise.analyse({"model": (model, tokenizer)}, ["sort"], 4, levels=[0.0, 0.4],
                                   targets=["runner_up"], scales=[4.0])
    pooled = payload["pooled"]
    assert [(r["p"], r["scale"]) for r in pooled] == [(0.0, 4.0), (0.4, 4.0)]
    from dllm_decoding.evaluation.evaluate import evaluate  # p = 0: plain credit, the preset's numbers
    direct = evaluate(model, tokenizer, "credit_decoding", "sort", 4, overrides={"select.threshold": 0.9})
    assert pooled[0]["credit_accuracy"] == direct["accuracy"] and pooled[0]["credit_nfe"] == direct["nfe_mean"]
    for r in pooled:
        assert 0 <= r["credit_caused"] <= r["differs_from_threshold"] <= r["positions"] == 4 * get_task("sort").gen_length
    paths = credit_noise.write(payload, tmp_path)
    assert all(p.stat().st_size > 0 for p in paths)
    assert "| model | runner_up | 4x | 0.4 |" in paths[1].read_text()


@pytest.mark.parametrize("argv, message", [
    (["--noise-levels", "1.5"], "--noise-levels"),
    (["--tasks", "nope"], "nope"),
    (["--noise-temperatures", "0"], "--noise-temperatures"),
    (["--logit-temperature", "3"], "--noise-temperatures"),
])
def test_cli_errors_before_loading(monkeypatch, capsys, tmp_path, argv, message):
    from dllm_decoding.cli import credit_noise as cli_noise

    monkeypatch.setattr(cli_noise, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    rc = cli.main(["bench", "--credit-noise", "--out", str(tmp_path), *argv, "--threads", "1"])
    assert rc == 2 and message in capsys.readouterr().err
