"""The step-hook contract and the core's guarantees around it: hooks see the current block only,
a session may return the block's logits only, nothing is created off the canvas's device, and
the core keeps its promises whatever a plugin returns."""

import threading

import pytest
import torch

import dllm_decoding as dd
from dllm_decoding.core.denoiser import DecodeSession, Denoiser
from dllm_decoding.reference import ReferenceConfig, ReferenceModelForMaskedLM
from dllm_decoding.testing import ContextModel, refuses_kv_cache, registry_with

PROMPT = torch.tensor([[1, 2, 3], [0, 4, 5]])
PADDING = torch.tensor([[1, 1, 1], [0, 1, 1]])


class _BlockOnlySession(DecodeSession):
    """Returns only the current block's logits, as a dual-cache window does."""

    canvas_logits = False

    def start_block(self, start, end):
        self.block = (start, end)

    def forward(self, canvas, rows):
        full = self.denoiser.inner.start_session(self.rows_mask(rows)).forward(canvas, None)
        return full[:, self.block[0]:self.block[1]].clone()

    def forward_extended(self, canvas, rows, extension):
        full, extra = self.denoiser.inner.start_session(self.rows_mask(rows)).forward_extended(canvas, None, extension)
        return full[:, self.block[0]:self.block[1]].clone(), extra


def _needs_canvas_logits(preset):
    """An early commit or a component reading canvas-wide logits (KLASS's answer-wide history)."""
    strategy = dd.load_strategy(preset)
    return strategy.early_commit is not None or any(
        getattr(c, "needs_canvas_logits", False) for c in strategy.instantiate())


class BlockOnly(Denoiser):
    def __init__(self, inner):
        self.inner, self.mask_id, self.vocab_size, self.name = inner, inner.mask_id, inner.vocab_size, "block-only"

    def start_session(self, attention_mask):
        return _BlockOnlySession(self, attention_mask)


@pytest.mark.parametrize("preset", dd.list_strategies())
def test_a_session_may_return_block_only_logits(preset):
    """Block-only logits decode exactly as full-width ones (tokens, NFE), padded batch included."""
    model = ContextModel(vocab_size=11, seed=3, scale=3.0)
    kwargs = dict(attention_mask=PADDING, gen_length=8, block_length=4, seed=[5, 9], temperature=0.0)
    full = dd.generate(model, PROMPT, preset, **kwargs)
    if _needs_canvas_logits(preset):  # refused up front
        with pytest.raises(dd.InputError, match="needs the forward's logits for the whole canvas"):
            dd.generate(BlockOnly(model), PROMPT, preset, **kwargs)
        return
    block = dd.generate(BlockOnly(model), PROMPT, preset, **kwargs)
    assert torch.equal(full.sequences, block.sequences) and torch.equal(full.nfe, block.nfe)


def test_logits_of_another_width_are_the_models_fault():
    model = dd.as_model(lambda ids: torch.zeros(ids.shape[0], 5, 8), mask_id=7, vocab_size=8)
    with pytest.raises(dd.ModelError, match=r"\(1, 7, 8\), or \(1, 4, 8\) for the current block only"):
        dd.generate(model, torch.tensor([[1, 2, 3]]), "fast_dllm_threshold", gen_length=4)


def _tiny_reference():
    torch.manual_seed(0)
    config = ReferenceConfig(vocab_size=13, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32, mask_token_id=0, pad_token_id=1, eos_token_id=2)
    return ReferenceModelForMaskedLM(config).eval()


@pytest.mark.parametrize("kv_cache", [None, "dual", "prefix"])
@pytest.mark.parametrize("preset", dd.list_strategies())
def test_nothing_is_created_off_the_canvas_device(preset, kv_cache):
    """Decoding CPU tensors inside ``torch.device("meta")``: any tensor created without an
    explicit device lands on meta and fails loudly when it meets the CPU canvas."""
    model = dd.HFMaskedDiffusionModel(_tiny_reference(), kv_cache=kv_cache) if kv_cache else ContextModel(11, seed=1)
    strategy = dd.load_strategy(preset)
    if kv_cache and refuses_kv_cache(preset):  # refused, by design
        with pytest.raises(dd.InputError, match="key-value cache|kv_cache|--kv-cache"):
            dd.generate(model, [[3, 4]], preset, gen_length=2)
        return
    prompt = torch.tensor([[3, 4, 5], [1, 6, 7]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    expected = dd.generate(model, prompt, preset, attention_mask=mask, gen_length=4, block_length=2,
                           temperature=0.7, seed=1, trace=True)
    with torch.device("meta"):
        out = dd.generate(model, prompt, preset, attention_mask=mask, gen_length=4, block_length=2,
                          temperature=0.7, seed=1, trace=True)
    assert out.sequences.device.type == "cpu" and out.nfe.device.type == "cpu"
    assert torch.equal(out.sequences, expected.sequences) and torch.equal(out.trace.final, expected.trace.final)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("preset", dd.list_strategies())
def test_cuda_decode_equals_rows_alone(preset):
    model = ContextModel(11, seed=2)
    prompt, mask = PROMPT.cuda(), PADDING.cuda()
    out = dd.generate(model, prompt, preset, attention_mask=mask, gen_length=8, block_length=4, seed=[1, 2],
                      temperature=0.5)
    assert out.sequences.is_cuda
    alone = dd.generate(model, prompt[1:, 1:], preset, gen_length=8, block_length=4, seed=[2], temperature=0.5)
    assert torch.equal(alone.answers[0], out.answers[1])


class _Scorer(dd.Component):
    hook_point = "score"
    confidence = 0.0
    token = None

    @dd.hookimpl
    def score(self, state, logits):
        tokens = logits.argmax(-1) if self.token is None else torch.full_like(logits[..., 0], self.token, dtype=torch.long)
        return dd.Proposal(tokens=tokens, confidence=torch.full(tokens.shape, self.confidence, dtype=torch.float64),
                           logits=logits)


def test_progress_never_commits_a_prompt_position():
    """All -inf confidences: the progress rule picks an open block position, not column 0."""
    class NeverSure(_Scorer):
        name = "never_sure"
        confidence = float("-inf")

    out = dd.generate(ContextModel(9), torch.tensor([[1, 2, 3]]), {"score": {"use": "never_sure"},
                      "select": {"use": "threshold"}}, gen_length=4, registry=registry_with(NeverSure))
    assert out.sequences[0, :3].tolist() == [1, 2, 3] and int(out.nfe[0]) == 4
    assert not bool((out.answers == 8).any())


def test_remask_never_reopens_everything_a_row_decided():
    class ReopenAll(dd.Component):
        name = "reopen_all"
        hook_point = "remask"

        @dd.hookimpl
        def remask(self, state, proposal, commit):
            return torch.ones_like(commit)

    seen = []

    class Watch(dd.Component):
        name = "watch"
        hook_point = "observer"

        @dd.hookimpl
        def on_step_end(self, state, record):
            decided = ~state.selectable
            seen.append(bool((decided.any(dim=1) | ~record.active_rows).all()))

    out = dd.generate(ContextModel(9), torch.tensor([[1, 2, 3]]), {"select": {"use": "threshold"},
                      "remask": {"use": "reopen_all"}}, gen_length=4, registry=registry_with(ReopenAll),
                      observers=[Watch()])
    assert all(seen) and not bool((out.answers == 8).any())


def test_lifecycle_hooks_may_not_edit_the_state_in_place():
    class Vandal(dd.Component):
        name = "vandal"
        hook_point = "observer"

        @dd.hookimpl
        def on_block_start(self, state):
            state.canvas[:, 0] = 9

    with pytest.raises(dd.PluginError, match="component 'vandal' modified its input 'state.canvas' in place "
                                             "in hook 'on_block_start'"):
        dd.generate(ContextModel(10), torch.tensor([[1, 2, 3]]), "fast_dllm_threshold", gen_length=4,
                    observers=[Vandal()])


@pytest.mark.parametrize("fault, message", [
    ("nan_fuse", "the fuse component 'nan_fuse' produced NaN at row 0, answer position 0"),
    ("huge_token", "score component 'huge_token' proposed token id 99 at row 0"),
    ("mask_token", "score component 'mask_token' proposed the mask token (id 8)"),
])
def test_bad_plugin_values_name_the_plugin(fault, message):
    class NanFuse(dd.Component):
        name = "nan_fuse"
        hook_point = "fuse"

        @dd.hookimpl
        def fuse(self, state, logits):
            return logits * float("nan")

    class HugeToken(_Scorer):
        name = "huge_token"
        token = 99

    class MaskToken(_Scorer):
        name = "mask_token"
        token = 8

    registry = registry_with(NanFuse, HugeToken, MaskToken)
    strategy = {"fuse": [{"use": "nan_fuse"}], "select": {"use": "threshold"}} if fault == "nan_fuse" else \
        {"score": {"use": fault}, "select": {"use": "threshold"}}
    with pytest.raises(dd.PluginError) as info:
        dd.generate(ContextModel(9), torch.tensor([[1, 2, 3]]), strategy, gen_length=4, registry=registry)
    assert message in str(info.value)


def test_a_plugin_written_for_canvas_width_is_told_about_block_width():
    class CanvasSelect(dd.Component):
        name = "canvas_select"
        hook_point = "select"

        @dd.hookimpl
        def select(self, state, proposal):
            return state.open.clone()  # 0.1's (B, T) contract

    with pytest.raises(dd.PluginError, match="step hooks see the current block only"):
        dd.generate(ContextModel(9), torch.tensor([[1, 2, 3]]), {"select": {"use": "canvas_select"}},
                    gen_length=4, registry=registry_with(CanvasSelect))


def test_padding_ids_come_back_as_given():
    out = dd.generate(ContextModel(11), torch.tensor([[7, 7, 4, 5], [1, 2, 3, 4]]), "fast_dllm_threshold",
                      attention_mask=torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]), gen_length=4)
    assert out.sequences[:, :4].tolist() == [[7, 7, 4, 5], [1, 2, 3, 4]]


@pytest.mark.parametrize("seed", [1.5, 2**64, "7", True, [1], [1, "x"], -1, None])
def test_bad_seeds_are_input_errors(seed):
    with pytest.raises(dd.InputError, match="seed"):
        dd.generate(ContextModel(9), PROMPT, "fast_dllm_threshold", attention_mask=PADDING, gen_length=4, seed=seed)


def test_threads_decode_as_one_thread():
    """Distinct strategies in 8 threads at once (the pipeline cache is shared) give the
    sequential results."""
    model = ContextModel(11, seed=4)
    thresholds = [0.3 + 0.07 * i for i in range(8)]
    expected = [dd.generate(model, PROMPT, "credit_decoding", attention_mask=PADDING, gen_length=8,
                            overrides={"select.threshold": t}).sequences for t in thresholds]
    from dllm_decoding.core import pipeline

    pipeline._PIPELINES.clear()
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(5):
                results[i] = dd.generate(model, PROMPT, "credit_decoding", attention_mask=PADDING, gen_length=8,
                                         overrides={"select.threshold": thresholds[i]}).sequences
        except Exception as exc:  # collected: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(torch.equal(results[i], expected[i]) for i in range(8))


@pytest.mark.parametrize("prompt, mask, message", [
    ([[1.0, 2.0, 3.0]], None, "must hold integer token ids, got dtype torch.float32"),
    ([[True, False]], None, "must hold integer token ids"),
    ([[1, 2, 3]], "abc", "attention_mask: expected a 0/1 tensor"),
    ([[1, 2, 3]], [[0.0, 1.0, 1.0]], "attention_mask must hold integers"),
])
def test_prompts_and_masks_of_the_wrong_kind_are_input_errors(prompt, mask, message):
    with pytest.raises(dd.InputError, match=message):
        dd.generate(ContextModel(9), prompt, "fast_dllm_threshold", attention_mask=mask, gen_length=4)


@pytest.mark.parametrize("overrides, message", [
    ({"temperature": 1e308}, "temperature"), ({"fuse.credit.alpha": 1e308}, "alpha"),
    ({"select.k": 4.0}, "select.k"), ({"select.threshold": True}, "not a boolean"),
])
def test_option_values_that_break_the_arithmetic_are_refused(overrides, message):
    preset = "llada_low_confidence" if "select.k" in overrides else "credit_decoding"
    with pytest.raises(dd.ConfigError, match=message):
        dd.generate(ContextModel(9), [[1, 2, 3]], preset, gen_length=4, overrides=overrides)


def test_large_temperatures_sample_without_overflow():
    out = dd.generate(ContextModel(9, scale=50.0), [[1, 2, 3]], "fast_dllm_threshold", gen_length=8,
                      temperature=1000.0, seed=3)
    assert not bool((out.answers == 8).any())


def test_several_eos_ids_stop_a_row():
    """An Instruct model ends a turn with any of several ids: each stops the row, the first fills."""
    model = ContextModel(11, seed=2, scale=4.0)
    free = dd.generate(model, [[1, 2, 3]], "fast_dllm_threshold", gen_length=8, block_length=2)
    first_block = free.answers[0, :2].tolist()
    out = dd.generate(model, [[1, 2, 3]], "fast_dllm_threshold", gen_length=8, block_length=2,
                      eos_id=[9 if first_block[0] != 9 else 8, first_block[1]])
    assert out.answers[0, :2].tolist() == first_block
    fill = 9 if first_block[0] != 9 else 8
    assert out.answers[0, 2:].tolist() == [fill] * 6 and int(out.nfe[0]) < int(free.nfe[0])
    with pytest.raises(dd.InputError, match="empty list"):
        dd.generate(model, [[1, 2, 3]], "fast_dllm_threshold", gen_length=4, eos_id=[])
    with pytest.raises(dd.InputError, match="outside the model's vocabulary"):
        dd.generate(model, [[1, 2, 3]], "fast_dllm_threshold", gen_length=4, eos_id=[1, 99])
