"""Where a training step's GPU time goes: torch.profiler over warm steps, kernels ranked.

``python -m benchmarks.profile_step [--preset base] [--variant dense] [--impl ours] [--cuda-graph]
[--steps 5] [--out DIR] [--smoke]`` builds the step of :mod:`benchmarks.bench_step` (same
batches, models and optimizer), runs a few warm-up steps, profiles ``--steps`` more and writes
to ``--out``:

* ``kernels.csv``: one row per kernel name: calls, total and mean µs per step, share of the
  step's GPU time, and a category (gemm, attention, norm, loss, optimizer, copy/index,
  elementwise, other) for reading a step's time budget off a real run;
* ``summary.md``: time per category and the top kernels, with the device and versions;
* ``trace.json.gz``: the Chrome trace (open in Perfetto or ``chrome://tracing``).

``--smoke`` (CPU, tiny config, what CI runs): no CUDA kernels exist, so the rows are the CPU
ops instead; it checks that the script runs and writes its files, not where time goes.

``--eager-ops torch|triton`` (CPU, tiny config): lists each elementwise op (PyTorch's
``pointwise`` tag, plus LayerNorm and dropout) that still runs eagerly in the encoder layers,
forward and backward, on that backend (:func:`eager_encoder_ops`); on Triton the GeLU, the
bias-adds and the LayerNorms are inside the fused kernels, so none is left.
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


# --------------------------------------------------------------------------- eager elementwise ops
ENCODER_SCOPE = "encoder_layer"  # record_function range around each EncoderLayer forward
_NORM_OR_DROPOUT = re.compile(r"layer_norm|dropout|bernoulli")


def _is_pointwise(op_name: str) -> bool:
    """``aten::NAME`` carries PyTorch's ``pointwise`` tag (add, mul, gelu, where, ...)."""
    namespace, _, name = op_name.partition("::")
    packet = getattr(torch.ops.aten, name, None) if namespace == "aten" else None
    return packet is not None and any(torch.Tag.pointwise in getattr(packet, o).tags for o in packet.overloads())


def elementwise_kind(name: str, input_shapes) -> Optional[str]:
    """What an eager op is, or None when it is not elementwise: ``gelu``, ``layernorm``,
    ``dropout``, ``bias-add`` (an add of a [..., F] tensor and an [F] vector) or ``pointwise``."""
    lowered = name.lower()
    if "gelu" in lowered and _is_pointwise(name):
        return "gelu"
    if _NORM_OR_DROPOUT.search(lowered) and name.startswith("aten::"):
        return "layernorm" if "layer_norm" in lowered else "dropout"
    if not _is_pointwise(name):
        return None
    shapes = [tuple(s) for s in (input_shapes or []) if isinstance(s, (list, tuple)) and len(s) > 0]
    if name in ("aten::add", "aten::add_") and len(shapes) >= 2:
        vectors = [s for s in shapes[:2] if len(s) == 1]
        matrices = [s for s in shapes[:2] if len(s) >= 2]
        if vectors and matrices and vectors[0][0] == matrices[0][-1]:
            return "bias-add"
    return "pointwise"


def eager_encoder_ops(backend: str, steps: int = 1) -> List[Dict[str, object]]:
    """Each elementwise op that runs eagerly in the encoder layers of a training step (tiny
    config, CPU, torch profiler over CPU ops): forward ops inside an ``EncoderLayer``, and the
    backward of those ops (matched by autograd sequence number). Ops inside our custom ops
    (``spanbert_fast::*``, the Triton kernels) are not eager and are left out. ``backend``:
    ``"torch"`` or ``"triton"`` (CPU: needs ``TRITON_INTERPRET=1`` set before triton is imported).
    Rows: op, kind (see :func:`elementwise_kind`), calls per step, where (forward/backward)."""
    from spanbert_fast import SpanBertConfig
    from spanbert_fast.model import EncoderLayer

    config = SpanBertConfig(**{**bench_step.SMOKE_CONFIG, "num_attention_heads": 1})  # head dim 32: kernel-ready
    lengths = bench_step.case_lengths("pad", bench_step.SMOKE_SHAPE["batch"], bench_step.SMOKE_SHAPE["seq_len"])
    batch = bench_step.make_batch(lengths, config.vocab_size)
    torch.manual_seed(0)
    model = bench_step.build_ours(config, torch.device("cpu"), backend)
    ranges = []
    hooks = []
    for module in model.modules():
        if isinstance(module, EncoderLayer):
            def enter(_module, _inputs):
                ranges.append(torch.autograd.profiler.record_function(ENCODER_SCOPE))
                ranges[-1].__enter__()

            def leave(_module, _inputs, _output):
                ranges.pop().__exit__(None, None, None)

            hooks += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    step = bench_step.make_step(model, bench_step._ours_loss, batch.ours, None)
    step()  # warm-up: kernels compiled (or interpreted once), autotuners settled
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profiler:
        for _ in range(steps):
            step()
    for hook in hooks:
        hook.remove()

    events = list(profiler.events())

    def ancestors(event):
        parent = event.cpu_parent
        while parent is not None:
            yield parent
            parent = parent.cpu_parent

    def inside_custom_op(event):
        return any(a.name.startswith("spanbert_fast::") for a in ancestors(event))

    forward = [e for e in events if any(a.name == ENCODER_SCOPE for a in ancestors(e))]
    sequence_numbers = {e.sequence_nr for e in forward if getattr(e, "sequence_nr", -1) >= 0}
    backward_roots = [e for e in events if e.name.startswith("autograd::engine::evaluate_function")
                      and getattr(e, "sequence_nr", -1) in sequence_numbers]
    backward_ids = {id(e) for e in backward_roots}
    backward = [e for e in events if any(id(a) in backward_ids for a in ancestors(e))]

    counts: Dict[tuple, int] = collections.Counter()
    for where, selected in (("forward", forward), ("backward", backward)):
        for event in selected:
            kind = elementwise_kind(event.name, getattr(event, "input_shapes", None))
            if kind is None or inside_custom_op(event):
                continue
            if any(elementwise_kind(a.name, getattr(a, "input_shapes", None)) for a in ancestors(event)):
                continue  # counted as the outer op (e.g. layer_norm, not its decomposition)
            counts[(event.name, kind, where)] += 1
    return [dict(op=name, kind=kind, calls_per_step=calls / steps, where=where)
            for (name, kind, where), calls in sorted(counts.items())]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=bench_step.PRESETS, default="base")
    parser.add_argument("--variant", choices=bench_step.VARIANTS, default="dense")
    parser.add_argument("--impl", choices=("ours", "hf"), default="ours")
    parser.add_argument("--cuda-graph", action="store_true", help="profile the captured step (ours, CUDA)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default="out/profile")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny config: checks the script runs")
    parser.add_argument("--eager-ops", choices=("torch", "triton"), default=None,
                        help="list the elementwise ops still eager in the encoder on this backend (CPU, "
                             "tiny config; triton needs TRITON_INTERPRET=1) and exit")
    args = parser.parse_args(argv)
    if args.eager_ops:
        for row in eager_encoder_ops(args.eager_ops):
            print(f"{row['op']:40} {row['kind']:10} {row['where']:9} {row['calls_per_step']:.0f} / step")
        return
    rows = profile(args.preset, args.variant, args.impl, args.cuda_graph, args.steps, out_dir=args.out,
                   smoke=args.smoke)
    with open(os.path.join(args.out, "summary.md")) as f:
        print(f.read())
    print(f"{len(rows)} kernels; files in {args.out}")


if __name__ == "__main__":
    main()
