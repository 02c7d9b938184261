"""Masked-position loss: gather + tied-decoder linear + cross-entropy, never the full logits.

Math. For the ``M`` selected rows ``x_i = hidden[positions[i]]`` (all ``N`` rows when
``positions`` is None), decoder ``W [V, d]`` (tied to the word embeddings) and bias
``b [V]``::

    z_i       = W x_i + b                                   logits, [V] per row
    lse_i     = log sum_v exp(z_iv)                         online, over V-blocks
    loss      = sum_{i valid} (lse_i - z_{i, t_i}) / max(n_valid, 1)
    n_correct = #{i valid : argmax_v z_iv == t_i}

``valid`` means ``t_i != ignore_index``. With no valid row (``M = 0`` or every target
ignored) the loss is exactly 0.0 and every gradient is zero. Backward, with
``g = dL/dloss`` and ``s = g / max(n_valid, 1)``::

    dZ_i      = s * (softmax(z_i) - onehot(t_i))            0 for ignored rows
    dW        = dZ^T X          db = sum_i dZ_i             dX = dZ W
    dhidden[positions[i]] += dX_i                           a row selected twice accumulates

Argmax ties: the smallest vocabulary index among the maximal logits wins, as
``torch.argmax`` does (within a V-block by a min over the tied columns; across
V-blocks a later block must be strictly larger; across V-splits ``torch.argmax``
over the split maxima takes the first split). The logits are our fp32 dot products,
so a tie against the reference's logits can still resolve differently when two
logits are equal to the last bit in one and not the other.

Shapes and dtypes. hidden ``[N, d]``, weight ``[V, d]``, bias ``[V]`` all share one
dtype (fp32, bf16 or fp16; row-major, unit stride along ``d``); positions and
targets ``[M]`` int64. The functional API casts fp32 weight/bias to bf16/fp16
``hidden``'s dtype (autocast's fp32 master weights), as ``F.linear`` under autocast does. Products are fp32-accumulated ``tl.dot`` over d-chunks.

Forward (one kernel, a GEMM with a log-sum-exp epilogue). Programs tile
``(M-blocks) x (V-splits)``; each walks its V-split in ``[BLOCK_M, BLOCK_V]``
logit tiles and keeps, per row, the running max, the running sum of exponentials,
the best logit with its first index and the target's logit. A few ``[splits, M]``
partials are merged in PyTorch. The V-split only exists to fill the GPU when M is
small (2458 masked rows are 20 blocks of 128 for 132 SMs).

Saved for backward: the inputs (already alive) and ``lse [M]`` fp32 (4 bytes a row),
so the backward recomputes each logit tile exactly once instead of keeping the
``[M, V]`` logits.

Backward. V is cut into column chunks sized so that one ``[M, chunk]`` block of
``s * (softmax - onehot)`` (in the input dtype, 160 MiB at most) is all that exists at a
time; at BERT-base's training shapes that is one chunk, the whole vocabulary. For each
chunk a Triton kernel recomputes the logit tiles (tiling ``(M-blocks) x (V-blocks)``, no
loop-carried state, so every SM is busy) and writes ``dZ`` with the scale already applied,
in rows padded to 64 columns (zeros past the chunk: the stores vectorise, and a GEMM reading
past the view finds no garbage). The same kernel writes the fp32 column sums of each 64-row
group of its tile; PyTorch sums the groups (a fixed-shape reduction, no atomics) into ``db``.
Two cuBLAS GEMMs then give ``dW[chunk] = dZ^T X`` (complete: all M rows, fp32 accumulation
inside the GEMM) and ``dX = dZ W``: with one chunk a single GEMM written once in the input
dtype; with several, summed over chunks into an fp32 ``dX [M, d]`` (for bf16/fp16 one GEMM
that reads the accumulator, ``addmm(..., out_dtype=float32)``, where torch has it) and cast
at the end. Folding ``s`` into ``dZ`` saves a pass over ``dW``; in fp16, entries ``s * p``
below fp16's smallest subnormal (6e-8) round to zero, as in PyTorch's own fp16 logits
gradient (GradScaler's large ``g`` is what keeps them).
No atomics: the scatter of ``dX`` back to ``hidden``'s rows is
``index_put_(accumulate=True)``, which PyTorch runs sort-based (deterministic) on CUDA.
Bytes moved per call, buffer by buffer: ``benchmarks/loss_bytes.py`` (at the shapes below,
bf16: 0.58 GB as the pre-training heads call it, on rows gathered before the head's
transform; 0.63 GB with ``positions`` into 16384 hidden rows, 25 MB of it the zero-filled
``[N, d]`` gradient).
Why not Triton for the two backward GEMMs: a kernel owning a block of ``dW`` or
``dX`` rows must hold a ``[BLOCK, d]`` fp32 accumulator (d = 768, 1024), which does
not fit in registers, and splitting d means recomputing the logits once per d-slice;
cuBLAS at these shapes already runs near peak.
Extra memory of forward+backward at 16384 tokens, M = 2458, V = 28996, d = 768, bf16
(arithmetic): the gradients themselves (dW 44.5 MB, dhidden 25 MB) plus the 143 MB dZ block
(one chunk), the 5 MB of bias partial sums and the 4 MB gathered rows: ~220 MB at the peak,
against ~790 MB for gather + F.cross_entropy (793 MB measured on one H100).

Validation. Shapes, dtypes, devices and strides are checked for free. Value ranges
(positions in ``[0, N)``, targets in ``[0, V)`` or ``== ignore_index``) need one
device-to-host sync on GPU: on by default (``validate=True``); pass
``validate=False`` in a sync-free training step (they are skipped while a CUDA graph is captured).
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._autotune import fp32_tunes_one_config
from ._host_sync import may_sync
from ._interpreter import interpreting

_INTERPRET = interpreting()  # read once, as Triton does when it wraps the kernels
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Largest [M, chunk] block of (softmax - onehot) the backward keeps at once. 160 MiB holds the
# whole vocabulary at BERT-base's training shapes (M = 2458 masked rows x 28996 columns in bf16 =
# 136 MiB), so there is one chunk and dX is one GEMM written once in the input dtype; larger M
# or V fall back to column chunks with an fp32 dX accumulator.
DLOGITS_CHUNK_BYTES = 160 * 2**20
# V-splits (forward) and V-chunks (backward) are multiples of this many columns.
_COLUMN_QUANTUM = 256


# --------------------------------------------------------------------------- Triton kernels
@triton.jit
def _logit_tile(
    H,  # [*, D] rows of hidden
    src_rows,  # [BLOCK_M] int64 row index into H
    row_mask,  # [BLOCK_M] bool
    W,  # [V, D]
    cols,  # [BLOCK_V] int32 vocabulary index
    col_mask,  # [BLOCK_V] bool
    B,  # [V] or dummy
    D,
    stride_h,
    stride_w,
    HAS_BIAS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """fp32 ``[BLOCK_M, BLOCK_V]`` tile of ``H[src_rows] @ W[cols]^T + B[cols]``.

    ``DOT_IN_FP32``: upcast the operands first. Only for bf16 under the interpreter,
    which holds bf16 as raw uint16 and would multiply the bit patterns as integers.
    """
    h_ptrs = H + src_rows[:, None] * stride_h
    w_ptrs = W + cols.to(tl.int64)[:, None] * stride_w
    acc = tl.zeros((BLOCK_M, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_D):
        ks = k0 + tl.arange(0, BLOCK_D)
        k_mask = ks < D
        h = tl.load(h_ptrs + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptrs + ks[None, :], mask=col_mask[:, None] & k_mask[None, :], other=0.0)
        if DOT_IN_FP32:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, tl.trans(w), acc, input_precision=INPUT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _forward_stats_kernel(
    H,  # [N, D] hidden, fp32/bf16/fp16
    P,  # [M] int64 positions (rows of H), or dummy when not HAS_POSITIONS
    T,  # [M] int64 targets
    W,  # [V, D] decoder weight, same dtype as H
    B,  # [V] decoder bias, or dummy when not HAS_BIAS
    ROW_MAX,  # [SPLITS, M] fp32 max logit of the row within the split
    ROW_SUMEXP,  # [SPLITS, M] fp32 sum of exp(logit - ROW_MAX) within the split
    BEST_COL,  # [SPLITS, M] int32 first column holding ROW_MAX within the split
    TARGET_LOGIT,  # [SPLITS, M] fp32 target's logit if the target is in the split, else 0
    M,
    V,
    D,
    cols_per_split,
    stride_h,
    stride_w,
    HAS_POSITIONS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    if HAS_POSITIONS:
        src_rows = tl.load(P + rows, mask=row_mask, other=0).to(tl.int64)
    else:
        src_rows = rows.to(tl.int64)
    targets = tl.load(T + rows, mask=row_mask, other=-1)

    v_start = split * cols_per_split
    v_end = tl.minimum(v_start + cols_per_split, V)
    run_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    best_col = tl.zeros((BLOCK_M,), dtype=tl.int32)
    target_logit = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < v_end
        z = _logit_tile(
            H, src_rows, row_mask, W, cols, col_mask, B, D, stride_h, stride_w,
            HAS_BIAS, INPUT_PRECISION, DOT_IN_FP32, BLOCK_M, BLOCK_V, BLOCK_D,
        )
        z = tl.where(col_mask[None, :], z, float("-inf"))
        tile_max = tl.max(z, axis=1)
        # first column reaching the tile max (ties -> smallest index, as torch.argmax)
        tile_best = tl.min(tl.where(z == tile_max[:, None], cols[None, :], V), axis=1)
        best_col = tl.where(tile_max > run_max, tile_best, best_col)  # strict: earlier block wins ties
        new_max = tl.maximum(run_max, tile_max)
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(z - new_max[:, None]), axis=1)
        run_max = new_max
        is_target = (cols[None, :] == targets[:, None]) & col_mask[None, :]  # not a later split's column
        target_logit += tl.sum(tl.where(is_target, z, 0.0), axis=1)

    out = split * M + rows
    tl.store(ROW_MAX + out, run_max, mask=row_mask)
    tl.store(ROW_SUMEXP + out, run_sum, mask=row_mask)
    tl.store(BEST_COL + out, best_col, mask=row_mask)
    tl.store(TARGET_LOGIT + out, target_logit, mask=row_mask)


@triton.jit
def _dlogits_kernel(
    X,  # [M, D] selected rows of hidden (gathered), fp32/bf16/fp16
    T,  # [M] int64 targets
    W,  # [V, D] decoder weight
    B,  # [V] decoder bias, or dummy when not HAS_BIAS
    LSE,  # [M] fp32 log-sum-exp of each row's logits (from the forward)
    SCALE,  # [] fp32 s = grad_loss / max(n_valid, 1)
    DZ,  # [M, >= padded_cols] s * (softmax - onehot) for columns v_begin .. v_begin+chunk_cols, X's dtype
    DB_PARTIAL,  # [>= cdiv(M, DB_GROUP), >= chunk_cols] fp32 column sums of DZ per DB_GROUP rows, or dummy
    M,
    V,
    D,
    v_begin,
    chunk_cols,
    padded_cols,  # columns written per row: chunk_cols rounded up; those past chunk_cols get 0
    ignore_index,
    stride_x,
    stride_w,
    stride_dz,
    stride_db,
    HAS_BIAS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    DB_GROUP: tl.constexpr,  # rows per bias-gradient partial sum; divides BLOCK_M
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    local_cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    cols = v_begin + local_cols
    col_mask = (local_cols < chunk_cols) & (cols < V)
    z = _logit_tile(
        X, rows.to(tl.int64), row_mask, W, cols, col_mask, B, D, stride_x, stride_w,
        HAS_BIAS, INPUT_PRECISION, DOT_IN_FP32, BLOCK_M, BLOCK_V, BLOCK_D,
    )
    lse = tl.load(LSE + rows, mask=row_mask, other=0.0)
    targets = tl.load(T + rows, mask=row_mask, other=ignore_index)
    valid = row_mask & (targets != ignore_index)
    scale = tl.load(SCALE)
    dz = scale * (tl.exp(z - lse[:, None]) - tl.where(cols[None, :] == targets[:, None], 1.0, 0.0))
    dz = tl.where(valid[:, None] & col_mask[None, :], dz, 0.0)
    # padded_cols is a multiple of 64 and the row stride of 16: the store vectorises
    dz_ptrs = DZ + rows.to(tl.int64)[:, None] * stride_dz + local_cols[None, :]
    tl.store(dz_ptrs, dz.to(DZ.dtype.element_ty), mask=row_mask[:, None] & (local_cols < padded_cols)[None, :])
    if HAS_BIAS:  # db: fp32 column sums of DB_GROUP-row groups, summed over groups in a fixed order later
        group_in_tile = tl.arange(0, BLOCK_M) // DB_GROUP
        for g in tl.static_range(BLOCK_M // DB_GROUP):
            partial = tl.sum(tl.where((group_in_tile == g)[:, None], dz, 0.0), axis=0)
            group_row = pid_m * (BLOCK_M // DB_GROUP) + g
            tl.store(DB_PARTIAL + group_row * stride_db + local_cols, partial, mask=local_cols < chunk_cols)


# Tuning choices, one list per kernel (BLOCK_M, BLOCK_V, BLOCK_D, warps, stages), for
# H100-class GPUs. Under the interpreter instead one config with large blocks
# (_interpreter_blocks): its cost is (programs x loop iterations) of numpy calls.
_FORWARD_STATS_CONFIGS = [  # a GEMM whose epilogue keeps per-row running state
    (128, 128, 64, 8, 3),  # none spills on sm_90 (ptxas, Triton 3.9 and 3.6; benchmarks/static_report.py):
    (128, 64, 64, 8, 3),  # dropped 128 x 256, 64 x 256, 4-warp 64 x 128 and 128 x 64 (8-36 B),
    (64, 128, 64, 8, 3),  # 128 x 128 with BLOCK_D 128 or 2/4 stages (8 B)
    (64, 128, 128, 8, 3),
    (64, 64, 64, 4, 3),
]
_DLOGITS_CONFIGS = [  # one output tile per program, stored in the input dtype
    (128, 128, 64, 8, 3),  # 128 x 256 tiles spill registers (ptxas, sm_90, fp16 without bias)
    (128, 128, 64, 4, 4),
    (128, 128, 128, 8, 3),
    (64, 128, 64, 4, 4),
    (64, 256, 64, 8, 3),
]


def _triton_configs(shapes):
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_V": bv, "BLOCK_D": bd}, num_warps=w, num_stages=s)
        for bm, bv, bd, w, s in shapes
    ]


if _INTERPRET:
    _forward_stats = _forward_stats_kernel
    _dlogits = _dlogits_kernel
else:  # key: autotuning per (D, V) and dtype (the autotuner adds dtypes), never per M
    _fp32 = fp32_tunes_one_config(_triton_configs([(64, 128, 32, 4, 2)])[0], "W")  # parity tests: not tuned
    _forward_stats = triton.autotune(_triton_configs(_FORWARD_STATS_CONFIGS), key=["D", "V"],
                                     prune_configs_by=_fp32)(_forward_stats_kernel)
    _dlogits = triton.autotune(_triton_configs(_DLOGITS_CONFIGS), key=["D", "V"], prune_configs_by=_fp32)(_dlogits_kernel)


def _interpreter_blocks(M: int, V: int, D: int) -> dict:
    def pow2(n, lo, hi):
        return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))

    return {"BLOCK_M": pow2(M, 16, 128), "BLOCK_V": pow2(V, 16, 1024), "BLOCK_D": pow2(D, 16, 256)}


# --------------------------------------------------------------------------- launch functions
def _check_inputs(hidden, targets, weight, bias, positions):
    """Shape, dtype, device and stride checks (no device sync)."""
    for name, t in (("hidden", hidden), ("targets", targets), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"masked_lm_loss: {name} must be a torch.Tensor, got {type(t).__name__}")
    if hidden.dim() != 2:
        raise ValueError(f"masked_lm_loss: hidden must be [N, d], got shape {tuple(hidden.shape)}")
    if hidden.shape[1] == 0:
        raise ValueError("masked_lm_loss: hidden must have d >= 1 columns, got d = 0")
    if hidden.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"masked_lm_loss: hidden must be float32, bfloat16 or float16, got {hidden.dtype}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"masked_lm_loss: weight must be [V, d={hidden.shape[1]}] (d as in hidden), "
            f"got shape {tuple(weight.shape)}"
        )
    if weight.shape[0] == 0:
        raise ValueError("masked_lm_loss: weight must have at least one vocabulary row, got V = 0")
    if weight.dtype != hidden.dtype:
        raise ValueError(
            f"masked_lm_loss: weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}; "
            "cast one of them (e.g. weight.to(hidden.dtype))"
        )
    if bias is not None:
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(
                f"masked_lm_loss: bias must be [V={weight.shape[0]}] or None, got shape {tuple(bias.shape)}"
            )
        if bias.dtype != hidden.dtype:
            raise ValueError(
                f"masked_lm_loss: bias dtype {bias.dtype} differs from hidden dtype {hidden.dtype}; "
                "cast it (bias.to(hidden.dtype))"
            )
    if positions is not None:
        if positions.dim() != 1:
            raise ValueError(f"masked_lm_loss: positions must be [M], got shape {tuple(positions.shape)}")
        if positions.dtype != torch.int64:
            raise ValueError(f"masked_lm_loss: positions must be int64, got {positions.dtype}; use positions.long()")
    rows = hidden.shape[0] if positions is None else positions.shape[0]
    if targets.dim() != 1 or targets.shape[0] != rows:
        raise ValueError(
            f"masked_lm_loss: targets must be [M={rows}] (one per selected row), got shape {tuple(targets.shape)}"
        )
    if targets.dtype != torch.int64:
        raise ValueError(f"masked_lm_loss: targets must be int64, got {targets.dtype}; use targets.long()")
    named = [("hidden", hidden), ("targets", targets), ("weight", weight), ("bias", bias), ("positions", positions)]
    for name, t in named:
        if t is not None and t.device != hidden.device:
            raise ValueError(f"masked_lm_loss: {name} is on {t.device} but hidden is on {hidden.device}; move it")
    for name, t in (("hidden", hidden), ("weight", weight)):
        if t.stride(1) != 1 and t.shape[1] > 1:
            raise ValueError(f"masked_lm_loss: {name} must have unit stride along d; pass {name}.contiguous()")


def _check_values(targets, positions, n_rows: int, vocab: int, ignore_index: int):
    """Range checks: one device-to-host sync on GPU (skipped with validate=False)."""
    if targets.numel() == 0:
        return
    bad_target = ((targets < 0) | (targets >= vocab)) & (targets != ignore_index)
    flags = [bad_target.any()]
    if positions is not None:
        flags.append(((positions < 0) | (positions >= n_rows)).any())
    flags = torch.stack(flags).tolist()
    if flags[0]:
        first = targets[bad_target][0].item()
        raise ValueError(
            f"masked_lm_loss: targets must lie in [0, V={vocab}) or equal ignore_index={ignore_index}, "
            f"found {first}; fix the labels or pass the ignore_index you use"
        )
    if len(flags) > 1 and flags[1]:
        raise ValueError(
            f"masked_lm_loss: positions must lie in [0, N={n_rows}) (rows of hidden), found "
            f"min {positions.min().item()}, max {positions.max().item()}"
        )


def _input_precision(dtype: torch.dtype) -> Optional[str]:
    """fp32 dots follow torch's TF32 switch for matmuls; bf16/fp16 take Triton's default."""
    if dtype != torch.float32:
        return None
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 and not _INTERPRET else "ieee"


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _vocab_splits(M: int, V: int, device: torch.device) -> int:
    """Columns per V-split: enough splits that (M-blocks x splits) covers ~2 waves of SMs."""
    if _INTERPRET or device.type != "cuda":
        return V
    m_blocks = triton.cdiv(max(M, 1), 128)
    want = max(1, min(triton.cdiv(2 * _sm_count(device.index or 0), m_blocks), triton.cdiv(V, 1024)))
    return triton.cdiv(triton.cdiv(V, want), _COLUMN_QUANTUM) * _COLUMN_QUANTUM


def masked_lm_loss_forward(
    hidden: torch.Tensor,  # [N, d]
    targets: torch.Tensor,  # [M] int64
    weight: torch.Tensor,  # [V, d]
    bias: Optional[torch.Tensor],  # [V] or None
    positions: Optional[torch.Tensor],  # [M] int64 or None (= all N rows)
    ignore_index: int = -100,
    validate: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward: returns ``(loss fp32 [], n_correct int64 [], lse fp32 [M])``."""
    _check_inputs(hidden, targets, weight, bias, positions)
    N, D = hidden.shape
    V = weight.shape[0]
    M = targets.shape[0]
    if validate and may_sync(targets):
        _check_values(targets, positions, N, V, ignore_index)
    device = hidden.device
    if M == 0:
        zero = torch.zeros((), dtype=torch.float32, device=device)
        return zero, torch.zeros((), dtype=torch.int64, device=device), torch.empty(0, dtype=torch.float32, device=device)

    targets = targets.contiguous()
    positions = positions.contiguous() if positions is not None else None
    bias = bias.contiguous() if bias is not None else None
    cols_per_split = _vocab_splits(M, V, device)
    splits = triton.cdiv(V, cols_per_split)
    row_max = torch.empty(splits, M, dtype=torch.float32, device=device)
    row_sumexp = torch.empty_like(row_max)
    target_logit = torch.empty_like(row_max)
    best_col = torch.empty(splits, M, dtype=torch.int32, device=device)
    blocks = _interpreter_blocks(M, V, D) if _INTERPRET else {}
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), splits)  # noqa: E731
    _forward_stats[grid](
        hidden,  # [N, D]
        positions if positions is not None else targets,  # [M] int64 (dummy when None)
        targets,  # [M] int64
        weight,  # [V, D]
        bias if bias is not None else weight,  # [V] (dummy when None)
        row_max,  # [splits, M] fp32
        row_sumexp,  # [splits, M] fp32
        best_col,  # [splits, M] int32
        target_logit,  # [splits, M] fp32
        M, V, D, cols_per_split, hidden.stride(0), weight.stride(0),
        HAS_POSITIONS=positions is not None,
        HAS_BIAS=bias is not None,
        INPUT_PRECISION=_input_precision(hidden.dtype),
        DOT_IN_FP32=_INTERPRET and hidden.dtype == torch.bfloat16,
        **blocks,
    )
    # merge the V-splits: a log-sum-exp of partial sums; argmax = first split holding the max
    top = row_max.max(dim=0).values
    lse = top + torch.log((row_sumexp * torch.exp(row_max - top)).sum(dim=0))
    best_split = row_max.argmax(dim=0, keepdim=True)
    prediction = best_col.gather(0, best_split).squeeze(0).long()
    valid = targets != ignore_index
    row_loss = torch.where(valid, lse - target_logit.sum(dim=0), torch.zeros_like(lse))
    n_valid = valid.sum()
    loss = row_loss.sum() / n_valid.clamp(min=1)
    n_correct = ((prediction == targets) & valid).sum()
    return loss, n_correct, lse


def _dlogits_chunk_cols(M: int, V: int, element_size: int) -> int:
    """Columns per backward chunk: the [M, chunk] block stays under DLOGITS_CHUNK_BYTES."""
    cols = DLOGITS_CHUNK_BYTES // max(1, M * element_size)
    cols = max(_COLUMN_QUANTUM, cols // _COLUMN_QUANTUM * _COLUMN_QUANTUM)
    return min(cols, V)


def _padded_cols(cols: int) -> int:
    """Row length of the dlogits block: ``cols`` rounded up to 64 (128-byte rows in 16 bits)."""
    return triton.cdiv(cols, 64) * 64


# The bias gradient: the dlogits kernel writes fp32 column sums of each group of _DB_GROUP
# rows (whatever BLOCK_M its config has), and the groups are summed in PyTorch.
_DB_GROUP = 64
_MAX_DLOGITS_BLOCK_M = 128
assert all(c[0] % _DB_GROUP == 0 and c[0] <= _MAX_DLOGITS_BLOCK_M for c in _DLOGITS_CONFIGS + [(64,)])


def _db_partial_rows(M: int) -> int:
    """Rows of the partial-sum buffer: enough for the grid of any BLOCK_M (the last block of a
    128-row config writes a group of padding rows, zeros, that is never summed)."""
    return triton.cdiv(M, _MAX_DLOGITS_BLOCK_M) * (_MAX_DLOGITS_BLOCK_M // _DB_GROUP)


def _write_dlogits(dz, db_partial, x, targets, weight, bias, lse, scale, v_begin: int, cols: int,
                   ignore_index: int) -> None:
    """``dz[:, :cols] = s * (softmax - onehot)`` of vocabulary columns ``v_begin .. v_begin + cols``
    (0 for ignored rows), ``dz[:, cols:_padded_cols(cols)] = 0``, and with a bias
    ``db_partial[g, :cols]`` = the fp32 sum of rows ``64 g .. 64 g + 63`` of it."""
    M, D = x.shape
    V = weight.shape[0]
    padded_cols = _padded_cols(cols)
    blocks = {}
    if _INTERPRET:
        blocks = _interpreter_blocks(M, padded_cols, D)
        blocks["BLOCK_M"] = max(blocks["BLOCK_M"], _DB_GROUP)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(padded_cols, meta["BLOCK_V"]))  # noqa: E731
    _dlogits[grid](
        x,  # [M, D]
        targets,  # [M] int64
        weight,  # [V, D]
        bias if bias is not None else weight,  # [V] (dummy when None)
        lse,  # [M] fp32
        scale,  # [] fp32
        dz,  # [M, >= padded_cols]
        db_partial if db_partial is not None else lse,  # [groups, >= cols] fp32 (dummy when no bias)
        M, V, D, v_begin, cols, padded_cols, ignore_index, x.stride(0), weight.stride(0), dz.stride(0),
        db_partial.stride(0) if db_partial is not None else 0,
        HAS_BIAS=bias is not None,
        INPUT_PRECISION=_input_precision(x.dtype),
        DOT_IN_FP32=_INTERPRET and x.dtype == torch.bfloat16,
        DB_GROUP=_DB_GROUP,
        **blocks,
    )


_MM_OUT_DTYPE_WORKS: dict = {}  # (device type, dtype, "mm" | "addmm") -> does torch take out_dtype there


def _mm_out_dtype(name: str, a: torch.Tensor, call):
    """``call()`` (a GEMM with ``out_dtype=torch.float32``) where this torch has it, else None."""
    key = (a.device.type, a.dtype, name)
    if not a.is_cuda or not _MM_OUT_DTYPE_WORKS.get(key, True):
        return None
    try:
        out = call()
    except (TypeError, RuntimeError, NotImplementedError):
        _MM_OUT_DTYPE_WORKS[key] = False
        return None
    _MM_OUT_DTYPE_WORKS[key] = True
    return out


def _matmul_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with an fp32 result; bf16/fp16 inputs keep fp32 out of cuBLAS when torch can."""
    if a.dtype == torch.float32:
        return torch.mm(a, b)
    out = _mm_out_dtype("mm", a, lambda: torch.mm(a, b, out_dtype=torch.float32))
    return out if out is not None else torch.mm(a, b).float()


def _add_matmul_fp32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``acc + a @ b`` for an fp32 ``acc``: one GEMM that reads ``acc`` (cuBLAS beta = 1) where
    torch can, else a GEMM into an fp32 temporary and an add."""
    if a.dtype == torch.float32:
        return acc.addmm_(a, b)
    out = _mm_out_dtype("addmm", a, lambda: torch.addmm(acc, a, b, out_dtype=torch.float32))
    return out if out is not None else acc.add_(_matmul_fp32(a, b))


def masked_lm_loss_backward(
    grad_loss: torch.Tensor,  # [] fp32
    hidden: torch.Tensor,  # [N, d]
    targets: torch.Tensor,  # [M] int64
    weight: torch.Tensor,  # [V, d]
    bias: Optional[torch.Tensor],  # [V] or None
    positions: Optional[torch.Tensor],  # [M] int64 or None
    lse: torch.Tensor,  # [M] fp32 from the forward
    ignore_index: int = -100,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward: returns ``(dhidden [N, d], dweight [V, d], dbias fp32 [V])``."""
    N, D = hidden.shape
    V = weight.shape[0]
    M = targets.shape[0]
    device = hidden.device
    if M == 0:
        return torch.zeros_like(hidden), torch.zeros_like(weight), torch.zeros(V, dtype=torch.float32, device=device)

    targets = targets.contiguous()
    bias = bias.contiguous() if bias is not None else None
    x = hidden if positions is None else hidden.index_select(0, positions)  # [M, D]
    x = x.contiguous()
    valid = targets != ignore_index
    scale = (grad_loss.float() / valid.sum().clamp(min=1)).reshape(())  # [] fp32, no sync

    chunk = _dlogits_chunk_cols(M, V, hidden.element_size())
    # [M, chunk] s * (softmax - onehot); rows padded to 64 columns so that every row starts
    # 128-byte aligned and the stores vectorise. The kernel writes each chunk's columns
    # rounded up to 64 (zeros past the chunk): a CPU bf16 GEMM (oneDNN's AMX brgemm) reads
    # its K-tail past the view's columns, so NaN/Inf left there by an earlier allocation
    # would poison whole rows of dX.
    dz = torch.empty(M, _padded_cols(chunk), dtype=hidden.dtype, device=device)
    db_partial = None if bias is None else torch.empty(_db_partial_rows(M), chunk, dtype=torch.float32, device=device)
    db_groups = triton.cdiv(M, _DB_GROUP)
    dweight = torch.empty_like(weight, memory_format=torch.contiguous_format)
    dbias = torch.zeros(V, dtype=torch.float32, device=device) if bias is None else torch.empty(
        V, dtype=torch.float32, device=device)
    dx = None  # [M, D]: dz @ W in one GEMM when one chunk covers V, else the fp32 sum over chunks
    for v_begin in range(0, V, chunk):
        cols = min(chunk, V - v_begin)
        _write_dlogits(dz, db_partial, x, targets, weight, bias, lse, scale, v_begin, cols, ignore_index)
        dz_chunk = dz[:, :cols]
        torch.mm(dz_chunk.t(), x, out=dweight[v_begin : v_begin + cols])
        if db_partial is not None:  # the groups in order: the same sum every run
            torch.sum(db_partial[:db_groups, :cols], dim=0, out=dbias[v_begin : v_begin + cols])
        w_chunk = weight[v_begin : v_begin + cols]
        if chunk == V:  # the only chunk: fp32 accumulation inside the GEMM, one rounding, no temporary
            dx = torch.mm(dz_chunk, w_chunk)
        else:
            dx = _matmul_fp32(dz_chunk, w_chunk) if dx is None else _add_matmul_fp32(dx, dz_chunk, w_chunk)
    del dz, dz_chunk, db_partial  # free the chunk before dhidden [N, d] is allocated (lower peak)
    dx = dx.to(hidden.dtype)  # no copy when it already is
    if positions is None:
        return dx, dweight, dbias
    dhidden = torch.zeros_like(hidden, memory_format=torch.contiguous_format)
    dhidden.index_put_((positions,), dx, accumulate=True)  # duplicates add up
    return dhidden, dweight, dbias


# --------------------------------------------------------------------------- torch.library op
@torch.library.custom_op("spanbert_fast::masked_lm_loss_fwd", mutates_args=())
def _masked_lm_loss_fwd_op(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    positions: Optional[torch.Tensor],
    ignore_index: int,
    validate: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return masked_lm_loss_forward(hidden, targets, weight, bias, positions, ignore_index, validate)


@_masked_lm_loss_fwd_op.register_fake
def _(hidden, targets, weight, bias, positions, ignore_index, validate):
    _check_inputs(hidden, targets, weight, bias, positions)
    loss = hidden.new_empty((), dtype=torch.float32)
    n_correct = hidden.new_empty((), dtype=torch.int64)
    lse = hidden.new_empty((targets.shape[0],), dtype=torch.float32)
    return loss, n_correct, lse


@torch.library.custom_op("spanbert_fast::masked_lm_loss_bwd", mutates_args=())
def _masked_lm_loss_bwd_op(
    grad_loss: torch.Tensor,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    positions: Optional[torch.Tensor],
    lse: torch.Tensor,
    ignore_index: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return masked_lm_loss_backward(grad_loss, hidden, targets, weight, bias, positions, lse, ignore_index)


@_masked_lm_loss_bwd_op.register_fake
def _(grad_loss, hidden, targets, weight, bias, positions, lse, ignore_index):
    dhidden = torch.empty_like(hidden, memory_format=torch.contiguous_format)
    dweight = torch.empty_like(weight, memory_format=torch.contiguous_format)
    dbias = hidden.new_empty((weight.shape[0],), dtype=torch.float32)
    return dhidden, dweight, dbias


def _setup_context(ctx, inputs, output):
    hidden, targets, weight, bias, positions, ignore_index, _validate = inputs
    _loss, _n_correct, lse = output
    ctx.save_for_backward(hidden, targets, weight, bias, positions, lse)
    ctx.ignore_index = ignore_index


def _backward(ctx, grad_loss, _grad_n_correct, _grad_lse):
    hidden, targets, weight, bias, positions, lse = ctx.saved_tensors
    dhidden, dweight, dbias = _masked_lm_loss_bwd_op(
        grad_loss, hidden, targets, weight, bias, positions, lse, ctx.ignore_index
    )
    dbias = None if bias is None else dbias.to(bias.dtype)
    return dhidden, None, dweight, dbias, None, None, None


_masked_lm_loss_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- functional API
def _cast_master_weights(hidden, weight, bias):
    """fp32 decoder weight/bias with 16-bit rows -> the rows' dtype (differentiable casts)."""
    low = (torch.bfloat16, torch.float16)
    if not isinstance(hidden, torch.Tensor) or hidden.dtype not in low:
        return weight, bias
    if isinstance(weight, torch.Tensor) and weight.dtype == torch.float32:
        weight = weight.to(hidden.dtype)
    if isinstance(bias, torch.Tensor) and bias.dtype == torch.float32:
        bias = bias.to(hidden.dtype)
    return weight, bias


def masked_lm_loss(
    hidden: torch.Tensor,  # [N, d]
    targets: torch.Tensor,  # [M] int64
    weight: torch.Tensor,  # [V, d]
    bias: Optional[torch.Tensor],  # [V] or None
    positions: Optional[torch.Tensor] = None,  # [M] int64 rows of hidden; None = all rows
    ignore_index: int = -100,
    *,
    validate: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of ``hidden[positions] @ weight.T + bias`` against ``targets``.

    Returns ``(loss, n_correct)``: fp32 scalar (differentiable wrt hidden, weight, bias;
    0.0 with zero gradients when no target is valid) and the int64 number of valid rows
    whose argmax logit is the target. Never builds the ``[M, V]`` logits.
    ``validate=False`` skips the value-range checks and their device sync.

    Mixed precision: an fp32 ``weight``/``bias`` (master weights) with bf16/fp16
    ``hidden`` (autocast activations) is cast to ``hidden``'s dtype first, as ``F.linear``
    under autocast does; their gradients come back in fp32. Any other dtype mismatch
    raises ``ValueError``.
    """
    weight, bias = _cast_master_weights(hidden, weight, bias)
    _check_inputs(hidden, targets, weight, bias, positions)
    loss, n_correct, _lse = _masked_lm_loss_fwd_op(
        hidden, targets, weight, bias, positions, int(ignore_index), bool(validate)
    )
    return loss, n_correct
