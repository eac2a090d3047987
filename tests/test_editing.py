"""The edit hook and LLaDA2.1's joint threshold decoding (SGLang JointThreshold), exact to a
re-statement of SGLang's loop: tokens and forwards."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dllm_decoding as dd
from dllm_decoding.testing import ContextModel, StrategyConformance, registry_with
from published_loops import sglang_joint_threshold_generate


def _logits_fn(model):
    def fn(ids):
        return model.start_session(torch.ones_like(ids)).forward(ids, None)
    return fn


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(vocab=st.integers(5, 30), seed=st.integers(0, 2**16), scale=st.sampled_from([0.5, 1.5, 4.0]),
       prompt=st.lists(st.integers(0, 3), min_size=1, max_size=4), block=st.sampled_from([2, 4, 8]),
       blocks=st.integers(1, 3), threshold=st.sampled_from([0.2, 0.5, 0.9]),
       edit_threshold=st.sampled_from([0.0, 0.3, 0.7]), post=st.sampled_from([0, 1, 3, 16]),
       penalty=st.sampled_from([0.0, 0.5, 2.0]))
def test_joint_threshold_equals_sglang(vocab, seed, scale, prompt, block, blocks, threshold, edit_threshold,
                                       post, penalty):
    model = ContextModel(vocab, seed=seed, scale=scale)
    prompt = torch.tensor([prompt])
    gen = block * blocks
    ref, nfe = sglang_joint_threshold_generate(
        _logits_fn(model), prompt.clone(), gen_length=gen, block_length=block, mask_id=model.mask_id,
        threshold=threshold, edit_threshold=edit_threshold, max_post_edit_steps=post, penalty_lambda=penalty)
    out = dd.generate(model, prompt, "joint_threshold", gen_length=gen, block_length=block, overrides={
        "select.threshold": threshold, "edit.edit_threshold": edit_threshold, "edit.max_post_edit_steps": post,
        "fuse.previous_token_penalty.penalty": penalty, "max_steps_per_block": block + post})
    assert torch.equal(out.sequences, ref)
    assert int(out.nfe[0]) == nfe


def test_edits_change_decided_tokens_and_cost_forwards():
    """With editing, a block takes extra steps after it is full; without, it ends at once."""
    model = ContextModel(12, seed=7, scale=1.0)
    prompt = torch.tensor([[1, 2, 3]])
    plain = dd.generate(model, prompt, "joint_threshold", gen_length=8, block_length=8,
                        overrides={"edit.max_post_edit_steps": 0})
    edited = dd.generate(model, prompt, "joint_threshold", gen_length=8, block_length=8, trace=True)
    assert int(edited.nfe[0]) > int(plain.nfe[0])


def test_an_edit_component_may_only_touch_decided_positions():
    seen = []

    class EditEverything(dd.Component):
        name = "edit_everything"
        hook_point = "edit"

        @dd.hookimpl
        def edit(self, state, proposal, commit):
            return torch.ones_like(commit)

    class Watch(dd.Component):
        name = "watch"
        hook_point = "observer"

        @dd.hookimpl
        def on_step_end(self, state, record):
            seen.append((record.edited, record.commit))

    registry = registry_with(EditEverything)
    out = dd.generate(ContextModel(9, seed=1, scale=1.0), torch.tensor([[1, 2]]),
                      {"select": {"use": "topk", "k": 1}, "edit": {"use": "edit_everything"}},
                      gen_length=4, registry=registry, observers=[Watch()])
    assert not bool((out.answers == 8).any())
    decided = torch.zeros(1, 4, dtype=torch.bool)
    for edited, commit in seen:
        assert not bool((edited & ~decided).any())  # never an open position, nor one committed now
        decided = decided | commit
    assert int(out.nfe[0]) <= 2 * 4  # max_steps_per_block bounds the editing


def test_edit_options_are_checked():
    with pytest.raises(dd.ConfigError, match="edit_threshold"):
        dd.load_strategy("joint_threshold", {"edit.edit_threshold": 2.0})
    with pytest.raises(dd.ConfigError, match="unknown edit component"):
        dd.load_strategy("joint_threshold", {"edit.use": "tokn_edit"}).instantiate()


class TestJointThresholdConformance(StrategyConformance):
    strategy = "joint_threshold"
