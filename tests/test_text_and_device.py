"""Issue 15 items 1 (device and dtype at load, the CLI), 5 (text in, text out: dd.generate_text,
generate --prompt / --prompts-file / --chat, EOS stop) and 6 (--threads on every command)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import dllm_decoding as dd
from dllm_decoding import cli
from dllm_decoding.cli.common import auto_threads
from dllm_decoding.evaluation.loading import load_model
from dllm_decoding.models.placement import model_device, resolve_device, resolve_dtype, resolve_placement

FIXTURES = Path(__file__).parent / "fixtures"
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
EOS, MASK = 125, 126  # the tiny fixtures' ids
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <eot> {% endfor %}"
                 "{% if add_generation_prompt %}<assistant> {% endif %}")


def tiny_tokenizer(chat: bool):
    """A word-level tokenizer over the fixtures' 128 ids: w0 ... w120, chat markers, <eos> 125,
    <mask> 126, <pad> 127; optionally with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(121)}
    vocab.update({"<user>": 121, "<assistant>": 122, "<eot>": 123, "<system>": 124, "<eos>": EOS, "<mask>": MASK,
                  "<pad>": 127})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>",
                                        mask_token="<mask>", additional_special_tokens=["<eot>"])
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module", params=["llada", "dream"])
def checkpoint(request, tmp_path_factory):
    """A tiny family checkpoint with a tokenizer that has a chat template."""
    folder = tmp_path_factory.mktemp(request.param) / "ckpt"
    shutil.copytree(FIXTURES / f"{request.param}-tiny", folder)
    tiny_tokenizer(chat=True).save_pretrained(folder)
    return folder


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- device and dtype


def test_placement_auto_and_cpu():
    device, dtype = resolve_placement("auto", "auto")
    if torch.cuda.is_available():
        assert device.type == "cuda"
        assert dtype in (torch.bfloat16, torch.float32)
    else:
        assert (device, dtype) == (torch.device("cpu"), torch.float32)
    assert resolve_placement("cpu", "auto") == (torch.device("cpu"), torch.float32)
    assert resolve_placement(torch.device("cpu"), torch.bfloat16) == (torch.device("cpu"), torch.bfloat16)
    # float16 runs on the CPU with torch 2.13 (matmul, softmax, attention): it is allowed there
    assert resolve_dtype("float16", torch.device("cpu")) is torch.float16


@pytest.mark.parametrize("device, message", [("gpu", "--device 'gpu': unknown device; use auto, cpu, cuda or cuda:N"),
                                             ("cuda:x", "unknown device"), (3, "unknown device")])
def test_unknown_device_is_one_config_error(device, message):
    with pytest.raises(dd.ConfigError, match=message):
        resolve_device(device)


@pytest.mark.parametrize("dtype", ["fp8", "float64", "int8", None, torch.float64])
def test_unknown_dtype_is_one_config_error(dtype):
    with pytest.raises(dd.ConfigError, match="unknown dtype; use auto, float32, bfloat16, float16"):
        resolve_dtype(dtype, torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_refused_before_weights_load(device, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("weights loaded")

    monkeypatch.setattr(dd.models.LLaDAForDiffusionLM, "from_pretrained", never)
    with pytest.raises(dd.ConfigError, match=f"--device {device}: CUDA is not available"):
        dd.load_model(FIXTURES / "llada-tiny", device=device)
    with pytest.raises(dd.ConfigError, match="CUDA is not available"):
        load_model("reference", device=device)


def test_a_dtype_the_device_cannot_run_is_refused(monkeypatch):
    def fails(*args, **kwargs):
        raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'Half'")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", fails)
    with pytest.raises(dd.ConfigError, match=r"--dtype float16: cpu cannot run it \(\"addmm_impl_cpu_\" not "
                                             r"implemented for 'Half'\); use --dtype float32"):
        load_model("reference", device="cpu", dtype="float16")


def test_bf16_on_a_gpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.raises(dd.ConfigError, match=r"--dtype bfloat16: the GPU cuda:0 \(Tesla V100\) has no bfloat16 "
                                             r"support; use --dtype float16 or float32"):
        resolve_dtype("bfloat16", torch.device("cuda", 0))
    assert resolve_dtype("auto", torch.device("cuda", 0)) is torch.float32


@pytest.mark.parametrize("name", ["reference", str(FIXTURES / "llada-tiny"), str(FIXTURES / "dream-tiny")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_models_load_cast_once_and_decode_in_every_dtype(name, dtype):
    model, _ = load_model(name, device="cpu", dtype=str(dtype).removeprefix("torch."))
    assert {p.dtype for p in model.parameters()} == {dtype} and model_device(model) == torch.device("cpu")
    out = dd.generate(model, torch.tensor([[3, 4, 5]]), "fast_dllm_threshold", gen_length=8, block_length=4)
    assert out.answers.shape == (1, 8)


def test_python_load_model_default_keeps_the_checkpoint_dtype():
    assert dd.load_model(FIXTURES / "llada-tiny").dtype == torch.float32
    assert dd.load_model(FIXTURES / "llada-tiny", dtype="bfloat16", device="cpu").dtype == torch.bfloat16


def test_cli_device_and_dtype_are_recorded(capsys, tmp_path):
    code, out, err = run(capsys, "generate", "--model", str(FIXTURES / "llada-tiny"), "--prompt-ids", "1,2,3",
                         "--gen-length", "8", "--device", "cpu", "--dtype", "bfloat16", "--threads", "1", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert (payload["device"], payload["dtype"], payload["threads"]) == ("cpu", "bfloat16", 1)
    code, out, err = run(capsys, "eval", "--task", "sort", "--n", "2", "--device", "cpu", "--threads", "1")
    assert code == 0, err
    result = json.loads(out)
    assert (result["device"], result["dtype"], result["threads"]) == ("cpu", "float32", 1)


@pytest.mark.parametrize("argv, message", [
    (["--device", "gpu"], "--device 'gpu': unknown device"),
    (["--dtype", "half"], "--dtype 'half': unknown dtype"),
])
@pytest.mark.parametrize("command", [["generate", "--model", "toy", "--prompt-ids", "1,2"], ["demo", "--n", "1"],
                                     ["eval", "--task", "sort", "--n", "1"], ["bench", "--quick", "--n", "1"]])
def test_cli_bad_device_or_dtype_is_one_line(capsys, tmp_path, command, argv, message):
    extra = ["--out", str(tmp_path)] if command[0] == "bench" else []
    code, _, err = run(capsys, *command, *extra, *argv)
    assert code == 2 and message in err and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cli_cuda_without_cuda(capsys):
    code, _, err = run(capsys, "generate", "--model", "reference", "--task", "sort", "--device", "cuda")
    assert code == 2 and "--device cuda: CUDA is not available" in err


@CUDA
@pytest.mark.parametrize("name", ["reference", str(FIXTURES / "llada-tiny"), str(FIXTURES / "dream-tiny")])
@pytest.mark.parametrize("kv_cache", [None, "dual"])
def test_a_cuda_decode_equals_the_cpu_decode_in_float32(name, kv_cache):
    prompts, mask = torch.tensor([[0, 3, 4, 5], [6, 7, 8, 9]]), torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    decoded = {}
    for device in ("cpu", "cuda"):
        model, _ = load_model(name, device=device, dtype="float32", kv_cache=kv_cache)
        out = dd.generate(model, prompts.to(device), "credit_decoding", attention_mask=mask.to(device),
                          gen_length=16, block_length=8)
        assert out.sequences.device.type == device
        decoded[device] = (out.sequences.cpu(), out.nfe.cpu())
    assert torch.equal(decoded["cpu"][0], decoded["cuda"][0]) and torch.equal(decoded["cpu"][1], decoded["cuda"][1])


@CUDA
def test_cuda_cli_generate_and_eval_in_bf16(capsys):
    code, out, err = run(capsys, "generate", "--model", "reference", "--task", "sort", "--n", "2", "--device", "cuda",
                         "--dtype", "bfloat16", "--json")
    assert code == 0, err
    assert json.loads(out)["device"].startswith("cuda") and json.loads(out)["dtype"] == "bfloat16"
    code, out, err = run(capsys, "eval", "--task", "sort", "--n", "4", "--device", "cuda", "--kv-cache", "dual")
    assert code == 0, err


@CUDA
def test_cuda_generate_text_on_a_family_model(checkpoint):
    model = dd.load_model(checkpoint, device="cuda", dtype="auto")
    result = dd.generate_text(model, tiny_tokenizer(chat=True), ["w1 w2", "w3"], "fast_dllm_threshold",
                              gen_length=8, block_length=4)
    assert result.output.sequences.device.type == "cuda" and len(result.texts) == 2


# --------------------------------------------------------------------------- text in, text out


def test_generate_text_applies_the_chat_template_and_left_pads(checkpoint):
    model, tokenizer = dd.load_model(checkpoint), tiny_tokenizer(chat=True)
    result = dd.generate_text(model, tokenizer, ["w1 w2 w3", [{"role": "system", "content": "w9"},
                                                              {"role": "user", "content": "w4"}]],
                              "fast_dllm_threshold", gen_length=8, block_length=4)
    assert result.prompts == ["<user> w1 w2 w3 <eot> <assistant> ", "<system> w9 <eot> <user> w4 <eot> <assistant> "]
    assert len(result.texts) == 2 and result.eos_ids == (EOS,)
    # each row decodes as it does alone (left padding is invisible)
    for row, prompt in enumerate(["w1 w2 w3", [{"role": "system", "content": "w9"}, {"role": "user", "content": "w4"}]]):
        alone = dd.generate_text(model, tokenizer, [prompt], "fast_dllm_threshold", gen_length=8, block_length=4,
                                 seed=row)
        assert alone.texts[0] == result.texts[row]
        assert torch.equal(alone.output.answers[0], result.output.answers[row])


def test_generate_text_stops_at_eos_by_default_on_family_models(checkpoint):
    model, tokenizer = dd.load_model(checkpoint), tiny_tokenizer(chat=False)

    class EOSFirst(dd.models.PerturbedLogits):  # the same model with its EOS logit raised
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits[..., EOS] += 100.0
            return out

    eos_everywhere = EOSFirst(model)
    result = dd.generate_text(eos_everywhere, tokenizer, "w1 w2", "llada_low_confidence", gen_length=8, block_length=4)
    assert result.texts == [""] and set(result.output.answers[0].tolist()) == {EOS}
    assert int(result.output.nfe[0]) == 4  # the first block's 4 steps, then the row stopped
    off = dd.generate_text(eos_everywhere, tokenizer, "w1 w2", "llada_low_confidence", gen_length=8, block_length=4,
                           eos_id=None)
    assert int(off.output.nfe[0]) == 8


def test_generate_text_with_the_reference_tokenizer():
    model, tokenizer = load_model("reference")
    result = dd.generate_text(model, tokenizer, ["12+3=", "7+70="], "credit_decoding", gen_length=8, block_length=8,
                              eos_id=None)
    assert len(result.texts) == 2 and result.prompts == ["12+3=", "7+70="]  # no chat template: as it is
    assert result.output.sequences.shape[0] == 2


def test_text_errors(checkpoint):
    model = dd.load_model(checkpoint)
    plain, chat = tiny_tokenizer(chat=False), tiny_tokenizer(chat=True)
    with pytest.raises(dd.ConfigError, match=r"chat template asked for \(--chat, chat=True\), but the tokenizer has "
                                             r"none"):
        dd.generate_text(model, plain, "w1", chat=True)
    with pytest.raises(dd.InputError, match="prompt 2 is empty; give some text"):
        dd.generate_text(model, chat, ["w1", "  "])
    with pytest.raises(dd.ConfigError, match="prompt 1 is a conversation"):
        dd.generate_text(model, chat, [[{"role": "user", "content": "w1"}]], chat=False)
    with pytest.raises(dd.InputError, match="every message needs a 'role' and a 'content' string"):
        dd.generate_text(model, chat, [[{"role": "user"}]])
    with pytest.raises(dd.InputError, match="non-empty list"):
        dd.generate_text(model, chat, [])
    with pytest.raises(dd.InputError, match="generate_text builds attention_mask"):
        dd.generate_text(model, chat, "w1", attention_mask=torch.ones(1, 1))


def test_cli_prompts_batch_chat_and_json(capsys, checkpoint, tmp_path):
    code, out, err = run(capsys, "generate", "--model", str(checkpoint), "--prompt", "w1 w2", "--prompt", "w3",
                         "--gen-length", "8", "--block-length", "4", "--strategy", "fast_dllm_threshold", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["chat"] is True and payload["eos_id"] == [EOS]
    assert [r["prompt"] for r in payload["results"]] == ["<user> w1 w2 <eot> <assistant> ", "<user> w3 <eot> <assistant> "]
    texts = [r["answer"] for r in payload["results"]]
    expected = dd.generate_text(dd.load_model(checkpoint), tiny_tokenizer(chat=True), ["w1 w2", "w3"],
                                "fast_dllm_threshold", gen_length=8, block_length=4)
    assert texts == expected.texts
    code, out, err = run(capsys, "generate", "--model", str(checkpoint), "--prompt", "w1 w2", "--no-chat",
                         "--no-eos-stop", "--gen-length", "8", "--json")
    payload = json.loads(out)
    assert code == 0 and payload["chat"] is False and payload["eos_id"] is None
    assert payload["results"][0]["prompt"] == "w1 w2"

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "w1 w2"}\n\n{"messages": [{"role": "user", "content": "w3"}]}\n')
    code, out, err = run(capsys, "generate", "--model", str(checkpoint), "--prompts-file", str(prompts),
                         "--gen-length", "8", "--block-length", "4", "--strategy", "fast_dllm_threshold")
    assert code == 0, err
    assert out.count("nfe=") == 2


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "w1"}\n{"prompt": "w2"\n', "line 2: not valid JSON"),
    ('{"prompt": "w1"}\n\n[1, 2]\n', "line 3: expected an object with one of \"prompt\" or \"messages\""),
    ('{"prompt": ""}\n', "line 1: \"prompt\" must be non-empty text"),
    ('{"messages": [{"role": "user"}]}\n', "line 1: \"messages\" must be a non-empty list"),
    ('{"prompt": "w1", "messages": []}\n', "line 1: expected an object with one of"),
    ("\n\n", "has no prompts"),
])
def test_cli_malformed_prompts_file_names_the_line(capsys, checkpoint, tmp_path, content, message):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(content)
    code, _, err = run(capsys, "generate", "--model", str(checkpoint), "--prompts-file", str(prompts))
    assert code == 2 and message in err and err.count("\n") == 1


def test_cli_chat_without_a_template_is_refused_before_loading(capsys, tmp_path, monkeypatch):
    folder = tmp_path / "plain"
    shutil.copytree(FIXTURES / "llada-tiny", folder)
    tiny_tokenizer(chat=False).save_pretrained(folder)

    def never(*args, **kwargs):
        raise AssertionError("weights loaded")

    monkeypatch.setattr(dd.models.LLaDAForDiffusionLM, "from_pretrained", never)
    code, _, err = run(capsys, "generate", "--model", str(folder), "--prompt", "w1", "--chat")
    assert code == 2 and "--chat: the tokenizer of" in err and "has no chat template" in err
    code, _, err = run(capsys, "generate", "--model", "reference", "--prompt", "1+2=", "--chat")
    assert code == 2 and "the reference model's tokenizer has no chat template" in err
    code, _, err = run(capsys, "generate", "--model", "toy", "--prompt-ids", "1", "--chat")
    assert code == 2 and "--chat formats text prompts" in err


def test_cli_empty_prompt(capsys):
    code, _, err = run(capsys, "generate", "--model", "reference", "--prompt", "12=", "--prompt", " ")
    assert code == 2 and "--prompt 2 is empty; give some text" in err


def test_cli_eos_stop_needs_an_eos_id(capsys):
    code, _, err = run(capsys, "generate", "--model", "toy", "--prompt-ids", "1,2", "--eos-stop")
    assert code == 2 and "--eos-stop: the model 'toy' names no EOS token" in err


# --------------------------------------------------------------------------- threads


def test_auto_threads_is_between_one_and_the_cores():
    import os

    assert 1 <= auto_threads(0.02) <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("command", [["strategies"], ["plugins"], ["generate", "--model", "toy", "--prompt-ids", "1,2"],
                                     ["eval", "--task", "sort", "--n", "1"], ["demo", "--n", "1", "--tasks", "sort"]])
def test_every_command_takes_threads_and_leaves_torch_as_it_was(capsys, command):
    before = torch.get_num_threads()
    code, _, err = run(capsys, *command, "--threads", "1")
    assert code == 0, err
    assert torch.get_num_threads() == before
    with pytest.raises(SystemExit) as stopped:
        cli.main([*command, "--threads", "none"])
    assert stopped.value.code == 2
    assert "argument --threads: expected a positive integer or 'auto', got 'none'" in capsys.readouterr().err


def test_threads_are_applied_before_the_command(capsys, monkeypatch):
    seen = []
    monkeypatch.setattr("dllm_decoding.cli.strategies.cmd_plugins", lambda args: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    for threads in (1, 2):
        assert cli.main(["plugins", "--threads", str(threads)]) == 0
    assert seen == [1, 2] and torch.get_num_threads() == before


def test_lm_eval_takes_our_threads_option(capsys):
    code, _, err = run(capsys, "lm-eval", "--threads", "zero", "--tasks", "dllm_copy")
    assert code == 2 and "--threads 'zero': give a positive integer or 'auto'" in err
