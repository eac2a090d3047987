"""DiffusionGemma: the ``diffusion_gemma`` preset on transformers' ``DiffusionGemmaForBlockDiffusion``
equals the model's own ``generate()`` token for token and in ``tokens_per_forward``; other
strategies run on it; bad inputs fail clearly.

``generate()`` draws its random numbers batch-shaped from the global generator, so a row's
output there depends on the other rows of its batch. Our rows draw from their own generators
(row ``i`` from ``seed + i``): each row of one of our batches is compared with ``generate()`` on
that row alone, seeded with ``torch.manual_seed(seed + i)``, with the same left padding.
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion
from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

import dllm_decoding as dd
from dllm_decoding.testing import registry_with

VOCAB, PAD = 48, 47


def tiny_diffusion_gemma(canvas_length: int, seed: int = 0, logit_scale: float = 1.0) -> DiffusionGemmaForBlockDiffusion:
    """A random DiffusionGemma of ~40k parameters (two layers, one sliding, two experts)."""
    torch.manual_seed(seed)
    config = DiffusionGemmaConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, global_head_dim=16,
                         sliding_window=16, layer_types=["sliding_attention", "full_attention"],
                         pad_token_id=PAD, eos_token_id=1, bos_token_id=2, num_experts=2, top_k_experts=1,
                         moe_intermediate_size=32),
        vision_config=dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=2, head_dim=8, position_embedding_size=64,
                           patch_size=4),
        canvas_length=canvas_length)
    model = DiffusionGemmaForBlockDiffusion(config).eval()
    with torch.no_grad():  # sharper distributions: adaptive stops and repeated tokens happen
        model.lm_head.weight.mul_(logit_scale)
    return model


@pytest.fixture(scope="module")
def models():
    return {4: tiny_diffusion_gemma(4, seed=1, logit_scale=16.0), 8: tiny_diffusion_gemma(8, seed=2, logit_scale=16.0)}


def reference(model, prompt, mask, seed, case):
    """``generate()`` on one row, as its docs call it, in its output format."""
    torch.manual_seed(seed)
    out = model.generate(prompt, attention_mask=mask, max_new_tokens=case["gen_length"],
                         max_denoising_steps=case["steps"],
                         sampler_config=EntropyBoundSamplerConfig(entropy_bound=case["entropy_bound"]),
                         t_min=case["t_min"], t_max=case["t_max"], stability_threshold=case["stability"],
                         confidence_threshold=case["confidence"], eos_token_id=case["eos"], pad_token_id=PAD,
                         return_dict_in_generate=True)
    return out.sequences[0], float(out.tokens_per_forward[0])


def as_generate_output(answer: torch.Tensor, eos: int | None, canvas: int) -> torch.Tensor:
    """Our answer in ``generate()``'s format: it stops after the block with the first EOS and
    pads what follows that EOS (we fill the rest of the answer with EOS and leave the block)."""
    if eos is None:
        return answer
    hits = (answer == eos).nonzero()
    if not len(hits):
        return answer
    first = int(hits[0])
    kept = answer[:(first // canvas + 1) * canvas].clone()
    kept[first + 1:] = PAD
    return kept


def cases(count: int = 32):
    rng = random.Random(2026)
    out = []
    for index in range(count):
        canvas = rng.choice([4, 8])
        out.append(dict(
            index=index, canvas=canvas, gen_length=canvas * rng.choice([1, 2, 3]), steps=rng.choice([3, 5, 9]),
            entropy_bound=rng.choice([0.05, 0.3, 1.5]), t_min=rng.choice([0.2, 0.4]), t_max=rng.choice([0.6, 1.0]),
            stability=rng.choice([0, 1, 2]), confidence=rng.choice([0.005, 3.0, 3.6]),
            eos=rng.choice([None, None, 5, 9]), rows=rng.choice([1, 2, 3]), padded=rng.random() < 0.5,
            seed=rng.randrange(1000), prompt_length=rng.choice([3, 6])))
    return out


CASES = cases()


def decode_case(models, case):
    model = models[case["canvas"]]
    gen = torch.Generator().manual_seed(case["seed"])
    lengths = [case["prompt_length"] - (r if case["padded"] else 0) for r in range(case["rows"])]
    width = max(lengths)
    prompt = torch.full((case["rows"], width), PAD, dtype=torch.long)
    mask = torch.zeros(case["rows"], width, dtype=torch.long)
    for r, n in enumerate(lengths):
        prompt[r, width - n:] = torch.randint(3, VOCAB - 1, (n,), generator=gen)
        mask[r, width - n:] = 1
    overrides = {"max_steps_per_block": case["steps"], "renoise.entropy_bound": case["entropy_bound"],
                 "fuse.linear_temperature.t_min": case["t_min"], "fuse.linear_temperature.t_max": case["t_max"],
                 "select.stability_threshold": case["stability"], "select.confidence_threshold": case["confidence"]}
    ours = dd.generate(model, prompt, "diffusion_gemma", gen_length=case["gen_length"], block_length=case["canvas"],
                       attention_mask=mask, seed=case["seed"], eos_id=case["eos"], overrides=overrides)
    return model, prompt, mask, ours


@pytest.mark.parametrize("case", CASES, ids=[f"case{c['index']}" for c in CASES])
def test_diffusion_gemma_preset_equals_generate(models, case):
    model, prompt, mask, ours = decode_case(models, case)
    width = prompt.shape[1]
    for row in range(case["rows"]):
        expected, tpf = reference(model, prompt[row:row + 1], mask[row:row + 1], case["seed"] + row, case)
        got = as_generate_output(ours.sequences[row, width:], case["eos"], case["canvas"])
        assert got.tolist() == expected[width:].tolist(), f"row {row}"
        valid = int((got != PAD).sum())
        assert valid / int(ours.nfe[row]) == pytest.approx(tpf, rel=1e-6), f"row {row}: tokens per forward"


def test_the_cases_cover_adaptive_stops_eos_padding_and_batches(models):
    """The equality above is not vacuous: some blocks stop early, some rows end at EOS."""
    stopped = eos_hits = 0
    for case in CASES:
        _, _, _, ours = decode_case(models, case)
        budget = case["steps"] * (case["gen_length"] // case["canvas"])
        ended = (ours.answers == case["eos"]).any(dim=1) if case["eos"] is not None else ours.nfe < 0
        stopped += int(((ours.nfe < budget) & ~ended).sum())  # a block stopped before its budget
        eos_hits += int(ended.sum())
    assert stopped >= 8 and eos_hits >= 5
    assert sum(c["rows"] > 1 and c["padded"] for c in CASES) >= 5


def test_a_batch_decodes_as_its_rows_alone(models):
    model = models[4]
    prompt = torch.randint(3, VOCAB - 1, (3, 5), generator=torch.Generator().manual_seed(0))
    overrides = {"max_steps_per_block": 6, "select.confidence_threshold": 2.0}
    batch = dd.generate(model, prompt, "diffusion_gemma", gen_length=8, block_length=4, seed=[4, 5, 6],
                        overrides=overrides)
    for row in range(3):
        alone = dd.generate(model, prompt[row:row + 1], "diffusion_gemma", gen_length=8, block_length=4,
                            seed=[4 + row], overrides=overrides)
        assert torch.equal(alone.sequences[0], batch.sequences[row])
        assert int(alone.nfe[0]) == int(batch.nfe[row])


@pytest.mark.parametrize("preset, overrides", [("fast_dllm_threshold", {}), ("credit_decoding", {}),
                                               ("llada_low_confidence", {}), ("entropy_bounded", {}),
                                               ("klass", {"select.scope": "block"})])
def test_masked_diffusion_strategies_run_on_diffusion_gemma(models, preset, overrides):
    """Other rules decode on the uniform-noise model: the block starts as random tokens that
    stay until committed; the decode keeps the core's invariants."""
    model = models[8]
    prompt = torch.randint(3, VOCAB - 1, (2, 4), generator=torch.Generator().manual_seed(1))
    out = dd.generate(model, prompt, preset, gen_length=16, block_length=8, steps=16, seed=0, trace=True,
                      overrides=overrides)
    assert torch.equal(out.sequences[:, :4], prompt)
    assert int(out.nfe.max()) <= 16  # the one-commit-per-step guarantee holds without renoise
    assert bool(out.trace.committed.any(dim=0).all())  # every answer position was committed


def test_uniform_noise_renoises_open_positions_each_step(models):
    model = models[8]
    prompt = torch.randint(3, VOCAB - 1, (1, 4), generator=torch.Generator().manual_seed(1))
    canvases = []

    class Canvases(dd.Component):
        name = "canvases"
        hook_point = "observer"

        @dd.hookimpl
        def on_step_end(self, state, record):
            canvases.append((record.canvas[0, 4:], state.open[0, 4:]))

    out = dd.generate(model, prompt, "fast_dllm_threshold", gen_length=8, block_length=8, seed=0,
                      overrides={"renoise.use": "uniform_noise", "max_steps_per_block": 5,
                                 "select.threshold": 0.99}, observers=[Canvases()])
    assert int(out.nfe[0]) <= 5  # the budget ends the block
    assert len(canvases) >= 2
    changed = [bool((a != b)[o].any()) for (a, _), (b, o) in zip(canvases, canvases[1:]) if o.any()]
    assert any(changed)  # open positions hold fresh noise each step


def test_rules_that_need_canvas_wide_logits_are_refused_up_front(models):
    prompt = torch.randint(3, VOCAB - 1, (1, 4))
    for preset in ("klass", "prophet_early_commit"):
        with pytest.raises(dd.InputError, match="a block decoder such as DiffusionGemma's has no others"):
            dd.generate(models[8], prompt, preset, gen_length=8)


def test_wrong_block_length_names_the_canvas(models):
    prompt = torch.randint(3, VOCAB - 1, (1, 4))
    with pytest.raises(dd.InputError, match=r"block_length=16: DiffusionGemma denoises blocks of its canvas_length \(8\)"):
        dd.generate(models[8], prompt, "diffusion_gemma", gen_length=16, block_length=16)


def test_renoise_output_is_checked(models):
    class Bad(dd.Component):
        name = "bad_renoise"
        hook_point = "renoise"

        @dd.hookimpl
        def renoise(self, state):
            return torch.full((state.batch_size, state.block_length), state.vocab_size, dtype=torch.long)

    registry = registry_with(Bad)
    prompt = torch.randint(3, VOCAB - 1, (1, 4))
    with pytest.raises(dd.PluginError, match="component 'bad_renoise': renoise returned token ids outside"):
        dd.generate(models[8], prompt, "diffusion_gemma", gen_length=8, block_length=8,
                    overrides={"renoise.use": "bad_renoise"}, registry=registry)


@pytest.fixture(scope="module")
def checkpoint(models, tmp_path_factory):
    path = tmp_path_factory.mktemp("diffusion_gemma")
    models[8].save_pretrained(path)
    return path


def test_load_model_reads_a_checkpoint_through_transformers_own_class(models, checkpoint):
    loaded = dd.load_model(checkpoint)
    assert type(loaded).__name__ == "DiffusionGemmaForBlockDiffusion" and not loaded.training
    assert loaded.eos_token_ids == (1,)
    prompt = torch.tensor([[5, 6, 7]])
    # the model's canvas is the default block length
    a = dd.generate(models[8], prompt, "diffusion_gemma", gen_length=16, seed=3)
    b = dd.generate(loaded, prompt, "diffusion_gemma", gen_length=16, seed=3)
    assert torch.equal(a.sequences, b.sequences) and a.nfe.tolist() == b.nfe.tolist()


def test_cli_generates_with_a_diffusion_gemma_checkpoint(checkpoint, capsys):
    import json

    from dllm_decoding import cli

    args = ["generate", "--model", str(checkpoint), "--strategy", "diffusion_gemma", "--prompt-ids", "5,6,7",
            "--gen-length", "16", "--seed", "3", "--json", "--threads", "1"]
    assert cli.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    model = dd.load_model(checkpoint)
    expected = dd.generate(model, torch.tensor([[5, 6, 7]]), "diffusion_gemma", gen_length=16, seed=3, eos_id=1)
    assert result["eos_id"] == [1]  # EOS early stop on, with the model's own ids
    row = result["results"][0]
    assert row["nfe"] == int(expected.nfe[0])
    assert row["answer_ids"] == expected.answers[0].tolist()


@pytest.mark.parametrize("flags, message", [
    (["--kv-cache", "dual"], "--kv-cache applies to masked-diffusion models only"),
    (["--mask-id", "3"], "--mask-id applies to masked-diffusion models only"),
    (["--logit-temperature", "2"], "--logit-temperature / --logit-noise applies to"),
])
def test_masked_model_flags_are_refused_for_diffusion_gemma(checkpoint, capsys, flags, message):
    from dllm_decoding import cli

    assert cli.main(["generate", "--model", str(checkpoint), "--prompt-ids", "5,6", *flags]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_diffusion_gemma_on_cuda_equals_generate_there():
    model = tiny_diffusion_gemma(8, seed=2, logit_scale=16.0).cuda()
    prompt = torch.tensor([[5, 6, 7, 8]], device="cuda")
    ours = dd.generate(model, prompt, "diffusion_gemma", gen_length=16, seed=3,
                       overrides={"max_steps_per_block": 6, "select.confidence_threshold": 3.0})
    assert ours.sequences.is_cuda
    torch.manual_seed(3)  # generate() draws from the CUDA default generator, seeded by manual_seed too
    theirs = model.generate(prompt, max_new_tokens=16, max_denoising_steps=6, confidence_threshold=3.0,
                            return_dict_in_generate=True)
    assert torch.equal(ours.sequences, theirs.sequences)


def test_lm_eval_generate_until_decodes_whole_canvases(checkpoint):
    """lm-eval's generate_until on DiffusionGemma: whole canvases are decoded, the answer is cut
    to max_gen_toks; loglikelihood is refused by name (no [MASK] to estimate it with)."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from dllm_decoding.evaluation.lm_eval import model as dllm_model

    lm = dllm_model.DllmLM(pretrained=str(checkpoint), strategy="diffusion_gemma", chat_template=False,
                           early_stop=False)
    request = Instance(request_type="generate_until", doc={}, arguments=("hello", {"until": [], "max_gen_toks": 5}),
                       idx=0, metadata=("t", 0, 1))
    [text] = lm.generate_until([request])
    assert isinstance(text, str)
    info = lm.get_model_info()["dllm"]["tasks"]["t"]
    assert info["requests"] == 1 and info["nfe_mean"] == 48.0  # one canvas of 8, 48 steps: never stable
    assert info["resolved_strategy"]["gen_length"] == 8 and info["resolved_strategy"]["block_length"] == 8
    with pytest.raises(dllm_model.UnsupportedRequest, match="loglikelihood needs a \\[MASK\\] token"):
        lm.loglikelihood([Instance(request_type="loglikelihood", doc={}, arguments=("a", " b"), idx=0,
                                   metadata=("t", 0, 1))])


def _pad_after_first_eos(answers: torch.Tensor, eos: int | None) -> torch.Tensor:
    out = answers.clone()
    if eos is None:
        return out
    seen = (answers == eos).long().cumsum(dim=1)
    out[(seen > 1) | ((seen == 1) & (answers != eos))] = PAD
    return out


@pytest.mark.parametrize("case", CASES[:12], ids=[f"case{c['index']}" for c in CASES[:12]])
def test_batch_draws_equal_generate_on_the_whole_batch(models, case):
    """draws = "batch": one generator, batch-shaped draws, finished rows kept in the batch (no
    EOS early stop here): the batch equals generate() on the same batch, as its own draws give."""
    model = models[case["canvas"]]
    rows = max(case["rows"], 2)
    gen = torch.Generator().manual_seed(case["seed"])
    width = case["prompt_length"]
    prompt = torch.randint(3, VOCAB - 1, (rows, width), generator=gen)
    mask = torch.ones(rows, width, dtype=torch.long)
    if case["padded"]:
        mask[1:, :1] = 0
        prompt[1:, :1] = PAD
    overrides = {"max_steps_per_block": case["steps"], "renoise.entropy_bound": case["entropy_bound"],
                 "renoise.draws": "batch", "select.stability_threshold": case["stability"],
                 "select.confidence_threshold": case["confidence"]}
    ours = dd.generate(model, prompt, "diffusion_gemma", gen_length=case["gen_length"], block_length=case["canvas"],
                       attention_mask=mask, seed=case["seed"], overrides=overrides)
    torch.manual_seed(case["seed"])
    theirs = model.generate(prompt, attention_mask=mask, max_new_tokens=case["gen_length"],
                            max_denoising_steps=case["steps"],
                            sampler_config=EntropyBoundSamplerConfig(entropy_bound=case["entropy_bound"]),
                            stability_threshold=case["stability"], confidence_threshold=case["confidence"],
                            eos_token_id=case["eos"], pad_token_id=PAD, return_dict_in_generate=True)
    answer = theirs.sequences[:, width:]
    mine = _pad_after_first_eos(ours.answers, case["eos"])[:, :answer.shape[1]]
    assert mine.tolist() == answer.tolist()
