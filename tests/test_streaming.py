"""Streaming: every step's committed and provisional tokens, as a callback, an iterator and
``generate --stream``."""

import pytest
import torch

import dllm_decoding as dd
from dllm_decoding import cli
from dllm_decoding.streaming import StepStreamer, TerminalText, iter_decode
from dllm_decoding.testing import ContextModel

PROMPT = torch.tensor([[1, 2, 3], [0, 4, 5]])
MASK = torch.tensor([[1, 1, 1], [0, 1, 1]])


@pytest.mark.parametrize("preset", ["llada_low_confidence", "credit_decoding", "threshold_remask"])
def test_streamer_reports_every_step_then_the_output(preset):
    updates = []
    model = ContextModel(11, seed=2, scale=2.0)
    out = dd.generate(model, PROMPT, preset, attention_mask=MASK, gen_length=8, block_length=4,
                      observers=[StepStreamer(updates.append)])
    steps, final = updates[:-1], updates[-1]
    assert final.done and final.output is out and torch.equal(final.tokens, out.answers)
    assert len(steps) == out.stats["steps"] and [u.step for u in steps] == list(range(len(steps)))
    for u in steps:
        assert not bool((u.committed & u.provisional).any())
        # provisional positions are open positions of the step's block only
        block = torch.zeros(8, dtype=torch.bool)
        block[4 * u.block_index:4 * u.block_index + 4] = True
        assert not bool((u.provisional & ~block).any())
        assert not bool((u.tokens[u.provisional] == model.mask_id).any())
        assert bool((u.tokens[~u.committed & ~u.provisional] == model.mask_id).all())
    if preset != "threshold_remask":  # without remasking a committed token never changes
        for before, after in zip(steps, steps[1:]):
            assert bool((after.committed >= before.committed).all())
            assert torch.equal(after.tokens[before.committed], before.tokens[before.committed])
        assert torch.equal(steps[-1].tokens, out.answers)


def test_iter_decode_yields_what_the_callback_sees():
    model = ContextModel(11, seed=2)
    seen = []
    dd.generate(model, PROMPT, "credit_decoding", attention_mask=MASK, gen_length=8, block_length=4,
                observers=[StepStreamer(seen.append)])
    streamed = list(iter_decode(model, PROMPT, "credit_decoding", attention_mask=MASK, gen_length=8, block_length=4))
    assert len(streamed) == len(seen)
    assert all(torch.equal(a.tokens, b.tokens) and torch.equal(a.committed, b.committed) for a, b in zip(streamed, seen))
    assert streamed[-1].done and torch.equal(streamed[-1].output.sequences, seen[-1].output.sequences)


def test_iter_decode_raises_the_decodes_error_and_can_stop_early():
    with pytest.raises(dd.ConfigError, match="unknown option"):
        list(iter_decode(ContextModel(9), PROMPT, "credit_decoding", overrides={"select.treshold": 0.5}))
    stream = iter_decode(ContextModel(9), PROMPT, "llada_low_confidence", gen_length=16)
    first = next(stream)
    stream.close()  # the worker stops at its next step
    assert first.step == 0 and not first.done


def test_text_marks_provisional_tokens():
    update = type("U", (), {})()
    update.tokens = torch.tensor([[5, 6, 7, 0]])
    update.committed = torch.tensor([[True, False, False, False]])
    update.provisional = torch.tensor([[False, True, True, False]])
    text = TerminalText(lambda ids: "".join(chr(96 + i) for i in ids), ansi=False)
    assert text.row(update, 0) == "e[fg]_"
    ansi = TerminalText(lambda ids: "".join(chr(96 + i) for i in ids), ansi=True)
    assert ansi.row(update, 0) == "e\x1b[2mfg\x1b[0m_"


def test_generate_stream_prints_each_step(capsys):
    assert cli.main(["generate", "--model", "toy", "--prompt-ids", "1,2,3", "--gen-length", "4", "--strategy",
                     "llada_low_confidence", "--stream"]) == 0
    lines = capsys.readouterr().out.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) == 4 and lines[4].startswith("done row 0: ")
    assert "[" in steps[0] and "[" not in lines[4]  # provisional shown in brackets off a terminal
    assert lines[-1].startswith("nfe=4")
