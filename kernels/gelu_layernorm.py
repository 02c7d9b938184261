"""Fused ``y = LayerNorm(GeLU_erf(x + bias))`` over the last dim (MLM transform, SBO MLP).

Math, per row of ``D`` columns (fp32 whatever the I/O dtype):

    h = x + bias,   a = GeLU(h) = h * Phi(h),   Phi(h) = (1 + erf(h / sqrt 2)) / 2
    y = (a - mean(a)) * rstd * gamma + beta,    rstd = 1 / sqrt(var(a) + eps)

Backward, with ``da`` the LayerNorm input grad (see :mod:`_layernorm_common`):

    dh = da * GeLU'(h),   GeLU'(h) = Phi(h) + h * exp(-h^2 / 2) / sqrt(2 pi)
    dx = dh,   dbias = sum_rows(dh),   dgamma = sum_rows(dy * xhat),   dbeta = sum_rows(dy)

Shapes: ``x`` [..., D] (flattened to [N, D]), ``bias``/``gamma``/``beta`` [D] with
D <= 8192; ``y`` has x's shape and dtype; fp32, fp16 or bf16.

Saved for backward: ``x`` itself, ``mean`` and ``rstd`` ([N] fp32). ``h`` and GeLU(h)
are recomputed from ``x`` (one erf and one exp per element, free next to the memory
traffic) rather than stored: storing GeLU(h) would cost an [N, D] write in forward
and the same read in backward as re-reading ``x``, plus the memory.

Parameter grads use the two-stage deterministic reduction of
:mod:`_layernorm_common` (per-program fp32 partial sums, then one small sum).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._layernorm_common import (
    block_d,
    empty_param_grad_totals,
    forward_grid,
    layernorm_backward,
    layernorm_forward,
    load_biased_rows,
    load_vector,
    new_forward_outputs,
    new_partials,
    row_autotune,
    row_tile,
    split_param_grads,
    store_partials,
    sum_partials,
    validate_rows,
)

_OP = "bias_gelu_layernorm"


# --------------------------------------------------------------------------- Triton kernels
@triton.jit
def gelu_erf(h):
    """(GeLU(h), GeLU'(h)) with the exact (erf) GeLU."""
    cdf = 0.5 * (1.0 + tl.math.erf(h * 0.7071067811865476))
    pdf = tl.exp(-0.5 * h * h) * 0.3989422804014327
    return h * cdf, cdf + h * pdf


@triton.autotune(key=["D", "HAS_BIAS"], **row_autotune(registers_per_element=5))
@triton.jit
def _bias_gelu_layernorm_fwd_kernel(
    X,  # [N, D] fp32/fp16/bf16, contiguous
    BIAS,  # [D] (unused when HAS_BIAS is False)
    W,  # [D] LayerNorm gamma
    B,  # [D] LayerNorm beta
    Y,  # [N, D] x's dtype
    MEAN,  # [N] fp32
    RSTD,  # [N] fp32
    N,
    D,
    eps,
    HAS_BIAS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
):
    rows, row_ok, offsets, mask = row_tile(tl.program_id(0), N, D, BLOCK_ROWS, BLOCK_D)
    activation, _ = gelu_erf(load_biased_rows(X, BIAS, offsets, mask, D, HAS_BIAS, BLOCK_D))
    layernorm_forward(activation, mask, rows, row_ok, offsets, W, B, Y, MEAN, RSTD, D, eps, BLOCK_D)


@triton.autotune(key=["D", "HAS_BIAS"], **row_autotune(registers_per_element=11))
@triton.jit
def _bias_gelu_layernorm_bwd_kernel(
    DY,  # [N, D] x's dtype, contiguous
    X,  # [N, D] fp32/fp16/bf16
    BIAS,  # [D] (unused when HAS_BIAS is False)
    W,  # [D] LayerNorm gamma
    MEAN,  # [N] fp32
    RSTD,  # [N] fp32
    DX,  # [N, D] x's dtype
    PARTIAL,  # [G, 2 + HAS_BIAS, D] fp32: this program's dgamma, dbeta (, dbias) row sums
    N,
    D,
    G,  # number of programs; program g walks row tiles g, g + G, ...
    HAS_BIAS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
):
    gamma = load_vector(W, D, BLOCK_D)
    dgamma = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbeta = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for tile in range(tl.program_id(0), tl.cdiv(N, BLOCK_ROWS), G):
        rows, row_ok, offsets, mask = row_tile(tile, N, D, BLOCK_ROWS, BLOCK_D)
        activation, activation_grad = gelu_erf(load_biased_rows(X, BIAS, offsets, mask, D, HAS_BIAS, BLOCK_D))
        da, dgamma_rows, dbeta_rows = layernorm_backward(activation, mask, rows, row_ok, offsets, DY, MEAN, RSTD,
                                                         gamma, D)
        dh = da * activation_grad
        tl.store(DX + offsets, dh.to(DX.dtype.element_ty), mask=mask)
        dgamma += dgamma_rows
        dbeta += dbeta_rows
        if HAS_BIAS:
            dbias += tl.sum(dh, axis=0)
    store_partials(PARTIAL, D, dgamma, dbeta, dbias, HAS_BIAS, BLOCK_D)


# --------------------------------------------------------------------------- launch functions
def _forward(
    x: torch.Tensor,  # [N, D] contiguous
    bias: Optional[torch.Tensor],  # [D] or None
    weight: torch.Tensor,  # [D]
    ln_bias: torch.Tensor,  # [D]
    eps: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward on validated inputs: (y [N, D], mean [N] fp32, rstd [N] fp32)."""
    n_rows, d = x.shape
    y, mean, rstd = new_forward_outputs(x)
    if n_rows > 0:
        _bias_gelu_layernorm_fwd_kernel[forward_grid(n_rows)](
            x, weight if bias is None else bias, weight, ln_bias, y, mean, rstd, n_rows, d, eps,
            HAS_BIAS=bias is not None, BLOCK_D=block_d(d),
        )
    return y, mean, rstd


def _backward(
    grad_y: torch.Tensor,  # [N, D] contiguous
    x: torch.Tensor,  # [N, D]
    bias: Optional[torch.Tensor],  # [D] or None
    weight: torch.Tensor,  # [D]
    mean: torch.Tensor,  # [N] fp32
    rstd: torch.Tensor,  # [N] fp32
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward: (dx [N, D], param grads [2 + has_bias, D] fp32: dgamma, dbeta, dbias)."""
    n_rows, d = x.shape
    dx = torch.empty_like(x)
    partials = new_partials(x, bias)
    _bias_gelu_layernorm_bwd_kernel[(partials.shape[0],)](
        grad_y, x, weight if bias is None else bias, weight, mean, rstd, dx, partials,
        n_rows, d, partials.shape[0], HAS_BIAS=bias is not None, BLOCK_D=block_d(d),
    )
    return dx, sum_partials(partials)


# --------------------------------------------------------------------------- torch.library op
@torch.library.custom_op("spanbert_fast::bias_gelu_layernorm_fwd", mutates_args=())
def _fwd_op(
    x: torch.Tensor, bias: Optional[torch.Tensor], weight: torch.Tensor, ln_bias: torch.Tensor, eps: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(x, bias, weight, ln_bias, eps)


@_fwd_op.register_fake
def _(x, bias, weight, ln_bias, eps):
    return new_forward_outputs(x)


@torch.library.custom_op("spanbert_fast::bias_gelu_layernorm_bwd", mutates_args=())
def _bwd_op(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    bias: Optional[torch.Tensor],
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    return _backward(grad_y, x, bias, weight, mean, rstd)


@_bwd_op.register_fake
def _(grad_y, x, bias, weight, mean, rstd):
    return torch.empty_like(x), empty_param_grad_totals(x, bias)


def _setup_context(ctx, inputs, output):
    x, bias, weight, ln_bias, _eps = inputs
    _y, mean, rstd = output
    ctx.save_for_backward(x, bias, weight, ln_bias, mean, rstd)


def _autograd_backward(ctx, grad_y, _grad_mean, _grad_rstd):
    x, bias, weight, ln_bias, mean, rstd = ctx.saved_tensors
    dx, totals = _bwd_op(grad_y.contiguous(), x, bias, weight, mean, rstd)
    dbias, dweight, dln_bias = split_param_grads(totals, weight, ln_bias, bias)
    return dx, dbias, dweight, dln_bias, None


_fwd_op.register_autograd(_autograd_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- functional API
def bias_gelu_layernorm(
    x: torch.Tensor,  # [..., d]
    bias: Optional[torch.Tensor],  # [d] or None
    weight: torch.Tensor,  # [d] LayerNorm gamma
    ln_bias: torch.Tensor,  # [d] LayerNorm beta
    eps: float = 1e-12,
) -> torch.Tensor:
    """``LayerNorm(GeLU_erf(x + bias))`` over the last dim; x's shape and dtype; differentiable."""
    x2d, vectors, _ = validate_rows(_OP, x, {"bias": bias, "weight": weight, "ln_bias": ln_bias}, {}, eps)
    y, _, _ = _fwd_op(x2d, vectors["bias"], vectors["weight"], vectors["ln_bias"], float(eps))
    return y.view(x.shape)
