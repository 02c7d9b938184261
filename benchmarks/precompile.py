"""Compile every Triton binary the GPU session's stages will launch, in parallel, before they run.

``python -m benchmarks.precompile [--stages step,attention,masked_lm_loss,norms] [--list]
[--json PATH] [--processes N]``, on the GPU machine (``benchmarks/gpu_session.sh quick`` runs it
with ``TRITON_CACHE_DIR`` set). Without it the first launch of each kernel compiles every config
of its autotune list one after another (an attention config takes 5-9 s) inside the timed
stages; with it the stages find each binary in Triton's on-disk cache.

How it finds what to compile, with nothing listed by hand:

1. **Record.** Each stage's own code runs once (:data:`STAGES`: the same ``run`` calls the
   session makes) with Triton's launch replaced by the recorder of the offline-compile
   harness (``tests/kernels/sm90_compile.py``), ``triton.testing.do_bench`` replaced by one
   call and ``torch.compile`` by the eager function. The PyTorch parts run for real on the
   GPU (so pointers, strides and sizes specialise exactly as in the stage); our kernels are
   recorded, not run, so their outputs are uninitialised and no figure is meaningful.
2. **Plan.** Launches that specialise alike are one binary; an autotuned launch contributes
   every config its autotuner keeps after pruning (the autotuner will benchmark them all).
3. **Compile.** Forked workers, one per core, compile each binary through Triton's
   ``warmup`` path for the GPU's own target (a stand-in driver reporting it, so the workers
   never touch CUDA), writing Triton's cache: the cache key is the same as the stage's launch.

A recording or compile failure is reported and skipped: the stage then compiles that kernel
itself, slower but correct. ``--list`` prints the compile jobs and compiles nothing; on a
machine without a GPU, ``--source static`` records the BERT-shape scenarios of
:mod:`benchmarks.static_report` instead of the stages (what ``tests/test_bench_precompile``
checks) and targets sm_90.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from typing import Callable, Dict, List, Optional, Sequence


def _attention_run():
    """The attention stage: ``bench_attention.run`` (dropout 0 and 0.1, both backwards)."""
    from benchmarks import bench_attention

    return bench_attention.run()


def _step_run():
    from benchmarks import bench_step

    return bench_step.run(presets=["base"], variants=["dense", "pad"], with_compile=False)


def _suite_run(name: str) -> Callable[[], object]:
    def run():
        import importlib

        return importlib.import_module(f"benchmarks.bench_{name}").run()

    return run


# The session's stages, as benchmarks/gpu_session.sh quick runs them (keep the two in step).
STAGES: Dict[str, Callable[[], object]] = {
    "step": _step_run,
    "attention": _attention_run,
    "masked_lm_loss": _suite_run("masked_lm_loss"),
    "norms": _suite_run("norms"),
}


@contextlib.contextmanager
def stubbed_timing():
    """``do_bench`` runs its function once; ``torch.compile`` returns the function unchanged."""
    import torch
    import triton.testing

    def once(fn, *args, **kwargs):
        fn()
        return 1.0

    saved = triton.testing.do_bench, torch.compile
    triton.testing.do_bench = once
    torch.compile = lambda model=None, *args, **kwargs: model if model is not None else (lambda fn: fn)
    try:
        yield
    finally:
        triton.testing.do_bench, torch.compile = saved


def record(calls: Dict[str, Callable[[], object]], echo=print) -> tuple:
    """Run each call with launches recorded; ``(launches, {name: error})``. A call that raises is
    reported and the launches it recorded before are kept."""
    from benchmarks.static_report import _harness

    h = _harness()
    recorder = h.Recorder()
    recorder.install()
    errors = {}
    for name, call in calls.items():
        recorder.scenario = name
        before = len(recorder.launches)
        start = time.perf_counter()
        try:
            with stubbed_timing():
                call()
        except Exception as error:  # a stage that cannot be recorded compiles its kernels itself later
            errors[name] = f"{type(error).__name__}: {str(error)[:300]}"
            traceback.print_exc()
        echo(f"[precompile] recorded {name}: {len(recorder.launches) - before} launches "
             f"in {time.perf_counter() - start:.1f} s{' (FAILED: ' + errors[name] + ')' if name in errors else ''}")
    return recorder.launches, errors


def plan(launches) -> list:
    """The harness's compile jobs: one per distinct binary, every kept config of every launch."""
    from benchmarks.static_report import _harness

    return _harness().plan(launches, all_configs=True)


_JOBS: list = []  # read by the forked workers


def _compile_index(i: int) -> dict:
    from benchmarks.static_report import _harness

    h = _harness()
    job = _JOBS[i]
    start = time.perf_counter()
    try:
        compiled = job.kernel.warmup(*job.args, grid=(1,), **h._with_config(job.kwargs, job.configs[0]))
    except Exception as error:
        return dict(what=job.describe(), ok=False, error=h.explain(error)[:1000],
                    seconds=round(time.perf_counter() - start, 2))
    return dict(what=job.describe(), ok=True, shared=int(compiled.metadata.shared),
                seconds=round(time.perf_counter() - start, 2))


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def compile_jobs(jobs: list, target, processes: int) -> List[dict]:
    """Compile ``jobs`` for ``target`` in ``processes`` forked workers (the stand-in driver is set
    before the fork: the workers ask it, never CUDA)."""
    from triton.runtime.driver import driver

    from benchmarks.static_report import _harness

    driver.set_active(_harness().StandInDriver(target))
    _JOBS[:] = jobs
    processes = max(1, min(processes, len(jobs)))
    if processes == 1:
        return [_compile_index(i) for i in range(len(jobs))]
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return pool.map(_compile_index, range(len(jobs)), chunksize=1)


def gpu_target():
    """The target Triton compiles for on this machine's GPU."""
    from triton.runtime.driver import driver

    return driver.active.get_current_target()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    parser.add_argument("--source", choices=("stages", "static"), default="stages",
                        help="stages: record the session's stages (GPU); static: static_report's scenarios (CPU)")
    parser.add_argument("--processes", type=int, default=_cpus())
    parser.add_argument("--list", action="store_true", help="print the compile jobs, compile nothing")
    parser.add_argument("--json", default=None, help="write a report here (jobs, seconds, failures)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: kernels cannot be compiled under the interpreter")
    import torch

    start = time.perf_counter()
    if args.source == "stages":
        names = [s for s in args.stages.split(",") if s]
        unknown = [s for s in names if s not in STAGES]
        if unknown:
            parser.error(f"--stages: unknown {unknown}; choose from {list(STAGES)}")
        if not torch.cuda.is_available():
            print("precompile: --source stages needs a CUDA GPU (the stages run their PyTorch parts on it); "
                  "use --source static on CPU")
            return 2
        target = gpu_target()
        launches, errors = record({name: STAGES[name] for name in names})
    else:
        from benchmarks import static_report

        h = static_report._harness()
        from triton.runtime.driver import driver

        driver.set_active(h.StandInDriver())
        target = h.TARGET
        h._allow_cpu_tensors()
        launches, errors = record(static_report.scenarios(["base"], ["bf16"], [0.1]))
    jobs = plan(launches)
    recorded = time.perf_counter() - start
    if args.list:
        for job in jobs:
            print(job.describe())
        print(f"{len(launches)} launches -> {len(jobs)} compile jobs for {target}")
        return 0
    torch.set_num_threads(1)
    results = compile_jobs(jobs, target, args.processes)
    failed = [r for r in results if not r["ok"]]
    report = dict(target=str(target), launches=len(launches), jobs=len(jobs), processes=args.processes,
                  record_seconds=round(recorded, 1), seconds=round(time.perf_counter() - start, 1),
                  compile_cpu_seconds=round(sum(r["seconds"] for r in results), 1), record_errors=errors,
                  failed=failed, slowest=sorted(results, key=lambda r: -r["seconds"])[:10])
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, args.json)
    for r in failed:
        print(f"[precompile] FAILED {r['what']}: {r['error'].splitlines()[0]}")
    print(f"[precompile] {len(jobs) - len(failed)}/{len(jobs)} binaries for {target} in {report['seconds']} s "
          f"(recording {report['record_seconds']} s, {args.processes} processes)")
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
