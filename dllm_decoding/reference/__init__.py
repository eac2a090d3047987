"""The project's own small masked-diffusion reference model, shipped as package data.

>>> from dllm_decoding.reference import load_reference_model
>>> model, tokenizer = load_reference_model()
"""

from .modeling import MODEL_TYPE, ReferenceConfig, ReferenceModelForMaskedLM
from .loading import checkpoint_dir, load_reference_model

__all__ = ["MODEL_TYPE", "ReferenceConfig", "ReferenceModelForMaskedLM", "checkpoint_dir", "load_reference_model"]
