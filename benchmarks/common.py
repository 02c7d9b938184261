"""What every benchmark suite shares: timing, environment facts, result rows, CSV.

Each suite module (``bench_<op>.py``) exposes ``run(smoke: bool) -> list[Result]``;
it measures our op and its baselines *in the same process* so ratios are fair.
On CUDA the time is ``triton.testing.do_bench``'s median (with warm-up); on CPU
(smoke mode, for CI) a plain median of a few wall-clock runs: it checks that the
suite runs and writes its files, it says nothing about speed.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import importlib
import os
import platform
import statistics
import sys
import time
from typing import Callable, List, Optional, Sequence

import torch

from spanbert_fast.io import atomic_write


@dataclasses.dataclass
class Result:
    suite: str  # e.g. "attention"
    case: str  # human-readable shape, e.g. "B32-H12-S512-D64"
    impl: str  # "ours", "sdpa", "eager", "torch.compile", ...
    mode: str  # "fwd" or "fwd+bwd"
    ms: float  # median milliseconds
    metric: str  # "TFLOP/s", "GB/s", "tokens/s", "MB"
    value: float  # the metric's value
    extra: str = ""  # free text: peak memory, notes


def environment() -> dict:
    """Facts that make a number reproducible: device, versions, date."""
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = "not installed"
    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda or "none",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def bench_ms(fn: Callable[[], object], smoke: bool = False, reps: int = 3) -> float:
    """Median milliseconds of ``fn()``: do_bench on CUDA, a few wall-clock runs on CPU."""
    if torch.cuda.is_available() and not smoke:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()  # warm-up (compilation, caches)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_memory_mb(fn: Callable[[], object]) -> Optional[float]:
    """Extra peak CUDA memory of one ``fn()`` call above what was allocated before, in MB."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 1e6


ENV_FIELDS = ["device", "torch", "triton", "cuda", "date"]  # the keys of environment()
CSV_FIELDS = [f.name for f in dataclasses.fields(Result)] + ENV_FIELDS


def write_csv(results: List[Result], path: str) -> str:
    """Write ``results`` with the environment columns to ``path`` atomically."""
    env = environment()
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in results:
            writer.writerow({**dataclasses.asdict(r), **env})
    return path


# --------------------------------------------------------------------------- shared by the op suites
def interpret_without_cuda() -> None:
    """Without CUDA the kernels can only run under the Triton interpreter, which Triton reads
    when it is first imported: switch it on now unless triton is already loaded."""
    if not torch.cuda.is_available() and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")


def kernel_module(name: str):
    """``spanbert_fast.kernels.<name>``; on a machine without CUDA it needs the interpreter."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        raise RuntimeError(f"benchmarking kernels.{name} on CPU needs TRITON_INTERPRET=1 set before triton is imported")
    return importlib.import_module(f"spanbert_fast.kernels.{name}")


def print_rows(rows: Sequence[Result]) -> None:
    """One line per result: case, impl, mode, ms, value and metric, notes."""
    print(f"{'case':36} {'impl':18} {'mode':8} {'ms':>10} {'value':>11} {'metric':10} extra")
    for r in rows:
        print(f"{r.case:36} {r.impl:18} {r.mode:8} {r.ms:10.3f} {r.value:11.4g} {r.metric:10} {r.extra}")


def suite_main(run: Callable[..., List[Result]], description: str, argv=None, add_arguments=None,
               run_kwargs=None) -> List[Result]:
    """``python -m benchmarks.bench_<suite> [--smoke] [--csv FILE]``: run, print, optionally save.

    ``add_arguments(parser)`` adds suite options; ``run_kwargs(args)`` turns them into ``run`` keywords.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help="tiny CPU shapes: checks the suite runs, not speed")
    parser.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    rows = run(smoke=args.smoke, **(run_kwargs(args) if run_kwargs else {}))
    print_rows(rows)
    if args.csv:
        print("wrote", write_csv(rows, args.csv))
    return rows
