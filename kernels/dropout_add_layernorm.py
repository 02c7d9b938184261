"""Fused post-LN residual block ``y = LayerNorm(dropout(x + bias) + residual)``.

The end of every encoder sublayer (attention output and FFN output). Math, per row
of ``D`` columns (fp32 whatever the I/O dtype):

    keep = philox_uniform(seed, n * D + j) >= p        (element (n, j) of the flattened [N, D])
    s = keep * (x + bias) / (1 - p) + residual
    y = (s - mean(s)) * rstd * gamma + beta,   rstd = 1 / sqrt(var(s) + eps)

Backward, with ``ds`` the LayerNorm input grad (see :mod:`_layernorm_common`):

    dresidual = ds,   dx = keep * ds / (1 - p),   dbias = sum_rows(dx)
    dgamma = sum_rows(dy * xhat),   dbeta = sum_rows(dy)

Shapes: ``x`` and ``residual`` [..., D] (flattened to [N, D]; each may be fp32, fp16
or bf16), ``bias``/``gamma``/``beta`` [D], D <= 8192; ``y`` has x's shape and dtype.

Dropout: Philox (``tl.rand``) keyed by ``seed`` (a one-element int64 tensor the kernels
load, see :mod:`._dropout_seed`) and the element's flat int64 index, so
the mask depends only on (seed, N, D) and is recomputed in the backward instead of
stored (no [N, D] mask in memory). ``p == 0`` compiles the dropout away (``HAS_DROPOUT``
is a constexpr). :func:`dropout_keep_mask` returns the same mask for tests.

Saved for backward: ``x``, ``residual`` (alive anyway: it is the input of the
sublayer), ``mean`` and ``rstd`` ([N] fp32). ``s`` is recomputed: storing it would add
an [N, D] write in forward to save one [N, D] read in backward, the same traffic.
Parameter grads use the two-stage deterministic reduction of :mod:`_layernorm_common`.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ._dropout_seed import SeedLike, as_seed_tensor, load_seed, seed_tensor
from ._layernorm_common import (
    INTERPRETING,
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

_OP = "bias_dropout_add_layernorm"
_MASK_BLOCK = 65536 if INTERPRETING else 1024  # elements per program of the keep-mask kernel


# --------------------------------------------------------------------------- Triton kernels
@triton.jit
def _keep(seed, offsets, p):
    """Dropout keep-mask of the elements at flat ``offsets`` (int64): uniform >= p."""
    return tl.rand(seed, offsets) >= p


@triton.jit
def _residual_sum(X, BIAS, RES, offsets, mask, D, seed, p, scale,
                  HAS_BIAS: tl.constexpr, HAS_DROPOUT: tl.constexpr, BLOCK_D: tl.constexpr):
    """``s = dropout(x + bias) + residual`` of a row tile (fp32, zero outside ``mask``) and the
    keep-mask (``mask`` itself without dropout)."""
    h = load_biased_rows(X, BIAS, offsets, mask, D, HAS_BIAS, BLOCK_D)
    keep = mask
    if HAS_DROPOUT:
        keep = mask & _keep(seed, offsets, p)
        h = tl.where(keep, h * scale, 0.0)
    return h + tl.load(RES + offsets, mask=mask, other=0.0).to(tl.float32), keep


@triton.autotune(key=["D", "HAS_BIAS", "HAS_DROPOUT"], **row_autotune(registers_per_element=6))
@triton.jit
def _bias_dropout_add_layernorm_fwd_kernel(
    X,  # [N, D] fp32/fp16/bf16, contiguous
    BIAS,  # [D] (unused when HAS_BIAS is False)
    RES,  # [N, D] fp32/fp16/bf16, contiguous
    W,  # [D] LayerNorm gamma
    B,  # [D] LayerNorm beta
    Y,  # [N, D] x's dtype
    MEAN,  # [N] fp32
    RSTD,  # [N] fp32
    N,
    D,
    eps,
    SEED,  # [1] int64 Philox key; read only when HAS_DROPOUT
    p,
    scale,  # 1 / (1 - p)
    HAS_BIAS: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
):
    rows, row_ok, offsets, mask = row_tile(tl.program_id(0), N, D, BLOCK_ROWS, BLOCK_D)
    seed = load_seed(SEED, HAS_DROPOUT)
    s, _ = _residual_sum(X, BIAS, RES, offsets, mask, D, seed, p, scale, HAS_BIAS, HAS_DROPOUT, BLOCK_D)
    layernorm_forward(s, mask, rows, row_ok, offsets, W, B, Y, MEAN, RSTD, D, eps, BLOCK_D)


@triton.autotune(key=["D", "HAS_BIAS", "HAS_DROPOUT"], **row_autotune(registers_per_element=12))
@triton.jit
def _bias_dropout_add_layernorm_bwd_kernel(
    DY,  # [N, D] x's dtype, contiguous
    X,  # [N, D] fp32/fp16/bf16
    BIAS,  # [D] (unused when HAS_BIAS is False)
    RES,  # [N, D] fp32/fp16/bf16
    W,  # [D] LayerNorm gamma
    MEAN,  # [N] fp32
    RSTD,  # [N] fp32
    DX,  # [N, D] x's dtype
    DRES,  # [N, D] residual's dtype
    PARTIAL,  # [G, 2 + HAS_BIAS, D] fp32: this program's dgamma, dbeta (, dbias) row sums
    N,
    D,
    G,  # number of programs; program g walks row tiles g, g + G, ...
    SEED,  # [1] int64 Philox key; read only when HAS_DROPOUT
    p,
    scale,  # 1 / (1 - p)
    HAS_BIAS: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
):
    gamma = load_vector(W, D, BLOCK_D)
    seed = load_seed(SEED, HAS_DROPOUT)
    dgamma = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbeta = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for tile in range(tl.program_id(0), tl.cdiv(N, BLOCK_ROWS), G):
        rows, row_ok, offsets, mask = row_tile(tile, N, D, BLOCK_ROWS, BLOCK_D)
        s, keep = _residual_sum(X, BIAS, RES, offsets, mask, D, seed, p, scale, HAS_BIAS, HAS_DROPOUT, BLOCK_D)
        ds, dgamma_rows, dbeta_rows = layernorm_backward(s, mask, rows, row_ok, offsets, DY, MEAN, RSTD, gamma, D)
        dx = ds
        if HAS_DROPOUT:
            dx = tl.where(keep, ds * scale, 0.0)
        tl.store(DRES + offsets, ds.to(DRES.dtype.element_ty), mask=mask)
        tl.store(DX + offsets, dx.to(DX.dtype.element_ty), mask=mask)
        dgamma += dgamma_rows
        dbeta += dbeta_rows
        if HAS_BIAS:
            dbias += tl.sum(dx, axis=0)
    store_partials(PARTIAL, D, dgamma, dbeta, dbias, HAS_BIAS, BLOCK_D)


@triton.jit
def _keep_mask_kernel(
    KEEP,  # [numel] int8, 1 where kept
    numel,
    SEED,  # [1] int64 Philox key
    p,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(KEEP + offsets, _keep(tl.load(SEED), offsets, p).to(tl.int8), mask=offsets < numel)


# --------------------------------------------------------------------------- launch functions
def _dropout_args(p: float, seed: Optional[torch.Tensor], x: torch.Tensor) -> dict:
    """Dropout arguments shared by both kernels; ``p == 0`` turns dropout off at compile time
    (SEED then points at ``x`` and is never read)."""
    return dict(SEED=x if seed is None else seed, p=p, scale=1.0 / (1.0 - p), HAS_DROPOUT=p > 0.0)


def _forward(
    x: torch.Tensor,  # [N, D] contiguous
    bias: Optional[torch.Tensor],  # [D] or None
    residual: torch.Tensor,  # [N, D] contiguous
    weight: torch.Tensor,  # [D]
    ln_bias: torch.Tensor,  # [D]
    p: float,
    seed: Optional[torch.Tensor],  # [1] int64 on x's device; None when p == 0
    eps: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward on validated inputs: (y [N, D], mean [N] fp32, rstd [N] fp32)."""
    n_rows, d = x.shape
    y, mean, rstd = new_forward_outputs(x)
    if n_rows > 0:
        _bias_dropout_add_layernorm_fwd_kernel[forward_grid(n_rows)](
            x, weight if bias is None else bias, residual, weight, ln_bias, y, mean, rstd, n_rows, d, eps,
            HAS_BIAS=bias is not None, BLOCK_D=block_d(d), **_dropout_args(p, seed, x),
        )
    return y, mean, rstd


def _backward(
    grad_y: torch.Tensor,  # [N, D] contiguous
    x: torch.Tensor,  # [N, D]
    bias: Optional[torch.Tensor],  # [D] or None
    residual: torch.Tensor,  # [N, D]
    weight: torch.Tensor,  # [D]
    mean: torch.Tensor,  # [N] fp32
    rstd: torch.Tensor,  # [N] fp32
    p: float,
    seed: Optional[torch.Tensor],  # the forward's
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward: (dx, dresidual [N, D], param grads [2 + has_bias, D] fp32)."""
    n_rows, d = x.shape
    dx = torch.empty_like(x)
    dresidual = torch.empty_like(residual)
    partials = new_partials(x, bias)
    _bias_dropout_add_layernorm_bwd_kernel[(partials.shape[0],)](
        grad_y, x, weight if bias is None else bias, residual, weight, mean, rstd, dx, dresidual, partials,
        n_rows, d, partials.shape[0],
        HAS_BIAS=bias is not None, BLOCK_D=block_d(d), **_dropout_args(p, seed, x),
    )
    return dx, dresidual, sum_partials(partials)


def _check_p(p: float):
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"{_OP}: p must be a dropout probability in [0, 1), got {p!r}")


def dropout_keep_mask(shape: Sequence[int], p: float, seed: SeedLike, device) -> torch.Tensor:
    """The keep-mask (bool, ``True`` = kept) the kernels use for an input of ``shape``.

    Element ``i`` of the flattened ``shape`` is kept when Philox(seed, i) >= p, exactly
    as in :func:`bias_dropout_add_layernorm` on an input of that shape.
    """
    _check_p(p)
    if seed is None:
        raise ValueError("dropout_keep_mask: pass the seed whose mask you want (an int or an int64 tensor)")
    seed = as_seed_tensor(seed, device, "dropout_keep_mask")
    numel = 1
    for size in shape:
        numel *= int(size)
    keep = torch.empty(numel, dtype=torch.int8, device=device)
    if numel > 0:
        _keep_mask_kernel[(triton.cdiv(numel, _MASK_BLOCK),)](keep, numel, seed, float(p), BLOCK=_MASK_BLOCK)
    return keep.view(tuple(shape)).bool()


# --------------------------------------------------------------------------- torch.library op
@torch.library.custom_op("spanbert_fast::bias_dropout_add_layernorm_fwd", mutates_args=())
def _fwd_op(
    x: torch.Tensor,
    bias: Optional[torch.Tensor],
    residual: torch.Tensor,
    weight: torch.Tensor,
    ln_bias: torch.Tensor,
    p: float,
    seed: Optional[torch.Tensor],
    eps: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(x, bias, residual, weight, ln_bias, p, seed, eps)


@_fwd_op.register_fake
def _(x, bias, residual, weight, ln_bias, p, seed, eps):
    return new_forward_outputs(x)


@torch.library.custom_op("spanbert_fast::bias_dropout_add_layernorm_bwd", mutates_args=())
def _bwd_op(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    bias: Optional[torch.Tensor],
    residual: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    p: float,
    seed: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(grad_y, x, bias, residual, weight, mean, rstd, p, seed)


@_bwd_op.register_fake
def _(grad_y, x, bias, residual, weight, mean, rstd, p, seed):
    return torch.empty_like(x), torch.empty_like(residual), empty_param_grad_totals(x, bias)


def _setup_context(ctx, inputs, output):
    x, bias, residual, weight, ln_bias, p, seed, _eps = inputs
    _y, mean, rstd = output
    ctx.save_for_backward(x, bias, residual, weight, ln_bias, mean, rstd, seed)
    ctx.p = p


def _autograd_backward(ctx, grad_y, _grad_mean, _grad_rstd):
    x, bias, residual, weight, ln_bias, mean, rstd, seed = ctx.saved_tensors
    dx, dresidual, totals = _bwd_op(grad_y.contiguous(), x, bias, residual, weight, mean, rstd, ctx.p, seed)
    dbias, dweight, dln_bias = split_param_grads(totals, weight, ln_bias, bias)
    return dx, dbias, dresidual, dweight, dln_bias, None, None, None


_fwd_op.register_autograd(_autograd_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- functional API
def bias_dropout_add_layernorm(
    x: torch.Tensor,  # [..., d] sublayer output before its bias
    bias: Optional[torch.Tensor],  # [d] or None
    residual: torch.Tensor,  # [..., d], x's shape
    weight: torch.Tensor,  # [d] LayerNorm gamma
    ln_bias: torch.Tensor,  # [d] LayerNorm beta
    p: float = 0.0,
    seed: SeedLike = None,
    eps: float = 1e-12,
) -> torch.Tensor:
    """``LayerNorm(dropout(x + bias) + residual)`` over the last dim; x's shape and dtype; differentiable.

    The dropout mask is :func:`dropout_keep_mask` ``(x.shape, p, seed)``. ``seed=None``
    draws a fresh one on x's device from torch's generator (no host sync); an int or a
    one-element int64 tensor fixes the mask (the same seed gives the same mask).
    """
    _check_p(p)
    x2d, vectors, rows = validate_rows(
        _OP, x, {"bias": bias, "weight": weight, "ln_bias": ln_bias}, {"residual": residual}, eps
    )
    seed = seed_tensor(seed, float(p), x.device, _OP)
    y, _, _ = _fwd_op(
        x2d, vectors["bias"], rows["residual"], vectors["weight"], vectors["ln_bias"], float(p), seed, float(eps)
    )
    return y.view(x.shape)
