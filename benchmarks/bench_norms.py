"""Fused normalisation ops: ours vs eager PyTorch vs torch.compile, forward and forward+backward, GB/s.

Ops (the same expression for every implementation):

* ``gelu_ln``: ``LayerNorm(GeLU_erf(x + bias))`` (MLM transform, SBO MLP);
* ``dropout_add_ln``: ``LayerNorm(dropout(x + bias, p=0.1) + residual)`` (every encoder layer).

GB/s counts the [N, d] tensors the fused op has to move, the same count for every
implementation (parameters and the 8 bytes a row of mean/rstd are left out), so the
figures compare as speed-ups and against the device-to-device copy ceiling (the
``copy`` row, ``x.clone()``: read + write):

===============  ===============================  ==============================================
op               forward                          forward + backward
===============  ===============================  ==============================================
gelu_ln          read x, write y (2 N d)          + read dy, x; write dx (5 N d)
dropout_add_ln   read x, residual; write y (3)    + read dy, x, residual; write dx, dres (8 N d)
===============  ===============================  ==============================================

Shapes (GPU, bf16): [16384, 768] (BERT-base, 32 x 512 tokens), [16384, 1024] (large)
and [2458, 768] (SBO MLP rows). ``smoke=True`` runs one tiny shape with torch.compile's
``aot_eager`` backend (no C++ build), on CPU in fp32 through the Triton interpreter
(this module sets ``TRITON_INTERPRET=1`` on import when there is no CUDA): it checks that
the suite runs, not speed. ``python -m benchmarks.bench_norms [--smoke] [--csv PATH]`` prints the rows.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F

from benchmarks.common import Result, bench_ms, interpret_without_cuda, kernel_module, suite_main

interpret_without_cuda()

SUITE = "norms"
SHAPES = [(16384, 768), (16384, 1024), (2458, 768)]
SMOKE_SHAPES = [(64, 96)]
DROPOUT_P = 0.1
SEED = 1234
EPS = 1e-12


def _kernel_modules():
    """(gelu_layernorm, dropout_add_layernorm) kernel modules."""
    return kernel_module("gelu_layernorm"), kernel_module("dropout_add_layernorm")


def gelu_ln_eager(x, bias, weight, ln_bias):
    return F.layer_norm(F.gelu(x + bias), (x.shape[-1],), weight, ln_bias, EPS)


def dropout_add_ln_eager(x, bias, residual, weight, ln_bias):
    h = F.dropout(x + bias, p=DROPOUT_P, training=True)
    return F.layer_norm(h + residual, (x.shape[-1],), weight, ln_bias, EPS)


def _measure(rows: List[Result], case: str, impl: str, fn: Callable, inputs: Sequence[torch.Tensor],
             bytes_fwd: float, bytes_fwd_bwd: float, smoke: bool, extra: str = "") -> None:
    """Time ``fn(*inputs)`` alone (no autograd) and with its backward; append two Result rows."""
    reps = 1 if smoke else 3
    with torch.no_grad():
        ms = bench_ms(lambda: fn(*inputs), smoke=smoke, reps=reps)
    rows.append(Result(SUITE, case, impl, "fwd", ms, "GB/s", bytes_fwd / ms / 1e6, extra))

    leaves = [t.detach().requires_grad_() for t in inputs]
    grad_out = torch.randn_like(leaves[0])
    ms = bench_ms(lambda: torch.autograd.grad(fn(*leaves), leaves, grad_out), smoke=smoke, reps=reps)
    rows.append(Result(SUITE, case, impl, "fwd+bwd", ms, "GB/s", bytes_fwd_bwd / ms / 1e6, extra))


def run(smoke: bool = False) -> List[Result]:
    """All rows: see the module docstring for ops, shapes and byte counting."""
    gelu_kernel, dropout_kernel = _kernel_modules()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    compile_backend = "aot_eager" if smoke else "inductor"
    compile_note = f"torch.compile backend={compile_backend}"
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    def ours_dropout_add_ln(x, bias, residual, weight, ln_bias):
        return dropout_kernel.bias_dropout_add_layernorm(x, bias, residual, weight, ln_bias, DROPOUT_P, SEED, EPS)

    def ours_gelu_ln(x, bias, weight, ln_bias):
        return gelu_kernel.bias_gelu_layernorm(x, bias, weight, ln_bias, EPS)

    suites = [  # name, ours, eager, [N, d] tensors moved forward / forward+backward, has residual
        ("gelu_ln", ours_gelu_ln, gelu_ln_eager, 2, 5, False),
        ("dropout_add_ln", ours_dropout_add_ln, dropout_add_ln_eager, 3, 8, True),
    ]
    rows: List[Result] = []
    for n_rows, d in (SMOKE_SHAPES if smoke else SHAPES):
        x = randn(n_rows, d)
        tensor_bytes = x.numel() * x.element_size()
        ms = bench_ms(lambda: x.clone(), smoke=smoke, reps=1 if smoke else 3)
        rows.append(Result(SUITE, f"N{n_rows}-d{d}", "copy", "fwd", ms, "GB/s", 2 * tensor_bytes / ms / 1e6,
                        "x.clone(): the bandwidth ceiling"))
        params = [randn(d) * 0.1, 1.0 + 0.1 * randn(d), 0.1 * randn(d)]  # bias, gamma, beta
        for name, ours, eager, moved_fwd, moved_fwd_bwd, has_residual in suites:
            case = f"{name}-N{n_rows}-d{d}"
            inputs = [x, params[0]] + ([randn(n_rows, d)] if has_residual else []) + params[1:]
            compiled = torch.compile(eager, backend=compile_backend, dynamic=False)  # fixed shapes, as training
            for impl, fn, extra in (("ours", ours, ""), ("eager", eager, ""), ("torch.compile", compiled, compile_note)):
                _measure(rows, case, impl, fn, inputs, moved_fwd * tensor_bytes, moved_fwd_bwd * tensor_bytes,
                         smoke, extra)
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    suite_main(run, __doc__.splitlines()[0], argv)

if __name__ == "__main__":
    main()
