"""Model adapters: callables, Hugging Face masked-diffusion models (with Fast-dLLM's key-value
cache), and logit perturbations. The protocol they implement is :mod:`dllm_decoding.core.denoiser`.

A new model family goes here as one module (as transformers keeps one folder per model) that
subclasses :class:`Denoiser` / :class:`DecodeSession` or the Hugging Face adapter and registers
itself with :func:`~dllm_decoding.core.denoiser.register_model_adapter`.
"""

from ..core.denoiser import DecodeSession, Denoiser, as_denoiser, check_logits
from .callable import CallableModel, as_model
from .hf import KV_CACHE_MODES, HFMaskedDiffusionModel
from .diffusion_gemma import DiffusionGemmaModel  # after .hf: its adapter is asked first
from .dream import DreamConfig, DreamForDiffusionLM
from .families import FAMILIES, load_model
from .llada import LLaDAConfig, LLaDAForDiffusionLM
from .perturbed import PerturbedLogits

__all__ = ["FAMILIES", "KV_CACHE_MODES", "CallableModel", "DecodeSession", "Denoiser", "DiffusionGemmaModel", "DreamConfig",
           "DreamForDiffusionLM", "HFMaskedDiffusionModel", "LLaDAConfig", "LLaDAForDiffusionLM",
           "PerturbedLogits", "as_denoiser", "as_model", "check_logits", "load_model"]
