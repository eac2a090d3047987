"""Fuzzed ``generate`` calls over every preset with valid and invalid option values: each call
either returns a valid output or raises one of the documented error classes (``dd.DecodingError``
and its subclasses), never a raw exception.

A few hundred examples run in the normal suite; ``DLLM_FUZZ_EXAMPLES=10000`` runs more (issue 14's
campaign size).
"""

import math
import os
from typing import Literal, get_args, get_origin

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dllm_decoding as dd
from dllm_decoding.testing import ContextModel

EXAMPLES = int(os.environ.get("DLLM_FUZZ_EXAMPLES", "300"))
PRESETS = dd.list_strategies(dd.get_registry(dd.make_plugin_manager(load_entrypoints=False)))
REGISTRY = dd.get_registry(dd.make_plugin_manager(load_entrypoints=False))
MODELS = {vocab: ContextModel(vocab_size=vocab) for vocab in (8, 16)}

#: values no option should take silently: booleans, non-finite, huge, negative, wrong types
BAD_VALUES = [True, False, math.inf, -math.inf, math.nan, 10**12, 2**64, -5, -0.5, 0, 0.0, 1e-320, 1e308,
              "0.5", "7", "none", "high", "", None, [1], {"a": 1}, (0.5,), b"1"]
SMALL_INTS = st.integers(min_value=1, max_value=8)
UNIT_FLOATS = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
GOOD_VALUES = st.one_of(SMALL_INTS, UNIT_FLOATS, st.floats(min_value=0.0, max_value=5.0, allow_nan=False))


def _option_keys(preset: str) -> list[str]:
    """Every dotted option key of a preset's components (and the generation options)."""
    strategy = dd.load_strategy(preset, registry=REGISTRY)
    keys = []
    for where, cfg in strategy.components():
        point = where.split(".")[0]
        cls = REGISTRY.components[cfg.use]
        prefix = f"fuse.{cfg.use}" if point == "fuse" else where
        if point != "observers":
            keys += [f"{prefix}.{name}" for name in cls.Options.model_fields]
    return keys


OPTION_KEYS = {preset: _option_keys(preset) for preset in PRESETS}


def _field(key: str):
    """The pydantic field behind a dotted key (a component option or a generation option)."""
    parts = key.split(".")
    if len(parts) == 1:
        return dd.Strategy.model_fields[key]
    name = parts[1] if parts[0] == "fuse" else None
    if name is None:
        return None  # resolved per preset in _never_valid
    return REGISTRY.components[name].Options.model_fields[parts[-1]]


def _never_valid(preset: str, key: str, value) -> bool:
    """Whether no option of this kind may take ``value`` (so generate must refuse it): booleans and
    strings for numbers, NaN and infinities, containers, None where None means nothing; any value
    outside a Literal's choices."""
    field = _field(key)
    if field is None:
        strategy = dd.load_strategy(preset, registry=REGISTRY)
        head, option = key.split(".")
        cfg = getattr(strategy, head)
        field = REGISTRY.components[cfg.use].Options.model_fields[option]
    annotation = field.annotation
    if get_origin(annotation) is Literal:
        return value not in get_args(annotation)
    nullable = type(None) in get_args(annotation)
    if value is None or value == "none":
        return not nullable
    if annotation is bool or bool in get_args(annotation):  # a switch: exactly True or False
        return not isinstance(value, bool)
    if isinstance(value, (bool, str, bytes, list, tuple, dict)):
        return True
    if isinstance(value, float) and not math.isfinite(value):
        return True
    is_int = annotation is int or int in get_args(annotation)
    return is_int and isinstance(value, float)


def _bad_generate_argument(kwargs) -> bool:
    """eos_id / seed values generate must refuse whatever the model."""
    eos = kwargs.get("eos_id")
    if eos is not None and (isinstance(eos, (bool, str, float)) or eos < 0):
        return True
    seed = kwargs.get("seed", 0)
    return isinstance(seed, (bool, str, float)) or seed is None
MAX_PLUS_ONE = (1 << 20) + 1  # one more position than a strategy takes
GENERATION_KEYS = ["gen_length", "block_length", "steps", "temperature", "max_steps_per_block"]


@st.composite
def calls(draw):
    preset = draw(st.sampled_from(PRESETS))
    keys = OPTION_KEYS[preset] + GENERATION_KEYS
    overrides = {}
    chosen = draw(st.lists(st.sampled_from(keys), max_size=4, unique=True))
    # half the calls give one key a bad value (one at a time, so no other error hides it)
    bad_key = draw(st.sampled_from(chosen)) if chosen and draw(st.booleans()) else None
    for key in chosen:
        if key in ("gen_length", "block_length", "steps"):
            good = st.sampled_from([1, 2, 4, 8])
        elif key == "max_steps_per_block":
            good = st.integers(min_value=1, max_value=16)  # bounded: a remask may use every step
        elif key == "temperature":
            good = st.sampled_from([0.0, 0.5, 1.0, 2.0])
        else:
            good = GOOD_VALUES
        overrides[key] = draw(st.sampled_from(BAD_VALUES) if key == bad_key else good)
    overrides.setdefault("gen_length", draw(st.sampled_from([1, 2, 4, 8])))
    if isinstance(overrides["gen_length"], int) and not isinstance(overrides["gen_length"], bool) \
            and overrides["gen_length"] > 8:
        overrides["gen_length"] = draw(st.sampled_from([10**12, 2**64, MAX_PLUS_ONE]))  # refused, never decoded
    vocab = draw(st.sampled_from(sorted(MODELS)))
    batch = draw(st.integers(min_value=1, max_value=2))
    length = draw(st.integers(min_value=1, max_value=4))
    prompt = torch.tensor(draw(st.lists(st.lists(st.integers(0, vocab - 2), min_size=length, max_size=length),
                                        min_size=batch, max_size=batch)))
    attention_mask = None
    if batch > 1 and length > 1 and draw(st.booleans()):
        attention_mask = torch.ones(batch, length, dtype=torch.long)
        attention_mask[0, :draw(st.integers(0, length - 1))] = 0
    kwargs = {}
    if draw(st.booleans()):
        kwargs["seed"] = draw(st.one_of(st.integers(0, 2**31), st.sampled_from([-1, 2**64, 1.5, "7", True, None,
                                                                                [1] * batch, [0] * (batch + 1)])))
    if draw(st.booleans()):
        kwargs["eos_id"] = draw(st.one_of(st.integers(0, vocab - 2), st.sampled_from([-1, vocab, 99, "3", 2.0, True])))
    refused = any(_never_valid(preset, key, value) for key, value in overrides.items()) \
        or _bad_generate_argument(kwargs)
    return preset, overrides, vocab, prompt, attention_mask, kwargs, refused


def check_call(preset, overrides, vocab, prompt, attention_mask, kwargs, refused=False):
    """Run one call; return the error class name on a documented error, raise on anything else
    (a raw exception, an invalid output, or a never-valid value accepted)."""
    model = MODELS[vocab]
    try:
        out = dd.generate(model, prompt, preset, overrides=overrides, attention_mask=attention_mask,
                          registry=REGISTRY, **kwargs)
    except dd.DecodingError as exc:
        return type(exc).__name__
    assert not refused, f"accepted a never-valid value: overrides={overrides!r}, {kwargs!r}"
    strategy = dd.load_strategy(preset, overrides, registry=REGISTRY)
    batch, length = prompt.shape
    assert out.sequences.shape == (batch, length + strategy.gen_length)
    assert out.sequences.dtype == torch.long
    real = torch.ones_like(prompt, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    assert torch.equal(out.sequences[:, :length][real], prompt[real]), "the prompt changed"
    answers = out.sequences[:, length:]
    assert bool(((answers >= 0) & (answers < vocab)).all()), "an answer token outside the vocabulary"
    assert not bool((answers == model.mask_id).any()), "a [MASK] left in the answer"
    assert out.nfe.shape == (batch,) and bool((out.nfe >= 1).all())
    return "ok"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(calls())
def test_every_call_returns_a_valid_output_or_a_documented_error(call):
    check_call(*call)
