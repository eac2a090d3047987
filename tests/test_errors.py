"""Bad configs, bad inputs and failing plugins: one clear error, nothing half-done."""

import pytest
import torch

import dllm_decoding as dd
from dllm_decoding.testing import ContextModel, ScriptedModel, registry_with

PROMPT = torch.tensor([[1, 2, 3]])


@pytest.fixture
def model():
    return ContextModel(vocab_size=8)


@pytest.mark.parametrize("strategy, overrides, message", [
    ("credt_decoding", {}, "did you mean 'credit_decoding'"),
    ({"select": {"use": "threshhold"}}, {}, "unknown select component 'threshhold'; did you mean 'threshold'"),
    ({"select": {"use": "credit"}}, {}, "component 'credit' implements 'fuse', not 'select'"),
    ("fast_dllm_threshold", {"select.threshhold": 0.8}, "unknown option 'threshhold'"),
    ("fast_dllm_threshold", {"select.threshold": "high"}, "select.threshold: Input should be a valid number"),
    ("fast_dllm_threshold", {"select.threshold": 1.5}, "select.threshold: Input should be less than or equal to 1"),
    ("credit_decoding", {"fuse.credit.alpah": 0.5}, "unknown option 'alpah' for component 'credit'"),
    ("credit_decoding", {"fuse.temperature.alpha": 0.5}, "fuse component 'temperature' is not in this strategy"),
    ("fast_dllm_threshold", {"stepz": 3}, "unknown strategy field 'stepz'; did you mean 'steps'"),
    ("fast_dllm_threshold", {"gen_length": 8, "block_length": 3}, "block_length=3 does not divide gen_length=8"),
    ("fast_dllm_threshold", {"gen_length": 0}, "gen_length: Input should be greater than 0"),
    ("fast_dllm_threshold", {"gen_length": -4}, "gen_length: Input should be greater than 0"),
    ("llada_low_confidence", {"gen_length": 8, "block_length": 4, "steps": 3}, "steps=3 is not a multiple of the number of blocks"),
    ("fast_dllm_threshold", {"remask.threshold": 0.2}, "has no remask component; set remask.use"),
    ("fast_dllm_threshold", {"temperature": -1}, "temperature: Input should be greater than or equal to 0"),
])
def test_bad_strategy_is_one_clear_config_error(model, strategy, overrides, message):
    with pytest.raises(dd.ConfigError, match=None) as info:
        dd.generate(model, PROMPT, strategy, overrides=overrides)
    assert message in str(info.value)


def test_missing_toml_file_and_bad_toml(tmp_path):
    with pytest.raises(dd.ConfigError, match="does not exist"):
        dd.load_strategy(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("select = [unclosed")
    with pytest.raises(dd.ConfigError, match="is not valid TOML"):
        dd.load_strategy(bad)


@pytest.mark.parametrize("prompt, kwargs, message", [
    (torch.tensor([[1, 7, 3]]), {}, "contains the mask token (id 7)"),
    (torch.zeros(0, 3, dtype=torch.long), {}, "empty batch"),
    (torch.zeros(2, 0, dtype=torch.long), {}, "has no tokens"),
    (torch.tensor([[1.0, 2.0]]), {}, "must hold integer token ids"),
    (torch.ones(1, 2, 3, dtype=torch.long), {}, "must have shape (batch, prompt_length)"),
    (torch.tensor([[1, 9]]), {}, "token id 9, outside the model's vocabulary"),
    ("hello", {}, "must be a LongTensor"),
    (PROMPT, {"attention_mask": torch.ones(1, 2)}, "attention_mask has shape (1, 2)"),
    (PROMPT, {"attention_mask": torch.tensor([[1, 0, 1]])}, "must be left padding"),
    (PROMPT, {"attention_mask": torch.tensor([[0, 0, 0]])}, "a row with no prompt token"),
    (PROMPT, {"eos_id": 99}, "eos_id=99 is outside"),
    (torch.tensor([[1, 2], [3, 4]]), {"seed": [1, 2, 3]}, "got 3 seeds for a batch of 2 rows"),
])
def test_bad_input_is_one_clear_input_error(model, prompt, kwargs, message):
    with pytest.raises(dd.InputError) as info:
        dd.generate(model, prompt, "fast_dllm_threshold", gen_length=4, **kwargs)
    assert message in str(info.value)


def test_bad_model_wrapping():
    with pytest.raises(dd.InputError, match="outside the vocabulary"):
        dd.as_model(lambda ids: ids, mask_id=10, vocab_size=8)
    with pytest.raises(dd.InputError, match="wrap it first"):
        dd.generate(lambda ids: ids, PROMPT, "fast_dllm_threshold")
    with pytest.raises(dd.InputError, match="cannot decode with a int"):
        dd.generate(3, PROMPT, "fast_dllm_threshold")


def _logits_fn(transform):
    def fn(ids):
        logits = torch.zeros(ids.shape[0], ids.shape[1], 8)
        logits[..., 7] = float("-inf")
        logits[..., 2] = 1.0
        return transform(logits)
    return fn


@pytest.mark.parametrize("transform, message", [
    (lambda l: l[:, :-1], "returned logits of shape (1, 6, 8), expected (batch, positions, vocab_size) = (1, 7, 8)"),
    (lambda l: l[..., :5], "expected (batch, positions, vocab_size) = (1, 7, 8)"),
    (lambda l: l.masked_fill(torch.rand(l.shape) < 2, float("nan")), "non-finite logits (NaN or +inf)"),
    (lambda l: torch.where(torch.arange(8) == 3, float("inf"), l), "non-finite logits"),
    (lambda l: torch.full_like(l, float("-inf")), "all -inf"),
    (lambda l: l.long(), "returned torch.int64 logits"),
    (lambda l: "nonsense", "returned str"),
    (lambda l: torch.where(torch.arange(8) == 7, 5.0, l), "committed the mask token (id 7)"),
])
def test_misbehaving_model_is_a_model_error(transform, message):
    model = dd.as_model(_logits_fn(transform), mask_id=7, vocab_size=8)
    with pytest.raises(dd.ModelError) as info:
        dd.generate(model, PROMPT, "fast_dllm_threshold", gen_length=4)
    assert message in str(info.value)


class Exploding(dd.Component):
    name = "exploding"
    hook_point = "select"

    @dd.hookimpl
    def select(self, state, proposal):
        raise ZeroDivisionError("boom")


class InPlace(dd.Component):
    name = "in_place"
    hook_point = "fuse"

    @dd.hookimpl
    def fuse(self, state, logits):
        logits += 1.0
        return logits




class FloatSelect(dd.Component):
    name = "float_select"
    hook_point = "select"

    @dd.hookimpl
    def select(self, state, proposal):
        return proposal.confidence


class MutatesState(dd.Component):
    name = "mutates_state"
    hook_point = "select"

    @dd.hookimpl
    def select(self, state, proposal):
        state.canvas[:, -1] = 0
        return state.selectable


class MutatesSelectable(dd.Component):
    """state.selectable is cached for the step: the core reuses it after this hook returns."""
    name = "mutates_selectable"
    hook_point = "select"

    @dd.hookimpl
    def select(self, state, proposal):
        mask = state.selectable
        mask[:, -1] = False
        return mask


class TwoHooks(dd.Component):
    name = "two_hooks"
    hook_point = "select"

    @dd.hookimpl
    def select(self, state, proposal):
        return state.selectable

    @dd.hookimpl
    def score(self, state, logits):
        return None


class Misspelled(dd.Component):
    name = "misspelled"
    hook_point = "select"

    @dd.hookimpl
    def select(self, state, proposal):
        return state.selectable

    @dd.hookimpl
    def on_step_ends(self, state, record):
        pass


@pytest.mark.parametrize("component, message", [
    (Exploding, "component 'exploding' (test_errors.Exploding) raised in hook 'select': ZeroDivisionError: boom"),
    (InPlace, "component 'in_place' modified its input 'logits' in place in hook 'fuse'"),
    (FloatSelect, "select must return a bool tensor of shape (1, 4), got a torch.float64 tensor"),
    (MutatesState, "modified its input 'state.canvas' in place"),
    (MutatesSelectable, "modified its input 'state.open' in place"),  # selectable is a view of open
    (TwoHooks, "also implements the 'score' hook"),
    (Misspelled, "unknown hook"),
])
def test_failing_plugin_is_named(model, component, message):
    registry = registry_with(component)
    point = component.hook_point
    strategy = {"select": {"use": "threshold"}, point: [{"use": component.name}] if point == "fuse" else {"use": component.name}}
    with pytest.raises(dd.PluginError) as info:
        dd.generate(model, PROMPT, strategy, gen_length=4, registry=registry)
    assert message in str(info.value)


def test_duplicate_component_name_names_both_plugins():
    class Dup(dd.Component):
        name = "threshold"
        hook_point = "select"

        @dd.hookimpl
        def select(self, state, proposal):
            return state.selectable

    with pytest.raises(dd.PluginError, match="registered twice: by plugin 'builtin:selection'"):
        registry_with(Dup)


def test_component_without_its_hook_is_rejected():
    class NoHook(dd.Component):
        name = "no_hook"
        hook_point = "select"

    with pytest.raises(dd.PluginError, match="defines no `select` method"):
        registry_with(NoHook)


def test_failure_leaves_no_partial_output(model):
    """An error mid-decode raises; there is no output object to misuse."""
    registry = registry_with(Exploding)
    with pytest.raises(dd.PluginError):
        out = dd.generate(model, PROMPT, {"select": "exploding"}, gen_length=4, registry=registry)
        assert out is None  # pragma: no cover


def test_scripted_model_rejects_bad_scripts():
    with pytest.raises(ValueError, match="must not be the mask token"):
        ScriptedModel([1, 7], vocab_size=8, mask_id=7)
    with pytest.raises(ValueError, match="confidence must have shape"):
        ScriptedModel([1, 2], vocab_size=8, mask_id=7, confidence=[[0.5, 0.5, 0.5]])


def test_hook_implementations_may_take_any_subset_of_arguments(model):
    class FirstOpen(dd.Component):
        """``select`` taking only ``state`` (the hook is called with keywords)."""
        name = "first_open"
        hook_point = "select"

        @dd.hookimpl
        def select(self, state):
            first = state.selectable.long().argmax(dim=1)
            return torch.nn.functional.one_hot(first, state.selectable.shape[1]).bool() & state.selectable

    out = dd.generate(model, PROMPT, {"select": {"use": "first_open"}}, gen_length=4, trace=True,
                      registry=registry_with(FirstOpen))
    assert out.trace.commit_step()[0].tolist() == [0, 1, 2, 3]  # left to right, one per step


def test_plugin_objects_are_named_after_their_class_in_errors():
    class NoHook(dd.Component):
        name = "no_hook"
        hook_point = "select"

    with pytest.raises(dd.PluginError, match=r"plugin 'registry_with\.<locals>\._Plugin': component 'no_hook'"):
        registry_with(NoHook)
