"""Where a training step's GPU time goes: torch.profiler over warm steps, kernels ranked.

``python -m benchmarks.profile_step [--preset base] [--variant dense] [--impl ours] [--cuda-graph]
[--steps 5] [--out DIR] [--smoke]`` builds the step of :mod:`benchmarks.bench_step` (same
batches, models and optimizer), runs a few warm-up steps, profiles ``--steps`` more and writes
to ``--out``:

* ``kernels.csv``: one row per kernel name: calls, total and mean µs per step, share of the
  step's GPU time, and a category (gemm, attention, norm, loss, optimizer, copy/index,
  elementwise, other) for reading the budget of ``../shared/PERF.md`` off a real run;
* ``summary.md``: time per category and the top kernels, with the device and versions;
* ``trace.json.gz``: the Chrome trace (open in Perfetto or ``chrome://tracing``).

``--smoke`` (CPU, tiny config, what CI runs): no CUDA kernels exist, so the rows are the CPU
ops instead; it checks that the script runs and writes its files, not where time goes.
"""
from __future__ import annotations

import argparse
import collections
import csv
import os
import re
from typing import Dict, List, Optional, Sequence

import torch

from benchmarks import bench_step
from benchmarks.common import environment

# First match wins; names are lower-cased kernel (or, on CPU, op) names.
CATEGORIES = (
    # our loss kernels: _forward_stats_kernel, _dlogits_kernel
    ("loss", r"masked_lm_loss|forward_stats|dlogits|cross_entropy|log_?softmax|nll_?loss"),
    ("attention", r"_attention_|flash|fmha|attention|sdpa|softmax"),
    ("norm", r"layernorm|layer_norm|gelu_layernorm|dropout_add|sum_partials"),
    ("optimizer", r"adam|multi_tensor|foreach|clip|norm_kernel"),
    ("gemm", r"gemm|cutlass|xmma|cublas|nvjet|matmul|sm90_|sm80_|addmm|\bmm\b|linear"),
    ("copy/index", r"index|gather|scatter|copy|memcpy|memset|cat|embedding|fill|unique|sort"),
    ("elementwise", r"elementwise|vectorized|reduce|gelu|dropout|add|mul"),
)


def category(name: str) -> str:
    lowered = name.lower()
    for label, pattern in CATEGORIES:
        if re.search(pattern, lowered):
            return label
    return "other"


def kernel_rows(profiler, steps: int, cuda: bool) -> List[Dict[str, object]]:
    """Per-name totals of the profiled steps: CUDA kernels on GPU, CPU ops otherwise."""
    totals: Dict[str, List[float]] = collections.defaultdict(lambda: [0, 0.0])
    for event in profiler.events():
        on_device = getattr(event, "device_type", None) == torch.autograd.DeviceType.CUDA
        if cuda != on_device or getattr(event, "is_user_annotation", False):
            continue  # user annotations (e.g. "Optimizer.step#AdamW.step") span kernels: not one
        if not cuda and event.cpu_parent is not None:  # CPU: top-level ops only, not their children
            continue
        totals[event.name][0] += 1
        totals[event.name][1] += event.time_range.elapsed_us()  # a kernel's run, or a top-level op's
    step_us = sum(us for _, us in totals.values()) or 1.0
    rows = [
        dict(kernel=name, category=category(name), calls_per_step=calls / steps, us_per_step=us / steps,
             us_per_call=us / max(calls, 1), share_pct=100.0 * us / step_us)
        for name, (calls, us) in totals.items()
    ]
    return sorted(rows, key=lambda r: -r["us_per_step"])


def write_outputs(rows: List[Dict[str, object]], out_dir: str, title: str, top: int = 25) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "kernels.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["kernel"])
        writer.writeheader()
        writer.writerows(rows)
    by_category: Dict[str, float] = collections.Counter()
    for row in rows:
        by_category[row["category"]] += row["us_per_step"]
    total = sum(by_category.values()) or 1.0
    env = environment()
    lines = [f"# {title}", "", ", ".join(f"{k} {v}" for k, v in env.items()), "",
             f"GPU time per step: {total / 1000:.2f} ms (sum of kernel times; overlap not removed)", "",
             "| category | ms / step | share |", "|---|---:|---:|"]
    lines += [f"| {name} | {us / 1000:.3f} | {100 * us / total:.1f} % |" for name, us in by_category.most_common()]
    lines += ["", f"Top {top} kernels:", "", "| kernel | category | calls / step | µs / step | share |",
              "|---|---|---:|---:|---:|"]
    lines += [f"| `{r['kernel'][:90]}` | {r['category']} | {r['calls_per_step']:.0f} | {r['us_per_step']:.1f} | "
              f"{r['share_pct']:.1f} % |" for r in rows[:top]]
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def profile(preset: str = "base", variant: str = "dense", impl: str = "ours", cuda_graph: bool = False,
            steps: int = 5, warmup: int = 3, out_dir: str = "out/profile", smoke: bool = False) -> List[Dict]:
    """Profile ``steps`` warm steps of one (preset, variant, impl); write and return the rows."""
    from spanbert_fast import SpanBertConfig

    cuda = torch.cuda.is_available() and not smoke
    device = torch.device("cuda" if cuda else "cpu")
    if smoke:
        config, shape = SpanBertConfig(**bench_step.SMOKE_CONFIG), bench_step.SMOKE_SHAPE
    else:
        config, shape = SpanBertConfig.preset(preset), bench_step.FULL_SHAPE
    lengths = bench_step.case_lengths(variant, shape["batch"], shape["seq_len"])
    batch = bench_step.make_batch(lengths, config.vocab_size).to(device)
    torch.manual_seed(0)
    if impl == "ours":
        model = bench_step.build_ours(config, device, "auto" if cuda else "torch")
        step = bench_step.make_step(model, bench_step._ours_loss, batch.ours, None, cuda_graph and cuda)
    else:
        model = bench_step.build_hf(config, device)
        step = bench_step.make_step(model, bench_step._hf_loss, batch.hf, None)
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    os.makedirs(out_dir, exist_ok=True)
    profiler.export_chrome_trace(os.path.join(out_dir, "trace.json.gz"))  # gzipped: a GPU trace is large
    rows = kernel_rows(profiler, steps, cuda)
    label = f"{impl}{'+cudagraph' if cuda_graph and cuda else ''}"
    title = f"Step profile: {label}, {'tiny smoke' if smoke else preset}, {variant}, B{shape['batch']} S{shape['seq_len']}"
    write_outputs(rows, out_dir, title)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=bench_step.PRESETS, default="base")
    parser.add_argument("--variant", choices=bench_step.VARIANTS, default="dense")
    parser.add_argument("--impl", choices=("ours", "hf"), default="ours")
    parser.add_argument("--cuda-graph", action="store_true", help="profile the captured step (ours, CUDA)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default="out/profile")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny config: checks the script runs")
    args = parser.parse_args(argv)
    rows = profile(args.preset, args.variant, args.impl, args.cuda_graph, args.steps, out_dir=args.out,
                   smoke=args.smoke)
    with open(os.path.join(args.out, "summary.md")) as f:
        print(f.read())
    print(f"{len(rows)} kernels; files in {args.out}")


if __name__ == "__main__":
    main()
