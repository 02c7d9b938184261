"""``spanbert-fast bench``: run the benchmark suites of a source checkout (``benchmarks/``).

How the command finds the suites, and how it runs them: :mod:`spanbert_fast.benchmark_suites`.
From a wheel install without a checkout it says so and exits with 2.
"""
from __future__ import annotations

import sys

from spanbert_fast.benchmark_suites import (  # noqa: F401  (find_benchmarks_dir: re-exported, its old home)
    ENV_BENCH_DIR,
    BenchmarkSetupError,
    find_benchmarks_dir,
    run_benchmark_suites,
)


def run(args) -> int:
    try:
        return run_benchmark_suites(
            args.suite, smoke=args.smoke, out_dir=args.out, results=args.results, write_results=not args.no_results,
            step_presets=args.step_preset, step_variants=args.step_variant, with_compile=not args.no_compile,
            bench_dir=args.bench_dir)
    except BenchmarkSetupError as err:
        print(f"spanbert-fast bench: {err}", file=sys.stderr)
        return 2


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="run the benchmark suites (ours vs baselines): table, CSV, PNG plots",
        description="Run the benchmark suites of benchmarks/ and write results.csv, one PNG per suite and "
                    "results.md to --out; full CUDA runs also append to benchmarks/RESULTS.md.",
    )
    parser.add_argument("--suite", default="all",
                        help="ops | step | all, or suite names (attention, norms, masked_lm_loss, step), "
                             "comma-separated (default: all)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on CPU: checks that the suites run (not speed); appends to no "
                             "results file unless --results names one")
    parser.add_argument("--out", default=None, help="output folder (default: out/bench/<UTC time>)")
    parser.add_argument("--results", default=None,
                        help="append the Markdown section to this file (default: benchmarks/RESULTS.md, "
                             "full CUDA runs only)")
    parser.add_argument("--no-results", action="store_true", help="append to no Markdown results file")
    parser.add_argument("--step-preset", action="append", choices=("base", "large"),
                        help="step suite: model size, repeatable (default: base and large)")
    parser.add_argument("--step-variant", action="append", choices=("dense", "pad"),
                        help="step suite: full 512-token rows or padded rows (lengths 128..512), repeatable "
                             "(default: both)")
    parser.add_argument("--no-compile", action="store_true", help="step suite: skip the torch.compile rows")
    parser.add_argument("--bench-dir", default=None,
                        help=f"the checkout's benchmarks/ folder (default: ${ENV_BENCH_DIR}, next to the "
                             "package, ./benchmarks)")
    parser.set_defaults(func=run)
