"""Fused ``y = GeLU_erf(x + bias)``: the feed-forward expansion's epilogue (``Intermediate``).

Math, per element (fp32 whatever the I/O dtype), ``b`` broadcast over the rows:

    h = x + b,   y = GeLU(h) = h * Phi(h),   Phi(h) = (1 + erf(h / sqrt 2)) / 2

Backward, for an upstream gradient ``dy``:

    dh = dy * GeLU'(h),   GeLU'(h) = Phi(h) + h * exp(-h^2 / 2) / sqrt(2 pi)
    dx = dh,   dbias = sum_rows(dh)

Shapes: ``x`` [..., F] (flattened to [T, F]; BERT-base: T = 32 x 512 tokens, F = 3072),
contiguous, fp32, fp16 or bf16; ``bias`` [F], contiguous, any of those dtypes; ``y`` has
x's shape and dtype. ``dbias`` is summed in fp32 and returned in bias's dtype.

Traffic: the forward reads x once and writes y once (2 T F elements); the backward reads
dy and x and writes dx (3 T F). Eager PyTorch writes ``x + b`` and reads it again for the
GeLU, and saves it for the backward.

Saved for backward: ``x`` and ``bias`` only, never ``h`` or the activation ``y``: the
backward recomputes ``h = x + b`` and GeLU'(h) (one erf and one exp per element, free next
to the memory traffic). Saving ``y`` would not help (GeLU' needs ``h``, not ``y``), and
saving ``h`` would add a [T, F] write in the forward (and its memory) to spare the same one
[T, F] read of ``x`` in the backward. ``x`` (the first GEMM's output) is then the only
[T, F] tensor this op keeps; the second GEMM keeps ``y``, its input.

Layout: a program owns a [BLOCK_ROWS, BLOCK_COLS] tile (rows x columns of [T, F]), so the
bias slice is loaded once a tile; row offsets are int64 (T * F may pass 2^31).

dbias, two stages, deterministic (no atomics), as the LayerNorm parameter grads of
:mod:`_layernorm_common`: the backward grid is ``G`` row groups x column tiles; program
``(g, c)`` walks row tiles ``g, g + G, ...`` of column tile ``c`` and sums its ``dh`` in
fp32 registers, then writes them to ``PARTIAL[g, cols]`` ([G, F] fp32; ``G`` is fixed
before the launch, so the autotuned tile shape does not change the buffer); then
:func:`sum_partials` sums ``PARTIAL`` over ``g`` in a fixed order.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import triton
import triton.language as tl

from ._layernorm_common import (
    INTERPRETING,
    backward_programs,
    check_device,
    check_float,
    check_kernel_device,
    sum_partials,
)
from .gelu_layernorm import gelu_erf

_OP = "bias_gelu"


# --------------------------------------------------------------------------- autotune list
def _tile_configs() -> List[triton.Config]:
    """(BLOCK_ROWS, BLOCK_COLS, num_warps): 8 to 32 elements a thread, 16-byte vector accesses."""
    if INTERPRETING:  # interpreter cost is programs x loop iterations: few, large tiles
        return [triton.Config({"BLOCK_ROWS": 64, "BLOCK_COLS": 4096}, num_warps=4)]
    return [
        triton.Config({"BLOCK_ROWS": rows, "BLOCK_COLS": cols}, num_warps=warps)
        for rows, cols, warps in (
            (1, 2048, 8), (2, 1024, 4), (4, 1024, 8), (4, 512, 4), (8, 512, 4), (8, 1024, 8), (16, 512, 8),
        )
    ]


TILE_CONFIGS = _tile_configs()


# --------------------------------------------------------------------------- Triton kernels
@triton.jit
def _tile(row_tile, col_tile, T, F, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """Columns [BLOCK_COLS] and their mask, flat int64 offsets [BLOCK_ROWS, BLOCK_COLS] and mask."""
    rows = row_tile * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = col_tile * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    col_ok = cols < F
    offsets = rows.to(tl.int64)[:, None] * F + cols[None, :]
    mask = (rows < T)[:, None] & col_ok[None, :]
    return cols, col_ok, offsets, mask


@triton.autotune(configs=TILE_CONFIGS, key=["F"])
@triton.jit
def _bias_gelu_fwd_kernel(
    X,  # [T, F] fp32/fp16/bf16, contiguous
    BIAS,  # [F]
    Y,  # [T, F] x's dtype
    T,
    F,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    cols, col_ok, offsets, mask = _tile(tl.program_id(0), tl.program_id(1), T, F, BLOCK_ROWS, BLOCK_COLS)
    bias = tl.load(BIAS + cols, mask=col_ok, other=0.0).to(tl.float32)
    h = tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32) + bias[None, :]
    activation, _ = gelu_erf(h)
    tl.store(Y + offsets, activation.to(Y.dtype.element_ty), mask=mask)


@triton.autotune(configs=TILE_CONFIGS, key=["F"])
@triton.jit
def _bias_gelu_bwd_kernel(
    DY,  # [T, F] x's dtype, contiguous
    X,  # [T, F] fp32/fp16/bf16
    BIAS,  # [F]
    DX,  # [T, F] x's dtype
    PARTIAL,  # [G, F] fp32: row group g's dbias sums
    T,
    F,
    G,  # row groups; program (g, c) walks row tiles g, g + G, ... of column tile c
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    col_tile = tl.program_id(1)
    cols = col_tile * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    bias = tl.load(BIAS + cols, mask=cols < F, other=0.0).to(tl.float32)
    dbias = tl.zeros((BLOCK_COLS,), dtype=tl.float32)
    for row_tile in range(tl.program_id(0), tl.cdiv(T, BLOCK_ROWS), G):
        _, _, offsets, mask = _tile(row_tile, col_tile, T, F, BLOCK_ROWS, BLOCK_COLS)
        h = tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32) + bias[None, :]
        _, activation_grad = gelu_erf(h)
        dh = tl.load(DY + offsets, mask=mask, other=0.0).to(tl.float32) * activation_grad  # 0 outside mask
        tl.store(DX + offsets, dh.to(DX.dtype.element_ty), mask=mask)
        dbias += tl.sum(dh, axis=0)
    tl.store(PARTIAL + tl.program_id(0).to(tl.int64) * F + cols, dbias, mask=cols < F)


# --------------------------------------------------------------------------- launch functions
def _forward(
    x: torch.Tensor,  # [T, F] contiguous
    bias: torch.Tensor,  # [F]
) -> torch.Tensor:
    """Launch the forward on validated inputs: y [T, F] in x's dtype."""
    n_rows, n_cols = x.shape
    y = torch.empty_like(x)
    if n_rows > 0:
        _bias_gelu_fwd_kernel[
            lambda meta: (triton.cdiv(n_rows, meta["BLOCK_ROWS"]), triton.cdiv(n_cols, meta["BLOCK_COLS"]))
        ](x, bias, y, n_rows, n_cols)
    return y


def _backward(
    grad_y: torch.Tensor,  # [T, F] contiguous
    x: torch.Tensor,  # [T, F]
    bias: torch.Tensor,  # [F]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward: (dx [T, F] in x's dtype, dbias [F] fp32)."""
    n_rows, n_cols = x.shape
    dx = torch.empty_like(x)
    n_groups = backward_programs(x)
    partials = x.new_empty((n_groups, 1, n_cols), dtype=torch.float32)  # every entry written
    _bias_gelu_bwd_kernel[lambda meta: (n_groups, triton.cdiv(n_cols, meta["BLOCK_COLS"]))](
        grad_y, x, bias, dx, partials, n_rows, n_cols, n_groups,
    )
    return dx, sum_partials(partials)[0]


# --------------------------------------------------------------------------- torch.library op
@torch.library.custom_op("spanbert_fast::bias_gelu_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return _forward(x, bias)


@_fwd_op.register_fake
def _(x, bias):
    return torch.empty_like(x)


@torch.library.custom_op("spanbert_fast::bias_gelu_bwd", mutates_args=())
def _bwd_op(grad_y: torch.Tensor, x: torch.Tensor, bias: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    return _backward(grad_y, x, bias)


@_bwd_op.register_fake
def _(grad_y, x, bias):
    return torch.empty_like(x), x.new_empty((x.shape[1],), dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, bias = inputs
    ctx.save_for_backward(x, bias)  # never the activation: see the module docstring


def _autograd_backward(ctx, grad_y):
    x, bias = ctx.saved_tensors
    dx, dbias = _bwd_op(grad_y.contiguous(), x, bias)
    return dx, dbias.to(bias.dtype)


_fwd_op.register_autograd(_autograd_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- functional API
def _validate(x: torch.Tensor, bias: torch.Tensor) -> None:
    """Shape, dtype, device and layout of the inputs; ``ValueError`` naming the argument."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{_OP}: x must be a torch.Tensor, got {type(x).__name__}")
    check_float(_OP, "x", x)
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"{_OP}: x must be [..., F] with F >= 1, got shape {tuple(x.shape)}")
    check_kernel_device(_OP, x)
    if not x.is_contiguous():
        raise ValueError(
            f"{_OP}: x must be contiguous (the output of F.linear is), got strides {x.stride()} for shape "
            f"{tuple(x.shape)}; call .contiguous() first"
        )
    n_cols = x.shape[-1]
    if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (n_cols,):
        got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ValueError(f"{_OP}: bias must have shape [F={n_cols}] (x's last dim), got {got}")
    check_float(_OP, "bias", bias)
    check_device(_OP, "bias", bias, x.device)
    if not bias.is_contiguous():
        raise ValueError(f"{_OP}: bias must be contiguous, got stride {bias.stride()}; call .contiguous() first")


def bias_gelu(
    x: torch.Tensor,  # [..., F] contiguous
    bias: torch.Tensor,  # [F]
) -> torch.Tensor:
    """``GeLU_erf(x + bias)``; x's shape and dtype; differentiable (saves x and bias only)."""
    _validate(x, bias)
    return _fwd_op(x.view(-1, x.shape[-1]), bias).view(x.shape)
