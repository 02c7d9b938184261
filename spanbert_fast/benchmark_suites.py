"""The benchmark suites of a source checkout (``benchmarks/``), found and run (``spanbert-fast bench``).

The suites live in the repository's top-level ``benchmarks/`` folder, which is not part of the
installed package (it compares against transformers and other baselines, and its modules import
each other as ``benchmarks.<module>``). :func:`find_benchmarks_dir` finds that folder, in order:
``--bench-dir``, ``$SPANBERT_FAST_BENCH_DIR``, next to the ``spanbert_fast`` package (an editable
install or a source tree), ``./benchmarks``; :func:`load_runner` puts its parent first on
``sys.path`` and imports ``benchmarks.runner``; :func:`run_benchmark_suites` runs the chosen suites.
"""
from __future__ import annotations

import datetime
import importlib
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

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


class BenchmarkSetupError(RuntimeError):
    """The suites cannot run here: no checkout found, a shadowing ``benchmarks`` package, or a full
    run without a CUDA GPU."""


def run_benchmark_suites(suite: str = "all", *, smoke: bool = False, out_dir: Optional[str] = None,
                         results: Optional[str] = None, write_results: bool = True,
                         step_presets: Optional[Sequence[str]] = None, step_variants: Optional[Sequence[str]] = None,
                         with_compile: bool = True, bench_dir: Optional[str] = None) -> int:
    """Run the suites ``suite`` names (see ``benchmarks.runner.select_suites``); the runner's exit code.

    ``out_dir`` defaults to ``out/bench/<UTC time>[-smoke]``. The Markdown section goes to
    ``results``, else (``write_results``) to ``benchmarks/RESULTS.md`` for full CUDA runs only.
    ``step_presets`` / ``step_variants`` / ``with_compile`` go to the step suite. Raises
    :class:`BenchmarkSetupError` when the suites cannot run here.
    """
    import torch

    cuda = torch.cuda.is_available()
    if not smoke and not cuda:
        raise BenchmarkSetupError("full runs need a CUDA GPU (the suites time bf16 kernels); "
                                  "use --smoke to check that the suites run on CPU")
    if not cuda and "triton" not in sys.modules:
        # Smoke runs of the kernel suites on CPU go through the Triton interpreter, which must
        # be switched on before triton is first imported.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        found = find_benchmarks_dir(bench_dir)
        runner = load_runner(found)
    except (FileNotFoundError, ImportError) as err:
        raise BenchmarkSetupError(str(err)) from err
    suites = runner.select_suites(suite, runner.discover(found))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_dir = out_dir or os.path.join("out", "bench", stamp + ("-smoke" if smoke else ""))
    if not write_results:
        results_path = None
    elif results:
        results_path = results
    else:  # only full GPU runs go into the shared results file by default
        results_path = None if (smoke or not cuda) else str(runner.RESULTS_MD)
    step_options = {}
    if step_presets:
        step_options["presets"] = step_presets
    if step_variants:
        step_options["variants"] = step_variants
    if not with_compile:
        step_options["with_compile"] = False
    # The command that reproduces this run (for the Markdown section).
    command = " ".join(["spanbert-fast bench", f"--suite {suite}"] + (["--smoke"] if smoke else [])
                       + [f"--step-preset {p}" for p in step_presets or []]
                       + [f"--step-variant {v}" for v in step_variants or []]
                       + (["--no-compile"] if not with_compile else []))
    code, _ = runner.run_benchmarks(suites, smoke, out_dir, results_path=results_path,
                                    suite_options={"step": step_options} if step_options else None,
                                    command=command)
    return code
