"""FFN bias + GeLU: ours vs eager PyTorch vs torch.compile, alone and behind its GEMM.

Cases (the same expression for every implementation):

* ``bias_gelu``: ``GeLU_erf(x + b)`` on ``x`` [T, F]; GB/s counts the [T, F] tensors the
  fused op has to move, the same for every implementation: forward reads x and writes y
  (2 T F), forward+backward adds reading dy and x and writing dx (5 T F). The ``copy`` row
  (``x.clone()``, read + write) is the bandwidth ceiling.
* ``linear_bias_gelu``: the whole FFN expansion ``GeLU_erf(a W^T + b)`` from ``a`` [T, d]:
  ours is ``F.linear`` without bias, then the kernel (what ``Intermediate`` runs); eager is
  ``F.gelu(F.linear(a, W, b))``; torch.compile may fuse the bias and GeLU into the GEMM's
  epilogue, which is the question this case answers. TFLOP/s counts the GEMM FLOPs
  (2 T d F forward, 6 T d F forward+backward).

Shapes (GPU, bf16): T = 16384 (BERT-base, 32 x 512 tokens) with (d, F) = (768, 3072) and
(1024, 4096) (large). ``smoke=True`` runs one tiny shape on CPU in fp32 through the Triton
interpreter with torch.compile's ``aot_eager`` backend: it checks that the suite runs, not
speed. ``python -m benchmarks.bench_bias_gelu [--smoke] [--csv PATH]`` prints the rows.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F

from benchmarks.common import Result, bench_ms, interpret_without_cuda, kernel_module, suite_main

interpret_without_cuda()

SUITE = "bias_gelu"
SHAPES = [(16384, 768, 3072), (16384, 1024, 4096)]  # T, d, F
SMOKE_SHAPES = [(64, 32, 96)]


def bias_gelu_eager(x, bias):
    return F.gelu(x + bias, approximate="none")


def linear_bias_gelu_eager(a, weight, bias):
    return F.gelu(F.linear(a, weight, bias), approximate="none")


def _measure(rows: List[Result], case: str, impl: str, fn: Callable, inputs: Sequence[torch.Tensor],
             metric: str, amount_fwd: float, amount_fwd_bwd: float, smoke: bool, extra: str = "") -> None:
    """Time ``fn(*inputs)`` alone (no autograd) and with its backward; ``amount_*`` are bytes
    (GB/s) or FLOPs (TFLOP/s) per call. Appends two Result rows."""
    reps = 1 if smoke else 3
    scale = 1e6 if metric == "GB/s" else 1e9  # amount / ms -> GB/s or TFLOP/s
    with torch.no_grad():
        ms = bench_ms(lambda: fn(*inputs), smoke=smoke, reps=reps)
    rows.append(Result(SUITE, case, impl, "fwd", ms, metric, amount_fwd / ms / scale, extra))
    leaves = [t.detach().requires_grad_() for t in inputs]
    grad_out = torch.randn_like(fn(*leaves))
    ms = bench_ms(lambda: torch.autograd.grad(fn(*leaves), leaves, grad_out), smoke=smoke, reps=reps)
    rows.append(Result(SUITE, case, impl, "fwd+bwd", ms, metric, amount_fwd_bwd / ms / scale, extra))


def run(smoke: bool = False) -> List[Result]:
    """All rows: see the module docstring for cases, shapes and what the metrics count."""
    kernel = kernel_module("bias_gelu")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    compile_backend = "aot_eager" if smoke else "inductor"
    compile_note = f"torch.compile backend={compile_backend}"
    generator = torch.Generator().manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator) * scale).to(device=device, dtype=dtype)

    def ours_linear_bias_gelu(a, weight, bias):
        return kernel.bias_gelu(F.linear(a, weight), bias)

    rows: List[Result] = []
    for n_tokens, d, n_cols in (SMOKE_SHAPES if smoke else SHAPES):
        x, bias = randn(n_tokens, n_cols), randn(n_cols, scale=0.1)
        tensor_bytes = x.numel() * x.element_size()
        shape = f"T{n_tokens}-F{n_cols}"
        ms = bench_ms(lambda: x.clone(), smoke=smoke, reps=1 if smoke else 3)
        rows.append(Result(SUITE, shape, "copy", "fwd", ms, "GB/s", 2 * tensor_bytes / ms / 1e6,
                           "x.clone(): the bandwidth ceiling"))
        compiled = torch.compile(bias_gelu_eager, backend=compile_backend, dynamic=False)
        for impl, fn, extra in (("ours", kernel.bias_gelu, ""), ("eager", bias_gelu_eager, ""),
                                ("torch.compile", compiled, compile_note)):
            _measure(rows, f"bias_gelu-{shape}", impl, fn, [x, bias], "GB/s", 2 * tensor_bytes,
                     5 * tensor_bytes, smoke, extra)

        a, weight = randn(n_tokens, d), randn(n_cols, d, scale=d ** -0.5)
        flops = 2.0 * n_tokens * d * n_cols
        compiled = torch.compile(linear_bias_gelu_eager, backend=compile_backend, dynamic=False)
        for impl, fn, extra in (("ours", ours_linear_bias_gelu, "F.linear, then the kernel"),
                                ("eager", linear_bias_gelu_eager, ""), ("torch.compile", compiled, compile_note)):
            _measure(rows, f"linear_bias_gelu-{shape}-d{d}", impl, fn, [a, weight, bias], "TFLOP/s", flops,
                     3 * flops, smoke, extra)
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    suite_main(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
