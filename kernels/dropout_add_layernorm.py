"""Fused post-LN residual block ``y = LayerNorm(dropout(x + bias) + residual)``.

The end of every encoder sublayer (attention output and FFN output). Math, per row
of ``D`` columns (fp32 whatever the I/O dtype):

    keep = u16(seed, n, j) >= ceil(p * 65536)          (element (n, j) of the flattened [N, D])
    s = keep * (x + bias) / (1 - p) + residual
    y = (s - mean(s)) * rstd * gamma + beta,   rstd = 1 / sqrt(var(s) + eps)

Backward, with ``ds`` the LayerNorm input grad (see :mod:`_layernorm_common`):

    dresidual = ds,   dx = keep * ds / (1 - p),   dbias = sum_rows(dx)
    dgamma = sum_rows(dy * xhat),   dbeta = sum_rows(dy)

Shapes: ``x`` and ``residual`` [..., D] (flattened to [N, D]; each may be fp32, fp16
or bf16), ``bias``/``gamma``/``beta`` [D], D <= 8192; ``y`` has x's shape and dtype.

Dropout: batched Philox. ``u16(seed, n, j)`` is the (j mod 8)-th 16-bit quarter-word of
Philox-4x32-7 keyed by ``seed`` (a one-element int64 tensor the kernels load, see
:mod:`._dropout_seed`) at counter ``(j // 8, n, 0, 0)``: one Philox call draws the bits of
8 neighbouring columns of a row, in the row's own layout (the attention kernel batches its
dropout bits the same way). With one ``tl.rand`` call per element the dropout forward ran
3.3x the instructions of the p = 0 kernel; see ``benchmarks/notes/norms_static.md``. The
mask is a pure function of (seed, row, column), so the backward recomputes it instead of
reading a stored [N, D] mask. The drop rate is ceil(p * 65536) / 65536, within 2^-16 of
``p``. ``p == 0`` compiles the dropout away (``HAS_DROPOUT`` is a constexpr).
:func:`dropout_keep_mask` returns the same mask for tests.

Saved for backward: ``x``, ``residual`` (alive anyway: it is the input of the
sublayer), ``mean`` and ``rstd`` ([N] fp32). ``s`` is recomputed: storing it would add
an [N, D] write in forward to save one [N, D] read in backward, the same traffic.
Parameter grads use the two-stage deterministic reduction of :mod:`_layernorm_common`.
"""
from __future__ import annotations

import math
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
_PHILOX_COLUMNS = 8  # neighbouring columns of a row served by one Philox call (see _keep)
_MASK_BLOCK = 65536 if INTERPRETING else 4096  # elements per program of the keep-mask kernel (a power of two)


# --------------------------------------------------------------------------- Triton kernels
@triton.jit
def _keep(seed, rows, keep_threshold, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Dropout keep-mask [BLOCK_ROWS, BLOCK_D] of ``rows`` x columns ``0 .. BLOCK_D``.

    One Philox-4x32-7 call, counter ``(j // 8, n, 0, 0)``, gives 128 bits = eight 16-bit
    uniforms ``u``, one for each of the 8 neighbouring columns ``8 (j // 8) .. + 7`` of row
    ``n``; an element is kept when ``u >= keep_threshold`` (= ceil(p * 65536)). So the mask is
    a pure function of (seed, n, j), an eighth of the Philox rounds of one call per element.
    """
    GROUPS: tl.constexpr = BLOCK_D // 8
    groups = tl.zeros((BLOCK_ROWS, GROUPS), dtype=tl.uint32) + tl.arange(0, GROUPS)[None, :].to(tl.uint32)
    row_counter = tl.zeros((BLOCK_ROWS, GROUPS), dtype=tl.uint32) + rows[:, None].to(tl.uint32)
    zero = groups * 0
    r0, r1, r2, r3 = tl.philox(seed, groups, row_counter, zero, zero, 7)
    # Column 8 g + e takes the e-th of (r0 lo, r2 lo, r1 lo, r3 lo, r0 hi, r2 hi, r1 hi, r3 hi):
    # tl.join stacks on a new last axis, so the reshape reads the halves in that order. A high
    # half is compared in place: (r >> 16) >= t  <=>  r >= t << 16 (the threshold is < 2^16).
    threshold = keep_threshold.to(tl.uint32)
    threshold_high = threshold << 16
    pair0 = tl.join((r0 & 0xFFFF) >= threshold, r0 >= threshold_high)
    pair1 = tl.join((r1 & 0xFFFF) >= threshold, r1 >= threshold_high)
    pair2 = tl.join((r2 & 0xFFFF) >= threshold, r2 >= threshold_high)
    pair3 = tl.join((r3 & 0xFFFF) >= threshold, r3 >= threshold_high)
    eight = tl.join(tl.join(pair0, pair1), tl.join(pair2, pair3))  # [BLOCK_ROWS, GROUPS, 2, 2, 2]
    return tl.reshape(eight, (BLOCK_ROWS, BLOCK_D))


@triton.jit
def _residual_sum(X, BIAS, RES, rows, offsets, mask, D, seed, keep_threshold, scale,
                  HAS_BIAS: tl.constexpr, HAS_DROPOUT: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    """``s = dropout(x + bias) + residual`` of a row tile (fp32, zero outside ``mask``) and the
    keep-mask (``mask`` itself without dropout; with dropout it may be True outside ``mask``)."""
    h = load_biased_rows(X, BIAS, offsets, mask, D, HAS_BIAS, BLOCK_D)
    keep = mask
    if HAS_DROPOUT:  # h is 0 outside mask already: keep needs no "& mask"
        keep = _keep(seed, rows, keep_threshold, BLOCK_ROWS, BLOCK_D)
        h *= tl.where(keep, scale, 0.0)
    return h + tl.load(RES + offsets, mask=mask, other=0.0).to(tl.float32), keep


@triton.autotune(key=["D", "HAS_BIAS", "HAS_DROPOUT"],
                 **row_autotune(registers_per_element=6, philox_columns=_PHILOX_COLUMNS))
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
    keep_threshold,  # ceil(p * 65536): a 16-bit uniform below it drops its element
    scale,  # 1 / (1 - p)
    HAS_BIAS: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
):
    rows, row_ok, offsets, mask = row_tile(tl.program_id(0), N, D, BLOCK_ROWS, BLOCK_D)
    seed = load_seed(SEED, HAS_DROPOUT)
    s, _ = _residual_sum(X, BIAS, RES, rows, offsets, mask, D, seed, keep_threshold, scale,
                         HAS_BIAS, HAS_DROPOUT, BLOCK_ROWS, BLOCK_D)
    layernorm_forward(s, mask, rows, row_ok, offsets, W, B, Y, MEAN, RSTD, D, eps, BLOCK_D)


@triton.autotune(key=["D", "HAS_BIAS", "HAS_DROPOUT"],
                 **row_autotune(registers_per_element=12, philox_columns=_PHILOX_COLUMNS))
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
    keep_threshold,  # ceil(p * 65536): a 16-bit uniform below it drops its element
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
        s, keep = _residual_sum(X, BIAS, RES, rows, offsets, mask, D, seed, keep_threshold, scale,
                                HAS_BIAS, HAS_DROPOUT, BLOCK_ROWS, BLOCK_D)
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
    KEEP,  # [N, D] int8, 1 where kept
    N,
    D,
    SEED,  # [1] int64 Philox key
    keep_threshold,
    BLOCK_D: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
):
    rows, _, offsets, mask = row_tile(tl.program_id(0), N, D, BLOCK_ROWS, BLOCK_D)
    keep = _keep(tl.load(SEED), rows, keep_threshold, BLOCK_ROWS, BLOCK_D)
    tl.store(KEEP + offsets, keep.to(tl.int8), mask=mask)


# --------------------------------------------------------------------------- launch functions
def _dropout_block_d(d: int) -> int:
    """Columns of a row tile of these kernels: at least the 8 a Philox call covers."""
    return max(8, block_d(d))


def _keep_threshold(p: float) -> int:
    """ceil(p * 65536), at most 65535: a 16-bit uniform ``u`` keeps its element when ``u >=
    threshold``, so the drop rate is threshold / 65536, within 2^-16 of ``p`` (the scale stays
    1 / (1 - p))."""
    return min(math.ceil(p * 65536), 65535)


def _dropout_args(p: float, seed: Optional[torch.Tensor], x: torch.Tensor) -> dict:
    """Dropout arguments shared by both kernels; ``p == 0`` turns dropout off at compile time
    (SEED then points at ``x`` and is never read)."""
    return dict(SEED=x if seed is None else seed, keep_threshold=_keep_threshold(p), scale=1.0 / (1.0 - p),
                HAS_DROPOUT=p > 0.0)


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
            HAS_BIAS=bias is not None, BLOCK_D=_dropout_block_d(d), **_dropout_args(p, seed, x),
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
        HAS_BIAS=bias is not None, BLOCK_D=_dropout_block_d(d), **_dropout_args(p, seed, x),
    )
    return dx, dresidual, sum_partials(partials)


def _check_p(p: float):
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"{_OP}: p must be a dropout probability in [0, 1), got {p!r}")


def dropout_keep_mask(shape: Sequence[int], p: float, seed: SeedLike, device) -> torch.Tensor:
    """The keep-mask (bool, ``True`` = kept) the kernels use for an input of ``shape``.

    Element ``(n, j)`` of ``shape`` flattened to [N, d] is kept when ``u16(seed, n, j) >=
    ceil(p * 65536)`` (see the module docstring), exactly as in
    :func:`bias_dropout_add_layernorm` on an input of that shape.
    """
    _check_p(p)
    if seed is None:
        raise ValueError("dropout_keep_mask: pass the seed whose mask you want (an int or an int64 tensor)")
    seed = as_seed_tensor(seed, device, "dropout_keep_mask")
    shape = tuple(int(size) for size in shape)
    if not shape:
        raise ValueError("dropout_keep_mask: shape must be [..., d], got ()")
    d = shape[-1]
    n_rows = math.prod(shape[:-1])
    keep = torch.empty((n_rows, d), dtype=torch.int8, device=device)
    if keep.numel() > 0:
        block = _dropout_block_d(d)
        rows_per_program = max(1, _MASK_BLOCK // block)
        _keep_mask_kernel[(triton.cdiv(n_rows, rows_per_program),)](
            keep, n_rows, d, seed, _keep_threshold(p), BLOCK_D=block, BLOCK_ROWS=rows_per_program,
        )
    return keep.view(shape).bool()


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
