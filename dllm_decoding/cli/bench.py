"""``dllm-decode bench``: strategies x settings x tasks -> JSON, Markdown, PNG.

    dllm-decode bench --out docs/benchmarks --report docs/benchmarks.md   # the page, regenerated
    dllm-decode bench --quick                          # < 2 minutes on 2 cores
    dllm-decode bench --overhead                       # framework vs a bare hand-written loop
    dllm-decode bench --scaling --out docs/benchmarks  # the loop's cost from 256 to 8192 tokens
    dllm-decode bench --credit-noise --out docs/benchmarks  # wrong tokens accumulating credit
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path


from ..core.errors import ConfigError
from ..evaluation.bench import (PARTIAL_NAME, QUICK_TASKS, SWEEPS, make_plots, parse_settings, run, validate,
                                write_partial, write_results)
from ..evaluation.loading import compile_model
from ..evaluation.metrics import claims
from ..evaluation.overhead import measure_overhead
from ..evaluation.report import markdown, overhead_table, write_report
from ..evaluation.scaling import plot_scaling, run_scaling, scaling_markdown
from ..tasks import TASKS
from .credit_noise import add_credit_noise_arguments, run_credit_noise
from .common import (add_blocks_argument, add_model_arguments, check_batch_size, check_example_count,
                     check_writable_dir, check_writable_file, model_from_args, model_options, placement_record)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a killed job, a CI timeout) stops the run as Ctrl-C does: finished results are
    kept, marked interrupted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def configure_bench_parser(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--tasks", nargs="*", help=f"tasks (default: all; --quick: {' '.join(QUICK_TASKS)})")
    p.add_argument("--setting", dest="settings", action="append", default=[], metavar="PRESET[:K=V,...]",
                   help="a setting to run instead of the built-in sweep, e.g. credit_decoding:select.threshold=0.8 (repeatable)")
    p.add_argument("--n", type=int, help="test examples per task (default 200; --quick 32)")
    p.add_argument("--batch-size", type=int, default=64)
    add_blocks_argument(p)
    p.add_argument("--quick", action="store_true", help="3 tasks, 6 settings, n=32: under 2 minutes")
    p.add_argument("--overhead", action="store_true", help="only measure framework vs bare-loop decode time")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots and trace figures")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model's network first (inductor; the first decodes pay the compilation)")
    p.add_argument("--out", default="bench-results", help="output directory (bench.json, bench.md, PNGs)")
    scaling = p.add_argument_group("scaling (with --scaling: a synthetic model, no tasks)")
    scaling.add_argument("--scaling", action="store_true",
                         help="measure the loop's time per step and memory against gen_length with a synthetic "
                              "model whose forward costs ~nothing; writes scaling.json, scaling.md, scaling.png")
    scaling.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192], metavar="N",
                         help="gen_length values (multiples of 32; default 256 ... 8192)")
    scaling.add_argument("--vocab", type=int, default=8192, help="the synthetic model's vocabulary (default 8192)")
    scaling.add_argument("--batches", type=int, nargs="+", default=[1], metavar="B", help="batch sizes (default 1)")
    scaling.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16"], default=["float32", "bfloat16"])
    scaling.add_argument("--strategies", nargs="+", metavar="PRESET", help="presets (default: all)")
    scaling.add_argument("--dinfer-lengths", type=int, nargs="*", default=[256, 1024], metavar="N",
                         help="credit_decoding vs dInfer's credit loop at LLaDA's vocabulary (126464), batch 1, "
                              "both dtypes, at these lengths (none: skip)")
    add_credit_noise_arguments(p)
    p.add_argument("--report", metavar="PAGE.md",
                   help="also measure the framework overhead and write the full benchmarks page "
                        "(docs/benchmarks.md: verdicts on CreditDecoding's claims, tables, plots from --out)")


def run_bench(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    if args.scaling:
        return run_scaling_bench(args, out_dir)
    if args.credit_noise:
        return run_credit_noise(args, out_dir)
    if args.overhead:
        if model_options(args):
            raise ConfigError("--overhead times the loop on the model as it is: drop --logit-temperature, "
                              "--logit-noise and --kv-cache (the bare loop has none of them)")
        check_writable_dir(out_dir, "--out")
        model, tokenizer = model_from_args(args, decodes_tasks="bench --overhead")
        results = measure_overhead(model, tokenizer)
        (out_dir / "overhead.json").write_text(json.dumps(results, indent=2))
        (out_dir / "overhead.md").write_text("\n".join(overhead_table(results)) + "\n")
        print("\n".join(overhead_table(results)))
        print(f"wrote {out_dir / 'overhead.json'} and {out_dir / 'overhead.md'}")
        return 0
    settings = parse_settings(args.settings) if args.settings else SWEEPS["quick" if args.quick else "full"]
    tasks = args.tasks or (QUICK_TASKS if args.quick else list(TASKS))
    n = args.n if args.n is not None else (32 if args.quick else 200)
    check_example_count(n)
    check_batch_size(args.batch_size)
    validate(settings, tasks, args.blocks)  # before loading anything
    check_writable_dir(out_dir, "--out")  # before the run, not after it
    if args.report:
        check_writable_file(args.report, "--report")
    model, tokenizer = model_from_args(args, decodes_tasks="bench")
    if args.compile:
        model = compile_model(model)
    meta = {"model": args.model, "quick": args.quick, **placement_record(model, args), "blocks": args.blocks,
            "compiled": args.compile, **model_options(args)}
    start = time.time()
    payload = None
    with sigterm_as_interrupt():
        try:
            payload = run(model, tokenizer, settings, tasks, n, out_dir, batch_size=args.batch_size, meta=meta,
                          blocks=args.blocks)
            payload["claims"] = claims(payload["results"])
            if not args.no_plots:
                payload["plots"] = make_plots(payload, model, tokenizer, out_dir,
                                              task="latin_square" if "latin_square" in tasks else tasks[0],
                                              n=min(n, 64))
            if args.report:
                payload["overhead"] = measure_overhead(model, tokenizer)
        except KeyboardInterrupt:
            if payload is not None:  # stopped after the sweep (plots, overhead): the results are whole
                payload["interrupted"] = True
                write_partial(out_dir, payload)
            print(f"interrupted: finished results kept in {out_dir / PARTIAL_NAME} (marked \"interrupted\"); "
                  f"{out_dir / 'bench.json'} is unchanged")
            raise
    payload["meta"]["seconds"] = round(time.time() - start, 1)
    results_path = write_results(out_dir, payload)
    (out_dir / "bench.md").write_text(markdown(payload))
    if args.report:
        write_report(payload, Path(args.report), out_dir)
    print(markdown(payload))
    print(json.dumps(payload["claims"], indent=2))
    written = [str(results_path), str(out_dir / "bench.md"), *payload.get("plots", {}).values()]
    print(f"wrote {', '.join(written)}" + (f" and {args.report}" if args.report else ""))
    return 0


def run_scaling_bench(args: argparse.Namespace, out_dir: Path) -> int:
    import dllm_decoding as dd

    strategies = args.strategies or dd.list_strategies()
    for name in strategies:
        dd.load_strategy(name)  # unknown names fail before any work
    bad = [g for g in [*args.lengths, *args.dinfer_lengths] if g < 32 or g % 32]
    if bad:
        raise ConfigError(f"--lengths / --dinfer-lengths {bad[0]}: use multiples of the block length 32")
    if args.vocab < 2 or any(b < 1 for b in args.batches):
        raise ConfigError("--vocab must be >= 2 and every --batches value >= 1")
    check_writable_dir(out_dir, "--out")
    dinfer = [{"gen_length": g, "dtype": d, "repeats": 7} for d in args.dtypes for g in args.dinfer_lengths]
    with sigterm_as_interrupt():
        payload = run_scaling(strategies, args.lengths, args.batches, args.dtypes, args.vocab, dinfer)
    (out_dir / "scaling.json").write_text(json.dumps(payload, indent=1))
    (out_dir / "scaling.md").write_text(scaling_markdown(payload))
    plot_scaling(payload, out_dir / "scaling.png")
    print(scaling_markdown(payload))
    print(f"wrote {out_dir / 'scaling.json'}, {out_dir / 'scaling.md'} and {out_dir / 'scaling.png'}")
    return 0
