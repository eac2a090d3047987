"""Model adapters: callables, Hugging Face masked LMs (aligned and Dream-style shifted)."""

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

import dllm_decoding as dd


@pytest.fixture(scope="module")
def tiny_bert():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    return BertForMaskedLM(config).eval()


def test_hf_model_without_mask_id_is_explained(tiny_bert):
    with pytest.raises(dd.InputError, match="no mask_token_id; pass mask_id"):
        dd.generate(tiny_bert, torch.tensor([[1, 2]]), "fast_dllm_threshold", gen_length=4)


def test_hf_model_decodes_and_gets_the_attention_mask(tiny_bert, monkeypatch):
    model = dd.HFMaskedDiffusionModel(tiny_bert, mask_id=19)
    seen = []
    original = tiny_bert.forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("attention_mask"))
        out = original(*args, **kwargs)
        out.logits[..., 19] = float("-inf")  # a dLLM never proposes [MASK]
        return out

    monkeypatch.setattr(tiny_bert, "forward", spy)
    prompts = torch.tensor([[0, 3, 4], [5, 6, 7]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    out = dd.generate(model, prompts, "llada_low_confidence", gen_length=4, attention_mask=mask)
    assert out.sequences.shape == (2, 7) and out.nfe.tolist() == [4, 4]
    assert seen[0] is not None and seen[0].tolist()[0] == [0, 1, 1, 1, 1, 1, 1]
    assert not bool((out.answers == 19).any())


def test_config_mask_token_id_is_used(tiny_bert):
    tiny_bert.config.mask_token_id = 19
    try:
        model = dd.models.as_denoiser(tiny_bert)
        assert model.mask_id == 19 and model.vocab_size == 20
    finally:
        del tiny_bert.config.mask_token_id


class _ShiftedLM(torch.nn.Module):
    """Dream-style: logits[:, i] predicts token i + 1. Predicts token (position + 1) % 5."""

    def __init__(self):
        super().__init__()
        self.config = type("C", (), {"vocab_size": 6, "mask_token_id": 5, "name_or_path": "shifted"})()

    def forward(self, input_ids, attention_mask=None):
        b, t = input_ids.shape
        target = (torch.arange(t) + 1) % 5  # the token at position i + 1
        logits = torch.full((b, t, 6), -5.0)
        logits[:, torch.arange(t), target] = 5.0
        logits[..., 5] = float("-inf")
        return type("Out", (), {"logits": logits})()


def test_dream_style_shift_aligns_logits():
    model = dd.HFMaskedDiffusionModel(_ShiftedLM(), shift_logits=True)
    out = dd.generate(model, torch.tensor([[1, 1]]), "fast_dllm_threshold", gen_length=4)
    # aligned: position i gets what the model emitted at i - 1, i.e. token i % 5
    assert out.answers[0].tolist() == [2, 3, 4, 0]


def test_callable_with_attention_mask_keyword_gets_it():
    got = {}

    def fn(ids, attention_mask):
        got["mask"] = attention_mask
        logits = torch.zeros(ids.shape[0], ids.shape[1], 4)
        logits[..., 1] = 3.0
        logits[..., 3] = float("-inf")
        return logits

    out = dd.generate(dd.as_model(fn, mask_id=3, vocab_size=4), torch.tensor([[0, 2]]),
                      "fast_dllm_threshold", gen_length=2, attention_mask=torch.tensor([[0, 1]]))
    assert got["mask"].tolist() == [[0, 1, 1, 1]] and out.answers.tolist() == [[1, 1]]


def test_a_checkpoint_whose_weights_do_not_fit_is_refused(tiny_bert, tmp_path):
    """transformers would fill missing weights with random values and decode noise silently."""
    from safetensors.torch import load_file, save_file

    from dllm_decoding.evaluation.loading import load_hf_checkpoint

    tiny_bert.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    dropped = next(k for k in tensors if "encoder.layer.0.attention.self.query.weight" in k)
    del tensors[dropped]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(dd.ModelError, match="weights do not fit its config.json .*missing .*query.weight"):
        load_hf_checkpoint(str(tmp_path))
