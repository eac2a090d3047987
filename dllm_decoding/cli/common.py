"""Arguments shared by the commands, and the model they ask for."""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..evaluation.loading import check_checkpoint_dir, is_reference_checkpoint, load_model
from ..models import KV_CACHE_MODES
from ..models.placement import DEVICE_CHOICES, DTYPE_CHOICES, model_device, model_weight, resolve_device
from ..tasks import MAX_EXAMPLES


def check_example_count(n: int | None, flag: str = "--n") -> None:
    """A number of task examples, checked before any work."""
    if n is not None and not 1 <= n <= MAX_EXAMPLES:
        raise ConfigError(f"{flag} {n}: give a number of examples from 1 to {MAX_EXAMPLES}")


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: give a number of rows per decode call >= 1")


def check_writable_dir(path: str | Path, flag: str) -> Path:
    """Create ``path`` if needed and write a probe file into it, before any work: a path under a
    regular file, a read-only folder or a full disk fail now, in one line, not after the run."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{flag} {str(path)!r}: it is a file, not a folder") from None
    except OSError as exc:
        raise ConfigError(f"{flag} {str(path)!r}: cannot create the folder: {exc.strerror or exc}") from None
    _probe(path, flag, str(path))
    return path


def check_writable_file(path: str | Path, flag: str) -> Path:
    """``path``'s folder must exist and take a file (checked before any work)."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise ConfigError(f"{flag} {str(path)!r}: it is a folder; give a file name")
    if not parent.is_dir():
        raise ConfigError(f"{flag} {str(path)!r}: the folder {str(parent)!r} does not exist" +
                          (" (it is a file)" if parent.exists() else "; create it first"))
    _probe(parent, flag, str(path))
    return path


def _probe(folder: Path, flag: str, shown: str) -> None:
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".dllm-write-check-")
        try:
            os.write(fd, b"x" * 4096)
            os.fsync(fd)  # a full disk (ENOSPC) shows here, not only after the run
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        raise ConfigError(f"{flag} {shown!r}: cannot write there: {exc.strerror or exc}") from None


def threads_value(value: str) -> str:
    """``--threads`` as argparse takes it: a positive integer or 'auto'."""
    if value != "auto" and not (value.isdigit() and int(value) >= 1):
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}")
    return value


def add_threads_argument(p: argparse.ArgumentParser, *, default: str = "auto", help: str | None = None) -> None:
    """``--threads N|auto``, the same on every command (train-reference re-checks 'auto' as it trains)."""
    p.add_argument("--threads", default=default, type=threads_value, metavar="N|auto",
                   help=help or "torch threads (default auto: the CPU cores no other process is busy on, at "
                                  "least 1; torch's own default, every core, thrashes when the machine is shared)")


def auto_threads(sample_seconds: float = 0.1) -> int:
    """The cores left by other processes, measured over ``sample_seconds`` from /proc/stat (machine
    busy time minus ours), rounded, at least 1: on two cores with another busy process, 1, else 2
    (the rule of train-reference's ``ThreadGovernor``). Every usable core where /proc/stat is absent."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    first = _busy_sample()
    time.sleep(sample_seconds)
    last = _busy_sample()
    if first is None or last is None or last[0] <= first[0]:
        return cores
    others = ((last[1] - first[1]) - (last[2] - first[2])) / (last[0] - first[0])  # cores used by others
    return max(1, min(cores, round(cores - others)))


def _busy_sample() -> tuple[float, float, float] | None:
    """(wall time, machine busy CPU seconds, our CPU seconds), or None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait
    except (OSError, ValueError, IndexError):
        return None
    return time.time(), busy, time.process_time()


def apply_threads(value: str) -> int:
    """Set torch's thread count from ``--threads`` (before any torch work); returns it."""
    import torch

    threads = auto_threads() if value == "auto" else int(value)
    torch.set_num_threads(threads)
    return threads


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a strategy option with a dotted key, e.g. select.threshold=0.8 "
                             "or fuse.credit.alpha=0.5 (repeatable)")


def add_blocks_argument(p: argparse.ArgumentParser) -> None:
    """``--blocks N`` for the commands that decode task answers (eval, bench)."""
    p.add_argument("--blocks", type=int, default=1, metavar="N",
                   help="decode each answer in this many equal blocks (default 1)")


def add_model_arguments(p: argparse.ArgumentParser, *, toy: bool = False) -> None:
    """``--model``, the logit perturbations and the key-value cache, the same for every command that decodes."""
    p.add_argument("--model", default="reference",
                   help="'reference', 'toy' or a local checkpoint directory (the reference architecture, "
                        "or any Hugging Face masked-diffusion model)" if toy
                   else "'reference' or a local checkpoint directory (the reference architecture, or any "
                        "Hugging Face masked-diffusion model: generate only)")
    p.add_argument("--logit-temperature", type=float, default=1.0, metavar="TAU",
                   help="divide the model's logits by TAU before any strategy sees them: TAU > 1 makes an "
                        "under-confident model with the same argmax (stress-tests confidence rules)")
    p.add_argument("--logit-noise", type=float, default=0.0, metavar="SIGMA",
                   help="add Gaussian noise of this standard deviation to the logits at every forward "
                        "(seeded): confidence that fluctuates from step to step")
    p.add_argument("--mask-id", type=int, default=None, metavar="ID",
                   help="a checkpoint other than the reference model: its [MASK] token id, when its config has "
                        "no mask_token_id (LLaDA: 126336)")
    p.add_argument("--shift-logits", action="store_true",
                   help="a checkpoint whose logits[:, i] predict token i + 1 (Dream)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let a checkpoint that ships its own modeling code (LLaDA, Dream) run it")
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:N]",
                   help=f"where the model runs ({DEVICE_CHOICES}; default auto: the GPU when there is one, "
                        f"else the CPU); prompts are put there too")
    p.add_argument("--dtype", default="auto", metavar="|".join(DTYPE_CHOICES.split(", ")),
                   help="the model's dtype (default auto: bfloat16 on a GPU that supports it, else float32); "
                        "the model is cast once, at load")
    p.add_argument("--kv-cache", choices=KV_CACHE_MODES, default=None,
                   help="Fast-dLLM's key-value cache: each block's first step runs the whole sequence, later "
                        "steps compute only the block ('dual') or the block and what follows ('prefix') "
                        "against the cached keys and values; approximate, faster (default: no cache)")
    p.add_argument("--kv-refresh", type=int, default=None, metavar="N",
                   help="with --kv-cache: refresh the cache with a full forward after every N cached forwards "
                        "(default: at block starts only)")


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """How the arguments change the model ({} for none: logit perturbations and the key-value
    cache), checked before any work."""
    tau, noise, kv_cache, kv_refresh = args.logit_temperature, args.logit_noise, args.kv_cache, args.kv_refresh
    if not (math.isfinite(tau) and tau > 0):
        raise ConfigError(f"--logit-temperature must be a positive number, got {tau}")
    if not (math.isfinite(noise) and noise >= 0):
        raise ConfigError(f"--logit-noise must be a number >= 0, got {noise}")
    options: dict[str, Any] = {}
    if tau != 1.0 or noise != 0.0:
        options.update(logit_temperature=tau, logit_noise=noise)
    if kv_refresh is not None and kv_refresh < 1:
        raise ConfigError(f"--kv-refresh {kv_refresh}: give a number >= 1 of cached forwards between refreshes")
    if kv_refresh is not None and kv_cache is None:
        raise ConfigError(f"--kv-refresh {kv_refresh} refreshes the key-value cache: it needs --kv-cache "
                          f"prefix or dual")
    if kv_cache is not None:
        options.update(kv_cache=kv_cache)
    if kv_refresh is not None:
        options.update(kv_refresh=kv_refresh)
    if options and args.model == "toy":
        raise ConfigError("--logit-temperature, --logit-noise and --kv-cache need a checkpoint model; the "
                          "toy model is a plain function (use --model reference)")
    foreign = {"mask_id": args.mask_id, "shift_logits": args.shift_logits or None,
               "trust_remote_code": args.trust_remote_code or None}
    foreign = {k: v for k, v in foreign.items() if v is not None}
    if foreign and (args.model in ("toy", "reference") or is_reference_checkpoint(args.model)):
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise ConfigError(f"{flags}: for checkpoints other than the reference model; {args.model!r} needs none")
    return {**options, **foreign}


def check_chat_template_before_loading(model: str) -> None:
    """``--chat`` on a model whose tokenizer has no chat template, refused before any weight loads
    (the template is in tokenizer_config.json or chat_template.jinja / .json)."""
    if model == "toy":
        raise ConfigError("--chat: the toy model has no tokenizer; give --prompt-ids, or a checkpoint whose "
                          "tokenizer has a chat template")
    if is_reference_checkpoint(model):
        raise ConfigError("--chat: the reference model's tokenizer has no chat template; drop --chat (or use "
                          "--no-chat): its prompts are the task text as it is")
    folder = Path(model)
    if not folder.is_dir():
        return  # the loader names what is wrong with the path
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        config = {}
    if not (isinstance(config, dict) and config.get("chat_template")):
        raise ConfigError(f"--chat: the tokenizer of {model!r} has no chat template (none in "
                          f"tokenizer_config.json, no chat_template.jinja); use --no-chat to encode the prompts "
                          f"as they are, or an Instruct checkpoint's tokenizer")


def decode_device(args: argparse.Namespace, model: Any) -> Any:
    """Where the prompts go: the model's device (the toy model has no weights: --device's)."""
    return model_device(model, default=resolve_device(args.device))


def placement_record(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Device, dtype and torch threads of a run, for the JSON outputs."""
    import torch

    weights = model_weight(model)
    return {"device": str(decode_device(args, model)),
            "dtype": str(weights.dtype).removeprefix("torch.") if weights is not None else None,
            "threads": torch.get_num_threads()}


def model_from_args(args: argparse.Namespace, *, decodes_tasks: str | None = None) -> tuple[Any, Any]:
    """The model the arguments ask for. ``decodes_tasks``: the command's name when it decodes
    task prompts, which need a tokenizer (so not the toy model)."""
    options = model_options(args)
    if decodes_tasks and args.model == "toy":
        raise ConfigError(f"{decodes_tasks} decodes task prompts: it needs a model with a tokenizer "
                          f"(--model reference or a checkpoint directory), not the toy model")
    if decodes_tasks and Path(args.model).is_dir():
        check_checkpoint_dir(args.model)  # an empty or corrupt folder says so, not "another model"
    if decodes_tasks and Path(args.model).is_dir() and not is_reference_checkpoint(args.model):
        raise ConfigError(f"{decodes_tasks} decodes the reference tasks, whose prompts are written for the "
                          f"reference model's tokenizer; {args.model!r} is another model. Decode your own "
                          f"prompts with `dllm-decode generate --model {args.model} --prompt ...` or dd.generate")
    return load_model(args.model, **options, device=args.device, dtype=args.dtype)
