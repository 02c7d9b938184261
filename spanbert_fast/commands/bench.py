"""``spanbert-fast bench``: run the benchmark suites of a source checkout (``benchmarks/``).

The suites live in the repository's top-level ``benchmarks/`` folder, which is not part of the
installed package (it compares against transformers and other baselines, and its modules import
each other as ``benchmarks.<module>``). The command finds that folder, in order: ``--bench-dir``,
``$SPANBERT_FAST_BENCH_DIR``, next to the ``spanbert_fast`` package (an editable install or a
source tree), ``./benchmarks``; puts its parent first on ``sys.path`` and hands over to
``benchmarks.runner``. From a wheel install without a checkout it says so and exits with 2.
"""
from __future__ import annotations

import datetime
import importlib
import os
import sys
from pathlib import Path
from typing import Optional

ENV_BENCH_DIR = "SPANBERT_FAST_BENCH_DIR"


def find_benchmarks_dir(explicit: Optional[str] = None) -> Path:
    """The ``benchmarks/`` folder holding ``runner.py``; ``FileNotFoundError`` naming where it looked."""
    import spanbert_fast

    candidates = []
    if explicit:
        candidates.append(Path(explicit))
    if os.environ.get(ENV_BENCH_DIR):
        candidates.append(Path(os.environ[ENV_BENCH_DIR]))
    candidates.append(Path(spanbert_fast.__file__).resolve().parent.parent / "benchmarks")
    candidates.append(Path.cwd() / "benchmarks")
    for candidate in candidates:
        if candidate.name == "benchmarks" and (candidate / "runner.py").is_file():
            return candidate.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"no benchmarks/ folder with runner.py found (looked in: {looked}); the suites ship with the "
        f"source checkout, not the wheel: run from a clone (pip install -e .) or pass --bench-dir / "
        f"set {ENV_BENCH_DIR} to the checkout's benchmarks/ folder"
    )


def load_runner(bench_dir: Path):
    """Import ``benchmarks.runner`` from ``bench_dir``, refusing another ``benchmarks`` package."""
    root = str(bench_dir.parent)
    if sys.path[:1] != [root]:
        sys.path.insert(0, root)
    package = importlib.import_module("benchmarks")
    found = Path(package.__file__).resolve().parent
    if found != bench_dir:
        raise ImportError(f"'benchmarks' resolves to {found}, not {bench_dir}: another package of that name "
                          "shadows the suites (uninstall it or run from the checkout)")
    return importlib.import_module("benchmarks.runner")


def run(args) -> int:
    import torch

    cuda = torch.cuda.is_available()
    if not args.smoke and not cuda:
        print("spanbert-fast bench: full runs need a CUDA GPU (the suites time bf16 kernels); "
              "use --smoke to check that the suites run on CPU", file=sys.stderr)
        return 2
    if not cuda and "triton" not in sys.modules:
        # Smoke runs of the kernel suites on CPU go through the Triton interpreter, which must
        # be switched on before triton is first imported.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        bench_dir = find_benchmarks_dir(args.bench_dir)
        runner = load_runner(bench_dir)
    except (FileNotFoundError, ImportError) as err:
        print(f"spanbert-fast bench: {err}", file=sys.stderr)
        return 2
    suites = runner.select_suites(args.suite, runner.discover(bench_dir))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_dir = args.out or os.path.join("out", "bench", stamp + ("-smoke" if args.smoke else ""))
    if args.no_results:
        results_path = None
    elif args.results:
        results_path = args.results
    else:  # only full GPU runs go into the shared results file by default
        results_path = None if (args.smoke or not cuda) else str(runner.RESULTS_MD)
    step_options = {}
    if args.step_preset:
        step_options["presets"] = args.step_preset
    if args.step_variant:
        step_options["variants"] = args.step_variant
    if args.no_compile:
        step_options["with_compile"] = False
    code, _ = runner.run_benchmarks(suites, args.smoke, out_dir, results_path=results_path,
                                    suite_options={"step": step_options} if step_options else None,
                                    command=_command_line(args))
    return code


def _command_line(args) -> str:
    """The command that reproduces this run (for the Markdown section)."""
    parts = ["spanbert-fast bench", f"--suite {args.suite}"]
    parts += ["--smoke"] if args.smoke else []
    parts += [f"--step-preset {p}" for p in args.step_preset or []]
    parts += [f"--step-variant {v}" for v in args.step_variant or []]
    parts += ["--no-compile"] if args.no_compile else []
    return " ".join(parts)


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
