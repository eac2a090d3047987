"""dllm-decoding: composable decoding strategies for diffusion language models.

>>> import dllm_decoding as dd
>>> out = dd.generate(model, prompt_ids, strategy="credit_decoding", gen_length=64, block_length=32)
>>> out.sequences, out.nfe
"""

from .core.components import Component, FiniteFloat, NoOptions, OptionsModel, StrictInt
from .core.errors import ConfigError, DecodingError, InputError, ModelError, PluginError, PluginWarning
from .core.hookspecs import hookimpl, hookspec
from .core.state import DecodeState, Extension, GenerateOutput, Proposal, StepRecord
from .core.denoiser import DecodeSession, Denoiser
from .core.manager import get_registry, make_plugin_manager, reset_default_registry
from .core.config import Strategy, list_strategies, load_strategy
from .core.loop import generate
from .core.trace import Trace, TraceRecorder
from .models import CallableModel, HFMaskedDiffusionModel, as_model, load_model  # registers the model adapters
from .text import TextOutput, generate_text

__all__ = [
    "CallableModel", "Component", "ConfigError", "DecodeSession", "DecodeState", "DecodingError",
    "Denoiser", "Extension", "FiniteFloat", "GenerateOutput", "HFMaskedDiffusionModel", "InputError", "ModelError",
    "NoOptions", "OptionsModel", "PluginError", "PluginWarning", "Proposal", "StepRecord", "Strategy", "StrictInt", "TextOutput",
    "Trace", "TraceRecorder", "as_model", "generate", "generate_text", "get_registry", "hookimpl", "hookspec", "list_strategies",
    "load_model", "load_strategy", "make_plugin_manager", "reset_default_registry",
]
__version__ = "0.1.0"
