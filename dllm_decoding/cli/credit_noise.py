"""``dllm-decode bench --credit-noise``: the noisy-credit failure analysis (wrong tokens
accumulating credit), on the model and its under-confident copies; JSON, Markdown, PNG.

    dllm-decode bench --credit-noise --out docs/benchmarks   # docs/benchmarks/credit_noise.{json,md,png}
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..core.errors import ConfigError
from ..evaluation import credit_noise
from ..evaluation.loading import load_model
from ..tasks import TASKS
from .common import check_batch_size, check_example_count, check_writable_dir, model_from_args, model_options


def add_credit_noise_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("credit noise (with --credit-noise: threshold vs credit with noisy credit)")
    group.add_argument("--credit-noise", action="store_true",
                       help="inject noise into the credit (a wrong token earns credit with probability p per step "
                            "and position) and count the tokens credit gets wrong that threshold decoding alone "
                            "gets right; writes credit_noise.json, .md and .png into --out")
    group.add_argument("--noise-levels", type=float, nargs="+", default=list(credit_noise.NOISE_LEVELS), metavar="P",
                       help="noise probabilities (default 0 0.1 0.2 0.4)")
    group.add_argument("--noise-targets", nargs="+", default=list(credit_noise.NOISE_TARGETS),
                       choices=credit_noise.NOISE_TARGETS,
                       help="which wrong token earns the credit (default: both)")
    group.add_argument("--noise-scales", type=float, nargs="+", default=list(credit_noise.NOISE_SCALES), metavar="S",
                       help="the wrong token earns S times the step's credit (default 1 4: as much as the argmax, "
                            "and enough to overtake it)")
    group.add_argument("--noise-temperatures", type=float, nargs="+", default=[1.0, 3.0], metavar="TAU",
                       help="the model's logits divided by each TAU: 1 = the model, 3 = its under-confident copy "
                            "(default 1 3)")
    group.add_argument("--noise-threshold", type=float, default=credit_noise.THRESHOLD,
                       help="the confidence threshold of both rules (default 0.9)")


def run_credit_noise(args: argparse.Namespace, out_dir: Path) -> int:
    from tqdm import tqdm

    if model_options(args):
        raise ConfigError("--credit-noise builds its own model copies: drop --logit-temperature, --logit-noise and "
                          "--kv-cache (use --noise-temperatures)")
    bad = [t for t in args.noise_temperatures if not (math.isfinite(t) and t > 0)]
    if bad:
        raise ConfigError(f"--noise-temperatures {bad[0]}: give positive numbers")
    tasks = args.tasks or list(TASKS)
    n = args.n if args.n is not None else 100
    check_example_count(n)
    check_batch_size(args.batch_size)
    credit_noise.validate(tasks, args.noise_levels, args.noise_targets, args.noise_threshold, args.noise_scales)
    check_writable_dir(out_dir, "--out")
    model_from_args(args, decodes_tasks="bench --credit-noise")  # the same checks as every task command
    models = {("model" if tau == 1 else f"logits / {tau:g}"):
              load_model(args.model, logit_temperature=tau, device=args.device, dtype=args.dtype)
              for tau in args.noise_temperatures}
    bar = tqdm(total=len(models) * len(tasks) * len(args.noise_targets) * len(args.noise_scales) * len(args.noise_levels),
               desc="credit noise", file=sys.stderr)

    def progress(label: str) -> None:
        bar.update(1)
        bar.set_postfix_str(label[:50])

    try:
        payload = credit_noise.analyse(models, tasks, n, levels=args.noise_levels, targets=args.noise_targets,
                                       scales=args.noise_scales, threshold=args.noise_threshold, batch_size=args.batch_size,
                                       progress=progress)
    finally:
        bar.close()
    payload["meta"].update(model=args.model, temperatures=args.noise_temperatures)
    paths = credit_noise.write(payload, out_dir)
    print(credit_noise.markdown(payload))
    print(f"wrote {', '.join(map(str, paths))}")
    return 0
