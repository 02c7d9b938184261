"""What the fused LayerNorm ops share: row tiles, LayerNorm forward/backward math,
the two-stage parameter-grad reduction, autotune lists and input validation.

Used by :mod:`gelu_layernorm` (``LayerNorm(GeLU(x + bias))``) and
:mod:`dropout_add_layernorm` (``LayerNorm(dropout(x + bias) + residual)``);
:mod:`bias_gelu` borrows the partial-sum reduction and the input checks. Both norms
normalise a row ``s`` of ``D`` columns (``s`` is whatever the op computes in
front of the LayerNorm):

    mean = sum(s) / D,   rstd = 1 / sqrt(sum((s - mean)^2) / D + eps)
    xhat = (s - mean) * rstd,   y = xhat * gamma + beta

and, for an upstream gradient ``dy``, with ``g = dy * gamma``:

    ds     = rstd * (g - mean_D(g) - xhat * mean_D(g * xhat))
    dgamma = sum_rows(dy * xhat),   dbeta = sum_rows(dy)

Forward saves only ``mean`` and ``rstd`` ([N] fp32 each, 8 bytes a row); the
backward recomputes ``s`` and ``xhat`` from the op's inputs, which costs one read
of inputs that are alive anyway instead of a saved [N, D] activation.

Layout: a program owns a tile of ``BLOCK_ROWS`` whole rows (``BLOCK_D`` =
next power of two >= D, tails masked), so one row never leaves registers. Row
offsets are int64 (N * D may pass 2^31).

Parameter grads, two stages, deterministic (no atomics): the backward launches a
fixed number ``G`` of programs; program ``g`` walks row tiles ``g, g + G, ...`` and
sums its rows' contributions in fp32 registers, then writes them to
``PARTIAL[g, k, :]`` ([G, K, D] fp32; k indexes dgamma, dbeta, dbias). A second
small kernel sums ``PARTIAL`` over ``g`` in a fixed order.

Under the Triton interpreter (``TRITON_INTERPRET=1``, CPU tests) the cost is
programs x loop iterations, not FLOPs, so the autotune lists shrink to one config
with large row tiles.
"""
from __future__ import annotations

import functools
from typing import Dict, List, Optional, Tuple

import torch
import triton
import triton.language as tl

from ._interpreter import interpreting

MAX_D = 8192
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INTERPRETING = interpreting()  # read once, as Triton does when it wraps the kernels


# --------------------------------------------------------------------------- autotune lists
def _row_configs() -> List[triton.Config]:
    """(BLOCK_ROWS, num_warps) of the row kernels, pruned per kernel and BLOCK_D by :func:`row_autotune`."""
    if INTERPRETING:
        return [triton.Config({"BLOCK_ROWS": 64}, num_warps=4)]
    return [
        triton.Config({"BLOCK_ROWS": rows}, num_warps=warps)
        for rows in (1, 2, 4, 8, 16)
        for warps in (2, 4, 8, 16, 32)
    ]


ROW_CONFIGS = _row_configs()


def row_autotune(registers_per_element: int, philox_columns: int = 0) -> dict:
    """``triton.autotune`` arguments of a row kernel: :data:`ROW_CONFIGS`, pruned per BLOCK_D.

    ``registers_per_element``: what one tile element a thread holds costs in registers
    (ptxas -v at sm_90: about 5 forward, 11 backward). A config is kept when each thread
    holds at least 4 elements (8-byte vector loads) and they fit in its share of the SM's 64K registers (at most
    255), so tiles neither idle lanes nor spill; when none fits (backward at d = 8192) the
    single-row tiles with 8 or more warps are kept and the autotuner picks.

    ``philox_columns``: for a kernel whose dropout draws one Philox call per that many
    neighbouring columns, a launch with ``HAS_DROPOUT`` keeps only the configs where a thread
    holds 1 to 2 calls' worth of elements and there are at least 8 warps (when any such config
    survives the rules above). The static sm_90 counts (``benchmarks/notes/norms_static.md``)
    show why: with fewer elements a thread wastes part of each call (4 of 8 columns: dropout
    costs 1.5-1.6x the p = 0 kernel's instructions), and with 2 or 4 warps the p = 0 kernel's
    row reductions are so cheap that the Philox rounds alone add 30-38 %; the configs kept cost
    1.19-1.28x. Launches without dropout keep the whole list.
    """
    def prune(configs, named_args, **kwargs):
        block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))

        def per_thread(c):
            return c.kwargs["BLOCK_ROWS"] * block_d / (32 * c.num_warps)

        kept = [
            c for c in configs
            if per_thread(c) >= 4 and per_thread(c) * registers_per_element <= min(255, 2048 // c.num_warps)
        ]
        if philox_columns and kwargs.get("HAS_DROPOUT", named_args.get("HAS_DROPOUT")):
            lean = [c for c in kept if philox_columns <= per_thread(c) <= 2 * philox_columns and c.num_warps >= 8]
            kept = lean or kept
        return kept or [c for c in configs if c.kwargs["BLOCK_ROWS"] == 1 and c.num_warps >= 8]

    return dict(configs=ROW_CONFIGS, prune_configs_by={"early_config_prune": prune})


if INTERPRETING:
    SUM_CONFIGS = [triton.Config({"BLOCK_G": 64, "BLOCK_M": 4096}, num_warps=4)]
else:
    SUM_CONFIGS = [
        triton.Config({"BLOCK_G": g, "BLOCK_M": m}, num_warps=4)
        for g in (8, 32) for m in (64, 128, 256)
    ]


# --------------------------------------------------------------------------- shared Triton pieces
@triton.jit
def row_tile(tile, N, D, BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows ``tile * BLOCK_ROWS + [0, BLOCK_ROWS)`` of a contiguous [N, D] tensor.

    Returns (rows [R] int32, row_ok [R], offsets [R, BLOCK_D] int64, mask [R, BLOCK_D]).
    """
    rows = tile * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    offsets = rows.to(tl.int64)[:, None] * D + cols[None, :]
    mask = row_ok[:, None] & (cols < D)[None, :]
    return rows, row_ok, offsets, mask


@triton.jit
def load_vector(PTR, D, BLOCK_D: tl.constexpr):
    """A [D] parameter as fp32 [BLOCK_D], zero past D."""
    cols = tl.arange(0, BLOCK_D)
    return tl.load(PTR + cols, mask=cols < D, other=0.0).to(tl.float32)


@triton.jit
def load_biased_rows(X, BIAS, offsets, mask, D, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr):
    """``x + bias`` of a row tile in fp32, zero outside ``mask``."""
    h = tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        h += load_vector(BIAS, D, BLOCK_D)[None, :]
    return tl.where(mask, h, 0.0)


@triton.jit
def layernorm_forward(s, mask, rows, row_ok, offsets, W, B, Y, MEAN, RSTD, D, eps, BLOCK_D: tl.constexpr):
    """Normalise a tile ``s`` [R, BLOCK_D] fp32 (zero outside ``mask``): store y, mean and rstd."""
    mean = tl.sum(s, axis=1) / D
    centered = tl.where(mask, s - mean[:, None], 0.0)
    var = tl.sum(centered * centered, axis=1) / D
    rstd = 1.0 / tl.sqrt(var + eps)
    y = centered * rstd[:, None] * load_vector(W, D, BLOCK_D)[None, :] + load_vector(B, D, BLOCK_D)[None, :]
    tl.store(Y + offsets, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=row_ok)
    tl.store(RSTD + rows, rstd, mask=row_ok)


@triton.jit
def layernorm_backward(s, mask, rows, row_ok, offsets, DY, MEAN, RSTD, gamma, D):
    """LayerNorm backward of a tile ``s`` [R, BLOCK_D] recomputed as in the forward.

    Reads dy and the saved mean/rstd; ``gamma`` is [BLOCK_D] fp32. Returns (ds [R, BLOCK_D]
    fp32, zero outside ``mask``; this tile's dgamma and dbeta row sums, [BLOCK_D] each).
    """
    mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
    rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
    xhat = tl.where(mask, (s - mean[:, None]) * rstd[:, None], 0.0)
    dy = tl.load(DY + offsets, mask=mask, other=0.0).to(tl.float32)
    g = dy * gamma[None, :]
    mean_g = tl.sum(g, axis=1) / D
    mean_gx = tl.sum(g * xhat, axis=1) / D
    ds = (g - mean_g[:, None] - xhat * mean_gx[:, None]) * rstd[:, None]
    return tl.where(mask, ds, 0.0), tl.sum(dy * xhat, axis=0), tl.sum(dy, axis=0)


@triton.jit
def store_partials(PARTIAL, D, dgamma, dbeta, dbias, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's row sums into ``PARTIAL[program, k, :]`` ([G, K, D] fp32, K = 2 + HAS_BIAS)."""
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    base = PARTIAL + tl.program_id(0).to(tl.int64) * (2 + HAS_BIAS) * D  # K = 2 + HAS_BIAS rows a program
    tl.store(base + cols, dgamma, mask=col_ok)
    tl.store(base + D + cols, dbeta, mask=col_ok)
    if HAS_BIAS:
        tl.store(base + 2 * D + cols, dbias, mask=col_ok)


@triton.autotune(configs=SUM_CONFIGS, key=["M"])
@triton.jit
def _sum_partials_kernel(
    PARTIAL,  # [G, M] fp32, one row of parameter-grad sums per backward program
    OUT,  # [M] fp32
    G,
    M,
    BLOCK_G: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    cols = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    col_ok = cols < M
    acc = tl.zeros((BLOCK_G, BLOCK_M), dtype=tl.float32)
    for start in range(0, G, BLOCK_G):
        programs = start + tl.arange(0, BLOCK_G)
        offsets = programs.to(tl.int64)[:, None] * M + cols[None, :]
        acc += tl.load(PARTIAL + offsets, mask=(programs < G)[:, None] & col_ok[None, :], other=0.0)
    tl.store(OUT + cols, tl.sum(acc, axis=0), mask=col_ok)


# --------------------------------------------------------------------------- launch helpers
def block_d(d: int) -> int:
    """Columns of a row tile: the next power of two >= d."""
    return triton.next_power_of_2(d)


def forward_grid(n_rows: int):
    """Grid of a forward row kernel: one program per row tile."""
    return lambda meta: (triton.cdiv(n_rows, meta["BLOCK_ROWS"]),)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def backward_programs(x: torch.Tensor) -> int:
    """``G``, the number of backward programs (rows of the partial-sum buffer).

    Set by the device and N, not by the autotuned tile, so the partial buffer can be
    sized before the launch: four programs per SM keep the SMs busy, and at least 16
    rows a program keep the [G, K, D] fp32 buffer (written and read once more) small
    next to the [N, D] tensors: at d = 768 on an H100, N = 16384 gives G = 528 and
    4.9 MB against ~126 MB of bf16 traffic, N = 2458 gives G = 154 and 1.4 MB against 19 MB.
    """
    n_rows = x.shape[0]
    if not x.is_cuda:  # interpreter: few programs, each walks large tiles
        return max(1, min(n_rows, 4))
    return max(1, min(triton.cdiv(n_rows, 16), 4 * _sm_count(x.device.index or 0)))


def new_forward_outputs(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y [N, D] like x, mean [N] fp32, rstd [N] fp32), uninitialised (also the fake impls' outputs)."""
    mean = x.new_empty(x.shape[0], dtype=torch.float32)
    return torch.empty_like(x), mean, torch.empty_like(mean)


def n_param_grads(bias: Optional[torch.Tensor]) -> int:
    """K, the parameter grads summed over rows: dgamma, dbeta, and dbias when there is a bias."""
    return 2 if bias is None else 3


def empty_param_grad_totals(x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The [K, D] fp32 row sums the backward returns (uninitialised; also the fake impls' output)."""
    return x.new_empty((n_param_grads(bias), x.shape[1]), dtype=torch.float32)


def new_partials(x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The [G, K, D] fp32 partial-sum buffer of a backward launch (the kernel writes every entry)."""
    return x.new_empty((backward_programs(x), n_param_grads(bias), x.shape[1]), dtype=torch.float32)


def sum_partials(partials: torch.Tensor) -> torch.Tensor:
    """Stage two: [G, K, D] fp32 partial sums -> [K, D] fp32 totals, in a fixed order."""
    n_programs, n_sums, d = partials.shape
    total = partials.new_empty((n_sums, d))
    m = n_sums * d
    _sum_partials_kernel[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),)](partials, total, n_programs, m)
    return total


def split_param_grads(
    totals: torch.Tensor,  # [K, D] fp32: dgamma, dbeta, then dbias when K == 3
    weight: torch.Tensor,
    ln_bias: torch.Tensor,
    bias: Optional[torch.Tensor],
) -> Tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
    """(dbias or None, dweight, dln_bias), each in its parameter's dtype."""
    dbias = None if bias is None else totals[2].to(bias.dtype)
    return dbias, totals[0].to(weight.dtype), totals[1].to(ln_bias.dtype)


# --------------------------------------------------------------------------- validation
def check_device(op: str, name: str, t: torch.Tensor, device: torch.device):
    if t.device != device:
        raise ValueError(f"{op}: {name} is on {t.device} but x is on {device}; move it with .to(x.device)")


def check_kernel_device(op: str, x: torch.Tensor):
    """``x`` is where the kernels run: a CUDA tensor, or any tensor under the interpreter."""
    if not (x.is_cuda or INTERPRETING):
        raise ValueError(
            f"{op}: x is on {x.device}; the Triton kernels need a CUDA tensor, or TRITON_INTERPRET=1 "
            f"set before triton is imported to run them on CPU (use backend='torch' otherwise)"
        )


def check_float(op: str, name: str, t: torch.Tensor):
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{op}: {name} must be float32, float16 or bfloat16, got {t.dtype}; cast it with .float()")


def validate_rows(
    op: str,
    x: torch.Tensor,
    vectors: Dict[str, Optional[torch.Tensor]],
    rows_like_x: Dict[str, torch.Tensor],
    eps: float,
    optional: Tuple[str, ...] = ("bias",),
) -> Tuple[torch.Tensor, Dict[str, Optional[torch.Tensor]], Dict[str, torch.Tensor]]:
    """Check the inputs of a row-wise LayerNorm op and return them ready for the kernels.

    ``x`` [..., d] becomes a contiguous [N, d]; each of ``vectors`` must be [d] (or ``None``
    when its name is in ``optional``); each of ``rows_like_x`` must have x's shape and becomes a
    contiguous [N, d]. Raises ``ValueError`` naming the argument and the fix.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    check_float(op, "x", x)
    if x.dim() < 1 or x.shape[-1] < 1 or x.shape[-1] > MAX_D:
        raise ValueError(
            f"{op}: x must be [..., d] with 1 <= d <= {MAX_D}, got shape {tuple(x.shape)}; "
            f"use the torch backend for wider rows"
        )
    check_kernel_device(op, x)
    if not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"{op}: eps must be a float >= 0, got {eps!r}")
    d = x.shape[-1]
    checked_vectors = {}
    for name, t in vectors.items():
        if t is None and name not in optional:
            raise ValueError(f"{op}: {name} must be a [d={d}] tensor, got None")
        if t is not None:
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != (d,):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{op}: {name} must have shape [d={d}] (x's last dim), got {got}")
            check_float(op, name, t)
            check_device(op, name, t, x.device)
            t = t.contiguous()
        checked_vectors[name] = t
    checked_rows = {}
    for name, t in rows_like_x.items():
        if not isinstance(t, torch.Tensor) or t.shape != x.shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{op}: {name} must have x's shape {tuple(x.shape)}, got {got}")
        check_float(op, name, t)
        check_device(op, name, t, x.device)
        checked_rows[name] = t.reshape(-1, d).contiguous()
    return x.reshape(-1, d).contiguous(), checked_vectors, checked_rows
