"""PC-Sampler (Position-aware Calibrated confidence, arXiv 2508.13021) as a score component, as
NEUIR/PC-Sampler ``src/generate.py::pc_sampler_function`` computes it.

Confidence = ``exp(-lambda * j) * min(-p * log(f[token] + eps), alpha)``: the argmax token's
probability ``p`` weighted by how informative the token is (``-log`` of its background frequency
``f``, so frequent trivial tokens such as spaces and EOS do not win early) and by its position
``j`` in the block (earlier first, the global trajectory control). d2Cache's ``debias`` is the
same calibration without the position weight (``position_decay = 0``, ``epsilon = 1e-10``).
"""

from __future__ import annotations

import json
from functools import lru_cache

import torch
from pydantic import Field

from dllm_decoding import Component, FiniteFloat, OptionsModel, Proposal, hookimpl
from dllm_decoding.plugins.scoring import propose_tokens


@lru_cache(maxsize=8)
def background_frequencies(path: str | None, vocab_size: int) -> torch.Tensor:
    """``(V,)`` float32 token frequencies from a PC-Sampler corpus file (``{"num_token": N,
    "p_baseline_dict": {token_id: count}}``; unlisted tokens get ``1 / N``); without a file,
    uniform ``1 / V`` (then the calibration is a constant factor and only the position weight
    changes the order)."""
    if path is None:
        return torch.full((vocab_size,), 1.0 / vocab_size, dtype=torch.float32, device="cpu")  # cached: moved per use
    with open(path) as f:
        corpus = json.load(f)
    total = corpus["num_token"]
    freq = torch.full((vocab_size,), 1.0 / total, dtype=torch.float32, device="cpu")
    counts = {int(k): v / total for k, v in corpus["p_baseline_dict"].items() if int(k) < vocab_size}
    if counts:
        freq[torch.tensor(list(counts), device="cpu")] = torch.tensor(list(counts.values()), dtype=torch.float32,
                                                                      device="cpu")
    return freq


class PCSamplerOptions(OptionsModel):
    position_decay: FiniteFloat = Field(0.25, ge=0.0, description="lambda: position j of the block is weighted "
                                                                  "exp(-lambda * j) (0: no position weight)")
    clip: FiniteFloat = Field(10.0, gt=0.0, description="alpha: the calibrated score is clipped at this")
    epsilon: FiniteFloat = Field(1e-9, gt=0.0, description="added to the frequency inside the log")
    frequency_file: str | None = Field(None, description="PC-Sampler corpus JSON of token counts; None: uniform")


class PCSampler(Component):
    """PC-Sampler: confidence = ``exp(-position_decay * j) * min(-p * log(f + epsilon), clip)``
    for the argmax token (``p`` its probability, ``f`` its background frequency)."""

    name = "pc_sampler"
    hook_point = "score"
    Options = PCSamplerOptions

    @hookimpl
    def score(self, state, logits):
        opts = self.options
        tokens = propose_tokens(state, logits)
        probability = torch.softmax(logits, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
        freq = background_frequencies(opts.frequency_file, state.vocab_size).to(logits.device)
        calibrated = (-probability * torch.log(freq[tokens] + opts.epsilon)).clamp(max=opts.clip)
        positions = torch.arange(logits.shape[1], dtype=torch.float32, device=logits.device)
        return Proposal(tokens=tokens, confidence=torch.exp(-opts.position_decay * positions) * calibrated,
                        logits=logits)


@hookimpl
def dllm_decoding_register_components(register):
    register(PCSampler)
