"""Fused bidirectional attention (flash-style) in Triton: forward, and a deterministic or a single-pass backward.

Math (one sequence b, one head h; L = its length, i a query position, j a key position)::

    S_ij = scale * q_i . k_j                          scale = softmax_scale or 1/sqrt(D)
    allowed_ij = j < L  and  (|i - j| <= window  if window is not None)
    P_ij = softmax_j(S_ij over allowed j)            in fp32, online (running max m, sum l)
    Z_ij = keep bit of hash(seed, b * H + h, i, j)    only when dropout_p > 0 (see Dropout)
    O_i  = sum_j P_ij * Z_ij / (1 - p) * v_j          padded query rows (i >= L) are zeros

Backward (the usual flash-attention recurrences; Z/(1-p) = 1 without dropout)::

    Delta_i = sum_d dO_id * O_id                       (= sum_j P_ij dP_ij, also with dropout)
    dV_j    = sum_i P_ij Z_ij/(1-p) dO_i
    dP_ij   = Z_ij/(1-p) * (dO_i . v_j)
    dS_ij   = P_ij * (dP_ij - Delta_i)
    dQ_i    = scale * sum_j dS_ij k_j,   dK_j = scale * sum_i dS_ij q_i

Shapes and layouts:

* padded: q, k, v ``[B, H, S, D]`` (any strides with a unit last stride, so the usual
  ``[B, S, H, D]`` projection output viewed through ``transpose(1, 2)`` is read in place),
  optional ``seq_lens`` ``[B]`` (right padding: keys ``j >= seq_lens[b]`` get no weight, query
  rows ``i >= seq_lens[b]`` return zeros and give zero gradients). Output ``[B, H, S, D]``
  contiguous; log-sum-exp ``[B, H, S]`` fp32.
* varlen: packed q, k, v ``[T, H, D]`` with ``cu_seqlens`` ``[B + 1]`` int32: sequence ``b`` is
  rows ``cu_seqlens[b]:cu_seqlens[b + 1]``. Output ``[T, H, D]``; log-sum-exp ``[H, T]`` fp32.
* D in {32, 64, 128}; fp16, bf16 or fp32 inputs; every matmul accumulates in fp32.

Saved for backward: q, k, v, the output O and the per-row log-sum-exp (base 2, fp32) -- not
the ``[S, S]`` probabilities. The backward recomputes ``P = exp2(S * log2(e) - lse)`` tile by
tile, which costs one extra ``q k^T`` but keeps memory linear in S. O is kept for
``Delta = rowsum(dO * O)``, computed once by a small preprocessing kernel.

Two backwards, chosen by ``deterministic`` (default True):

* deterministic: one kernel owns a key tile and loops over query tiles to accumulate dK and dV;
  a second kernel owns a query tile and loops over key tiles for dQ. No atomics, so the same
  inputs always give bit-identical gradients. Seven tile matmuls per (query, key) tile pair
  (dK/dV: q k^T, v dO^T, P^T dO, dS^T q; dQ: q k^T, dO v^T, dS k), and exp2/dropout twice.
* single-pass (``deterministic=False``, as FlashAttention-2): the dK/dV kernel also computes
  each query tile's ``dS k`` and adds it into a zeroed fp32 dQ buffer with atomics; five
  matmuls per tile pair and one kernel fewer, but the fp32 sums' order (so their last bits)
  varies from run to run, and the buffer costs 4 bytes per dQ element.

The softmax scale is folded into the exp2 argument: ``exp2(qk * scale * log2(e) - m)`` is one
FMA per score (the forward's running max is taken on the raw ``q k^T`` tile, then scaled).

Local attention: with ``window = w`` a query tile [m0, m0 + BLOCK_M) only visits key tiles
that intersect [m0 - w, m0 + BLOCK_M - 1 + w] (and symmetrically in the dK/dV kernel), so the
cost falls linearly with the window. In every kernel the tiles where all pairs are allowed
(both tiles inside the sequence and inside the window) run in a loop without masks; only the
edge tiles pay for the masking (``_visit_ranges``).

Dropout: the keep bit of element (b, h, i, j) (i, j local to the sequence) is a pure function of
(seed, b * H + h, i, j), computed in registers in the layout the score tile already has::

    key       = lowbias32 chain of (seed low word, seed high word, b * H + h)
    mr, br, kr, mc, bc, kc = lowbias32 of key plus six constants (mr, br, mc, bc made odd)
    fold(x)   = low word ^ high word of the 64-bit square x * x      (uint32 -> uint32)
    pair(n)   = n & ~8                           rows i, i + 8 (i % 16 < 8) share a row pair,
                                                 keys j, j + 8 (j % 16 < 8) a key pair
    R(i)      = pair(i % 64) * mr + fold((i - i % 64) * br + kr)     (uint32)
    C(j)      = pair(j % 64) * mc + fold((j - j % 64) * bc + kc)
    x         = fold(R(i) + C(j) + key)
    u         = low 7 bits of byte 2 * ((i // 8) % 2) + (j // 8) % 2 of x      (0 .. 127)
    T         = min(floor(p * 128 + 1/2), 127)
    Z_ij      = u >= T

So one 32-bit hash serves four scores, and the drop rate is p rounded to a multiple of 1/128,
``p_effective = T / 128`` (:func:`attention_dropout_effective_p`; 0.1 -> 13/128 = 0.1015625, as
FlashAttention-2 compares bytes of its random bits), and kept values are scaled by
``1 / (1 - p_effective)`` in the forward and both backwards; ``p < 1/256`` is no dropout. The
launch functions round p once, so every kernel sees ``p_effective``.

Why blocks of 64: within one block of 64 rows x 64 keys the input is a lattice (pair(i) * mr +
pair(j) * mc), which is what makes it cheap; over a whole 512 x 512 mask a lattice of odd
multipliers always has a few offsets (di, dj) with di * mr + dj * mc ~ 0 mod 2**32, and the square
does not hide them (the previous mask, without block terms, correlated with itself at such
offsets up to |r| = 0.08, z = 29). Each (row block, key block) gets its own offset
``fold(...) + fold(...)``, so offsets between blocks are no longer lattice vectors; the mask's
correlation at every offset |di|, |dj| <= 255 and between heads is that of random bits
(tests/kernels/test_attention.py, ``test_dropout_mask_has_no_correlation_at_any_offset``).

Cost per score (the hot loops have 32 scores per thread): the part fixed for a thread (its rows
in the forward and dQ, its keys in dK/dV, with their block terms, plus the moving axis's
``pair(n % 64) * multiplier`` of a tile at 0) is computed once per program; per tile the loop adds
the moving tile's block term (3 instructions per tile; two block terms for a 128-wide tile, plus
``(start % 64) * multiplier`` for a 32-wide one, :func:`_dropout_tile_offset`), so each hash input
is one add; then fold (one IMAD.WIDE, one LOP3), which passes the tests' statistics (keep rate,
lag-1 correlations of rows, keys, heads and of the bytes of one hash, correlations at every
offset); the four compares are one SWAR
subtraction, ``(x | 0x80808080) - T * 0x01010101`` having bit 7 of byte b set iff byte b's low
7 bits are >= T (7-bit lanes: no borrow crosses a byte). So 4 instructions per hash, 1 per
score. The mask is applied by inline PTX (:func:`_dropout_zero`, :func:`_dropout_select`): 1
instruction per score on a 16-bit tile (the forward's P; dQ's dS, chosen between its two outcomes
``P dP - P Delta'`` and ``-P Delta'``), 2 on dK/dV's fp32 P (which then serves dV and dS). In the wgmma accumulator
layout one thread holds rows i, i + 8 and columns j, j + 8 of a [queries, keys] tile, and the
same four elements of the transposed [keys, queries] tile of the dK/dV kernel, so each hash is
computed once, by the thread that uses all four bytes, and no random bit is moved between
threads or through shared memory.
Nothing depends on tile sizes or on the sequence length, so the mask of sequence b of length L
(padded with ``seq_lens`` or varlen) is ``attention_dropout_keep_mask(B, H, S, p, seed)[b, :, :L, :L]``
for any S >= L. The backward regenerates the same bits; nothing of the mask is stored. The
seed is a one-element int64 tensor that the kernels load, so a fresh one costs no host sync
(:mod:`._dropout_seed`). With ``p = 0`` the
dropout code is removed at compile time (``HAS_DROPOUT`` constexpr).
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._autotune import fp32_tunes_one_config
from ._dropout_seed import SeedLike, as_seed_tensor, check_seed, is_int, load_seed, seed_tensor
from ._host_sync import may_sync
from ._interpreter import interpreting

SUPPORTED_HEAD_DIMS = (32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = 1.4426950408889634

# MODE constexpr: how a program finds its sequence's start row and length.
MODE_DENSE = 0  # padded [B, H, S, D], every sequence has length S
MODE_SEQ_LENS = 1  # padded [B, H, S, D], sequence b has length seq_lens[b] <= S
MODE_VARLEN = 2  # packed [T, H, D], sequence b is rows cu_seqlens[b]:cu_seqlens[b+1]

_INTERPRET = interpreting()


# --------------------------------------------------------------------------- tuning choices
def _configs(shapes):
    """``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` tuples -> autotune configs.

    Under the interpreter the cost is programs x loop iterations, not FLOPs: one config
    with large tiles (and no benchmarking) keeps the CPU tests fast.
    """
    if _INTERPRET:
        shapes = [(64, 64, 4, 1)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in shapes
    ]


# H100, head dims 32-128. BLOCK_M: query tile, BLOCK_N: key tile. No config may spill registers
# (benchmarks/notes/attention_static.md): gone are fwd 128x64 w4 (spilled with dropout), dK/dV
# 32x128 w4 (spilled), dK/dV 64x64 w4 (the single-pass backward spilled with dropout under
# Triton 3.6), dQ 128x32 w4 and 64x128 w8 (spilled under Triton 3.6's ptxas).
FWD_CONFIGS = _configs([
    (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (64, 64, 4, 3), (64, 128, 4, 3), (128, 32, 4, 4),
])
# dK/dV kernel: a key tile of BLOCK_N rows stays resident, query tiles of BLOCK_M stream past.
# The single-pass backward (ACCUMULATE_DQ) tunes the same list.
BWD_DKDV_CONFIGS = _configs([
    (64, 128, 8, 2), (64, 128, 8, 3), (32, 64, 4, 3), (64, 64, 8, 2),
])
# dQ kernel: a query tile of BLOCK_M rows stays resident, key tiles of BLOCK_N stream past.
BWD_DQ_CONFIGS = _configs([
    (128, 64, 8, 2), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3),
])
AUTOTUNE_KEY = ["HEAD_DIM", "SEQ_BUCKET", "MODE", "HAS_WINDOW", "HAS_DROPOUT", "DOT_PRECISION"]
# fp32 inputs (parity tests) are not tuned: one small config each (see _autotune).
FP32_FWD = fp32_tunes_one_config(triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2), "Q")
FP32_BWD_DKDV = fp32_tunes_one_config(triton.Config({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=4, num_stages=2), "Q")
FP32_BWD_DQ = fp32_tunes_one_config(triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2), "Q")
PREPROCESS_BLOCK_M = 64
KEEP_MASK_BLOCK = 128 if _INTERPRET else 64  # under the interpreter: fewer, larger programs
_DROPOUT_PTX = tl.constexpr(not _INTERPRET)  # the dropout mask applied by inline PTX (_dropout_zero)


# --------------------------------------------------------------------------- Triton helpers
@triton.jit
def _sequence_bounds(SEQ_INFO, b, seq_len, MODE: tl.constexpr):
    """(first row of sequence b in its tensor as int64, its length)."""
    start = 0
    length = seq_len
    if MODE == 1:  # SEQ_INFO = seq_lens [B]
        length = tl.minimum(tl.load(SEQ_INFO + b), seq_len)
    if MODE == 2:  # SEQ_INFO = cu_seqlens [B + 1]
        first = tl.load(SEQ_INFO + b)
        length = tl.load(SEQ_INFO + b + 1) - first
        start = first.to(tl.int64)
    return start, length


@triton.jit
def _tile_and_head(seq_len, TILE: tl.constexpr):
    """One flat grid axis (no 65535 limit on B * H): tiles of one head are neighbours, so
    they share that head's K/V in L2."""
    pid = tl.program_id(0)
    tiles = tl.cdiv(seq_len, TILE)
    return pid % tiles, pid // tiles


@triton.jit
def _mix32(x):
    """A bijection of uint32 in which every output bit depends on every input bit: xorshift-multiply
    rounds with the multipliers of the "lowbias32" integer hash. Used for the per-program keys."""
    x ^= x >> 16
    x *= 0x7FEB352D
    x ^= x >> 15
    x *= 0x846CA68B
    x ^= x >> 16
    return x


@triton.jit
def _dropout_keys(seed, bh, dropout_p):
    """Per program: the keep-bit hash constants of head ``bh`` under ``seed`` (int64): (key; the rows'
    odd multiplier, block multiplier and block key; the same three of the keys), and the keep
    threshold ``T * 0x01010101`` with ``T = round(p * 128)`` in every byte (the kernels get ``p``
    already rounded, :func:`attention_dropout_effective_p`, so ``p * 128`` is the integer T <= 127)."""
    seed64 = seed.to(tl.uint64)
    low = (seed64 & 0xFFFFFFFF).to(tl.uint32)
    high = (seed64 >> 32).to(tl.uint32)
    key = _mix32(low ^ _mix32(high ^ _mix32(bh.to(tl.uint32) + 0x9E3779B9)))
    row_multiplier = _mix32(key + 0x6A09E667) | 1
    row_block_multiplier = _mix32(key + 0x3C6EF372) | 1
    row_block_key = _mix32(key + 0x510E527F)
    col_multiplier = _mix32(key + 0xBB67AE85) | 1
    col_block_multiplier = _mix32(key + 0xA54FF53A) | 1
    col_block_key = _mix32(key + 0x9B05688C)
    threshold = tl.minimum(tl.floor(dropout_p * 128.0 + 0.5), 127.0).to(tl.uint32) * 0x01010101
    return (key, row_multiplier, row_block_multiplier, row_block_key, col_multiplier, col_block_multiplier,
            col_block_key, threshold)


@triton.jit
def _square_fold(x):
    """uint32 -> uint32: the low word xor the high word of the 64-bit square ``x * x`` (one
    IMAD.WIDE and one LOP3), the nonlinear step of the keep-bit hash."""
    x = x.to(tl.uint64)
    x = x * x
    return (x ^ (x >> 32)).to(tl.uint32)


@triton.jit
def _dropout_block_term(block_start, block_multiplier, block_key):
    """The term of the 64-position block that starts at ``block_start`` (a multiple of 64) in the hash
    input: :func:`_square_fold` of ``block_start * block multiplier + block key`` (uint32), 3
    instructions."""
    return _square_fold(block_start * block_multiplier + block_key)


@triton.jit
def _dropout_axis_terms(start, multiplier, block_multiplier, block_key, BLOCK: tl.constexpr,
                        BLOCK_TERMS: tl.constexpr):
    """One axis's share of the hash input for positions ``start .. start + BLOCK`` (start a multiple
    of 16), as [BLOCK // 16, 8], one element per pair ``n & ~8`` (positions n and n + 8, n % 16 < 8,
    share a pair): ``pair(n % 64) * multiplier``, plus, with ``BLOCK_TERMS``, the term of n's block
    of 64 (:func:`_dropout_block_term`). A loop takes its moving axis's terms at ``start = 0``
    without block terms and adds :func:`_dropout_tile_offset` per tile."""
    offsets = tl.arange(0, BLOCK // 2)
    pairs = (start + offsets // 8 * 16 + offsets % 8).to(tl.uint32)
    terms = (pairs & 63) * multiplier
    if BLOCK_TERMS:
        terms += _dropout_block_term(pairs & 0xFFFFFFC0, block_multiplier, block_key)
    return terms.reshape(BLOCK // 16, 8)


@triton.jit
def _dropout_tile_offset(start, multiplier, block_multiplier, block_key, BLOCK: tl.constexpr):
    """What the moving axis's tile at ``start`` (a multiple of BLOCK) adds to the hash inputs of the
    tile at 0 (terms from :func:`_dropout_axis_terms` without block terms): the term of its block of
    64, plus ``(start % 64) * multiplier`` for a tile narrower than a block (pair(n % 64) =
    start % 64 + pair(n - start) when 64 % BLOCK == 0); a scalar, so each hash input is still one
    add. A 128-wide tile spans two blocks: [1, 1, 8, 1], the first block's term for its first 64
    positions, the second's for the rest (which half a register holds is known at compile time: the
    compiled 128-wide forward loops grew by 6-7 SASS instructions per tile, not per hash,
    benchmarks/notes/attention_static.md, Step 4)."""
    tl.static_assert((BLOCK % 16 == 0 and 64 % BLOCK == 0) or BLOCK == 128)
    if BLOCK == 128:
        low = _dropout_block_term(start, block_multiplier, block_key)
        high = _dropout_block_term(start + 64, block_multiplier, block_key)
        return tl.where(tl.arange(0, 8) >= 4, high, low)[None, None, :, None]
    elif BLOCK == 64:
        return _dropout_block_term(start, block_multiplier, block_key)
    else:
        return (_dropout_block_term(start & -64, block_multiplier, block_key)
                + (start & 63) * multiplier)


@triton.jit
def _dropout_bits(lattice, threshold):
    """The keep bits of the four scores of each (row pair, key pair) hash input ``lattice`` (the
    module docstring's x): its :func:`_square_fold`, then a SWAR compare of the low 7 bits of every
    byte with T (7-bit lanes, so no borrow crosses a byte; the OR folds into the fold's LOP3): bit
    ``8 b + 7`` of the result is set iff byte b is kept. Four instructions per hash with the add
    that forms the input."""
    return (_square_fold(lattice) | 0x80808080) - threshold


@triton.jit
def _dropout_lattice(first_terms, second_terms):
    """The hash inputs ``first + second`` of two axes' terms ([G1, 8] and [G2, 8], from
    :func:`_dropout_axis_terms`, one of them plus the key), as [G1, 8, G2, 8]. A loop computes this
    for its own tile and the moving axis's tile at 0 once and adds :func:`_dropout_tile_offset` per
    tile: one add per hash."""
    return first_terms[:, :, None, None] + second_terms[None, None, :, :]


@triton.jit
def _dropout_spread(byte0, byte1, byte2, byte3, TRANSPOSED: tl.constexpr):
    """The [BLOCK_M, BLOCK_N] tile (``TRANSPOSED``: [BLOCK_N, BLOCK_M], keys first) whose score
    (i, j) is element [pair(i), pair(j)] of ``byte{b}`` ([G1, 8, G2, 8] each), b the byte of that
    score in its hash: rows i, i + 8 and keys j, j + 8 (i % 16 < 8, j % 16 < 8) share one hash;
    byte 0 is (i, j), byte 1 (i, j + 8), byte 2 (i + 8, j), byte 3 (i + 8, j + 8). In the wgmma
    accumulator layout one thread holds all four, and the same four in the transposed tile of the
    dK/dV kernel, so every hash is computed once, by the thread that uses it, and no bit crosses
    threads."""
    G1: tl.constexpr = byte0.shape[0]
    G2: tl.constexpr = byte0.shape[2]
    if TRANSPOSED:  # [GN, 8, GM, 8, (i, i + 8), (j, j + 8)]
        tile = tl.join(tl.join(byte0, byte2), tl.join(byte1, byte3))
    else:  # [GM, 8, GN, 8, (j, j + 8), (i, i + 8)]
        tile = tl.join(tl.join(byte0, byte1), tl.join(byte2, byte3))
    tile = tl.permute(tile, (0, 5, 1, 2, 4, 3))  # [G1, 2, 8, G2, 2, 8]
    return tl.reshape(tile, (G1 * 16, G2 * 16))


@triton.jit
def _dropout_keep(lattice, threshold, TRANSPOSED: tl.constexpr):
    """[BLOCK_M, BLOCK_N] (``TRANSPOSED``: [BLOCK_N, BLOCK_M]) keep bits of the hash inputs
    ``lattice`` ([G1, 8, G2, 8] from :func:`_dropout_lattice`, the tile's first axis first)."""
    x = _dropout_bits(lattice, threshold)
    return _dropout_spread(x & 0x80, x & 0x8000, x & 0x800000, x & 0x80000000, TRANSPOSED) != 0


@triton.jit
def _dropout_prmt_operands(lattice, threshold, TRANSPOSED: tl.constexpr, PAIRS: tl.constexpr):
    """(every score's hash word, every score's ``prmt`` selector) for :func:`_dropout_select`.

    The selector turns bit 7 of the score's byte (b) into a 0 / all-ones mask with ``prmt``'s
    sign-replicate mode: for an fp32 score, byte b into all four bytes (``0x8888 + b * 0x1111``);
    for a pair of 16-bit scores (``PAIRS``), byte b of the first score's hash into the low half
    and byte b of the second's (prmt's bytes 4-7) into the high half (``0xCC88 + b * 0x1111``)."""
    x = _dropout_bits(lattice, threshold)
    words = _dropout_spread(x, x, x, x, TRANSPOSED)
    byte0 = tl.full(x.shape, 0xCC88 if PAIRS else 0x8888, tl.uint32)
    selectors = _dropout_spread(byte0, byte0 + 0x1111, byte0 + 0x2222, byte0 + 0x3333, TRANSPOSED)
    return words, selectors


@triton.jit
def _dropout_zero(values, lattice, threshold, TRANSPOSED: tl.constexpr):
    """``values`` (a score tile as :func:`_dropout_keep` lays out its bits) with the dropped scores
    zeroed.

    Compiled, with inline PTX and no predicates: ``prmt`` in sign-replicate mode turns bit 7 of
    the score's hash byte into a 0 / all-ones mask, and an ``and`` applies it, per fp32 score,
    or per pair of 16-bit scores (``pack=2``: the two scores (i, j), (i, j + 1) of one register,
    which is what the wgmma accumulator layout packs, tests/kernels/test_attention_dropout_ptx.py;
    their hashes differ, ``prmt`` reads the same byte of both). So 1 (16-bit) or 2 (fp32)
    instructions per score. Under the interpreter, which runs no PTX, the same bits by ``tl.where``.
    """
    if _DROPOUT_PTX:
        if values.dtype == tl.float32:
            words, selectors = _dropout_prmt_operands(lattice, threshold, TRANSPOSED, False)
            return tl.inline_asm_elementwise(
                "{ .reg .b32 m; prmt.b32 m, $2, $2, $3; and.b32 $0, $1, m; }", "=r,r,r,r",
                [values, words, selectors], dtype=tl.float32, is_pure=True, pack=1)
        words, selectors = _dropout_prmt_operands(lattice, threshold, TRANSPOSED, True)
        return tl.inline_asm_elementwise(
            "{ .reg .b32 m; prmt.b32 m, $2, $3, $4; and.b32 $0, $1, m; }", "=r,r,r,r,r,r",
            [values, words, selectors], dtype=values.dtype, is_pure=True, pack=2)
    else:
        return tl.where(_dropout_keep(lattice, threshold, TRANSPOSED), values, 0.0).to(values.dtype)


@triton.jit
def _dropout_select(kept, dropped, lattice, threshold, TRANSPOSED: tl.constexpr):
    """``kept`` where the score is kept, else ``dropped`` (two tiles of one dtype, laid out as
    :func:`_dropout_keep` lays out its bits): as :func:`_dropout_zero`, with a ``lop3`` bit select
    ``(kept & m) | (dropped & ~m)`` in place of the ``and``; 1 (16-bit) or 2 (fp32) instructions
    per score."""
    if _DROPOUT_PTX:
        if kept.dtype == tl.float32:
            words, selectors = _dropout_prmt_operands(lattice, threshold, TRANSPOSED, False)
            return tl.inline_asm_elementwise(
                "{ .reg .b32 m; prmt.b32 m, $3, $3, $4; lop3.b32 $0, $1, $2, m, 0xE4; }", "=r,r,r,r,r",
                [kept, dropped, words, selectors], dtype=tl.float32, is_pure=True, pack=1)
        words, selectors = _dropout_prmt_operands(lattice, threshold, TRANSPOSED, True)
        return tl.inline_asm_elementwise(
            "{ .reg .b32 m; prmt.b32 m, $3, $4, $5; lop3.b32 $0, $1, $2, m, 0xE4; }", "=r,r,r,r,r,r,r",
            [kept, dropped, words, selectors], dtype=kept.dtype, is_pure=True, pack=2)
    else:
        return tl.where(_dropout_keep(lattice, threshold, TRANSPOSED), kept, dropped)


@triton.jit
def _allowed(offs_m, offs_n, length, window, HAS_WINDOW: tl.constexpr):
    """[BLOCK_M, BLOCK_N] (or its transpose, by the shapes given) mask of real pairs."""
    allowed = (offs_m < length) & (offs_n < length)
    if HAS_WINDOW:
        distance = offs_m - offs_n
        allowed = allowed & (distance <= window) & (distance >= -window)
    return allowed


@triton.jit
def _visit_ranges(tile_start, TILE: tl.constexpr, length, window, OTHER_TILE: tl.constexpr,
                  HAS_WINDOW: tl.constexpr):
    """Tiles of the other axis that the tile [tile_start, tile_start + TILE) visits.

    Returns ``lo <= full_lo <= full_hi <= hi``: [lo, hi) holds every tile with an allowed
    pair; [full_lo, full_hi) the tiles where *every* pair is allowed (both tiles inside the
    sequence, every |i - j| <= window), which run without masks. The edges need masks.
    """
    lo = 0
    hi = length
    if HAS_WINDOW:
        lo = tl.maximum(tile_start - window, 0) // OTHER_TILE * OTHER_TILE
        hi = tl.minimum(tile_start + TILE + window, length)
    hi = tl.where(tile_start < length, hi, lo)  # a tile past the end has no work
    full_lo = lo
    full_hi = length // OTHER_TILE * OTHER_TILE
    if HAS_WINDOW:
        full_lo = tl.cdiv(tl.maximum(tile_start + TILE - 1 - window, 0), OTHER_TILE) * OTHER_TILE
        full_hi = tl.minimum(full_hi, (tile_start + window + 1) // OTHER_TILE * OTHER_TILE)
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.maximum(tl.minimum(full_hi, hi), full_lo)
    # A tile that runs past the end of its sequence masks everything.
    full_hi = tl.where(tile_start + TILE <= length, full_hi, full_lo)
    return lo, full_lo, full_hi, hi


@triton.jit
def _dropout_setup(SEED, bh, dropout_p, HAS_DROPOUT: tl.constexpr):
    """:func:`_dropout_keys` of head ``bh``; unused zeros without dropout."""
    key = 0
    row_mult = 0
    row_block_mult = 0
    row_block_key = 0
    col_mult = 0
    col_block_mult = 0
    col_block_key = 0
    threshold = 0
    if HAS_DROPOUT:
        key, row_mult, row_block_mult, row_block_key, col_mult, col_block_mult, col_block_key, threshold = (
            _dropout_keys(load_seed(SEED, HAS_DROPOUT), bh, dropout_p))
    return key, row_mult, row_block_mult, row_block_key, col_mult, col_block_mult, col_block_key, threshold


@triton.jit
def _program_start(
    Q, K, V, SEQ_INFO, SEED,
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_os, stride_lb, stride_lh,
    num_heads, seq_len, dropout_p,
    TILE: tl.constexpr, MODE: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    """What every attention program (forward and backward) starts with.

    Returns (its tile index along its own axis, the sequence's length, the q/k/v bases of its
    (sequence, head), the offsets of its rows in the O-like ([B, H, S, D] / [T, H, D] contiguous)
    and LSE-like tensors, and the dropout hash's constants and threshold, :func:`_dropout_keys`).
    """
    pid_tile, pid_bh = _tile_and_head(seq_len, TILE)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    start, length = _sequence_bounds(SEQ_INFO, b, seq_len, MODE)
    key, row_mult, row_block_mult, row_block_key, col_mult, col_block_mult, col_block_key, threshold = (
        _dropout_setup(SEED, pid_bh, dropout_p, HAS_DROPOUT))
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    q_base = Q + b64 * stride_qb + h64 * stride_qh + start * stride_qs
    k_base = K + b64 * stride_kb + h64 * stride_kh + start * stride_ks
    v_base = V + b64 * stride_vb + h64 * stride_vh + start * stride_vs
    o_offset = b64 * stride_ob + h64 * stride_oh + start * stride_os
    lse_offset = b64 * stride_lb + h64 * stride_lh + start
    return (pid_tile, length, q_base, k_base, v_base, o_offset, lse_offset, key, row_mult, row_block_mult,
            row_block_key, col_mult, col_block_mult, col_block_key, threshold)


# --------------------------------------------------------------------------- forward kernel
@triton.jit
def _fwd_loop(
    acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d, n_start, n_end,
    length, window, qk_scale, lattice, col_mult, col_block_mult, col_block_key, threshold,
    MASKED: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Online-softmax update of (acc, l_i, m_i) over key tiles [n_start, n_end).

    The running max is kept in the scaled log2 domain; the scale is applied to the tile max and
    inside the exp2 argument (one FMA per score) rather than to every score first.
    """
    for n0 in range(n_start, n_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[None, :] * stride_ks + offs_d[:, None]  # [D, BLOCK_N]
        v_ptrs = v_base + offs_n[:, None] * stride_vs + offs_d[None, :]  # [BLOCK_N, D]
        if MASKED:
            k_t = tl.load(k_ptrs, mask=offs_n[None, :] < length, other=0.0)
        else:
            k_t = tl.load(k_ptrs)
        qk = tl.dot(q, k_t, input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N], unscaled
        if MASKED:
            allowed = _allowed(offs_m[:, None], offs_n[None, :], length, window, HAS_WINDOW)
            qk = tl.where(allowed, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing allowed yet
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            m_use = m_new
        p = tl.exp2(qk * qk_scale - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_ptrs, mask=offs_n[:, None] < length, other=0.0)
        else:
            v = tl.load(v_ptrs)
        p = p.to(v.dtype)
        if HAS_DROPOUT:  # on the 16-bit tile: one instruction per score (_dropout_zero)
            tile_offset = _dropout_tile_offset(n0, col_mult, col_block_mult, col_block_key, BLOCK_N)
            p = _dropout_zero(p, lattice + tile_offset, threshold, False)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=FWD_CONFIGS, key=AUTOTUNE_KEY, prune_configs_by=FP32_FWD)
@triton.jit
def _attention_fwd_kernel(
    Q,  # [B, H, S, D] or [T, H, D], fp16/bf16/fp32, unit last stride
    K,  # same layout family as Q
    V,  # same layout family as Q
    O,  # [B, H, S, D] or [T, H, D] contiguous, dtype of Q
    LSE,  # [B, H, S] or [H, T] fp32, log2-domain log-sum-exp of the scaled scores
    SEQ_INFO,  # MODE 1: seq_lens [B] int32; MODE 2: cu_seqlens [B + 1] int32; MODE 0: unused
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_os,
    stride_lb, stride_lh,  # LSE; unit stride along the sequence
    num_heads,
    seq_len,  # S for padded input, max_seqlen for varlen
    window,  # |i - j| <= window (only read when HAS_WINDOW)
    qk_scale,  # softmax_scale * log2(e)
    dropout_p,
    SEED,  # [1] int64 dropout seed; read only when HAS_DROPOUT
    SEQ_BUCKET,  # next power of two of seq_len: autotune key only
    MODE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    (pid_m, length, q_base, k_base, v_base, o_offset, lse_offset, key, row_mult, row_block_mult, row_block_key,
     col_mult, col_block_mult, col_block_key, threshold) = _program_start(
        Q, K, V, SEQ_INFO, SEED, stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
        stride_vb, stride_vh, stride_vs, stride_ob, stride_oh, stride_os, stride_lb, stride_lh,
        num_heads, seq_len, dropout_p, BLOCK_M, MODE, HAS_DROPOUT)
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(q_base + offs_m[:, None] * stride_qs + offs_d[None, :], mask=offs_m[:, None] < length, other=0.0)
    lattice = offs_m
    if HAS_DROPOUT:  # this tile's rows x the keys of a tile at 0
        lattice = _dropout_lattice(
            _dropout_axis_terms(m0, row_mult, row_block_mult, row_block_key, BLOCK_M, True) + key,
            _dropout_axis_terms(0, col_mult, col_block_mult, col_block_key, BLOCK_N, False))

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    lo, full_lo, full_hi, hi = _visit_ranges(m0, BLOCK_M, length, window, BLOCK_N, HAS_WINDOW)
    # Interior tiles first (no masks), then the masked edges; the online softmax is order-free.
    acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d,
                              full_lo, full_hi, length, window, qk_scale, lattice, col_mult, col_block_mult,
                              col_block_key, threshold, False, HAS_WINDOW, HAS_DROPOUT, DOT_PRECISION, BLOCK_N)
    acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d,
                              lo, full_lo, length, window, qk_scale, lattice, col_mult, col_block_mult,
                              col_block_key, threshold, True, HAS_WINDOW, HAS_DROPOUT, DOT_PRECISION, BLOCK_N)
    acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d,
                              full_hi, hi, length, window, qk_scale, lattice, col_mult, col_block_mult,
                              col_block_key, threshold, True, HAS_WINDOW, HAS_DROPOUT, DOT_PRECISION, BLOCK_N)

    row_real = offs_m < length
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    if HAS_DROPOUT:
        out = out * (1.0 / (1.0 - dropout_p))
    out = tl.where(row_real[:, None], out, 0.0)  # padded query rows are zeros
    # Rows past the end get lse = 0: the backward loads them as 0 too (see _dkdv_loop).
    lse = tl.where(row_real & (l_i > 0.0), m_i + tl.log2(l_safe), 0.0)
    # Padded layouts own all S rows (zeros past the length); packed ones only their own.
    rows_owned = seq_len if MODE != 2 else length
    tl.store(O + o_offset + offs_m[:, None] * stride_os + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=offs_m[:, None] < rows_owned)
    tl.store(LSE + lse_offset + offs_m, lse, mask=offs_m < rows_owned)


# --------------------------------------------------------------------------- backward kernels
@triton.jit
def _attention_bwd_preprocess_kernel(
    O,  # [B, H, S, D] or [T, H, D] contiguous
    DO,  # same strides as O
    DELTA,  # [B, H, S] or [H, T] fp32, out: (1 - p) rowsum(dO * O)
    SEQ_INFO,  # as in the forward
    stride_ob, stride_oh, stride_os,
    stride_lb, stride_lh,
    num_heads,
    seq_len,
    keep_rate,  # 1 - p (exact: p is a multiple of 1/128); 1 without dropout
    MODE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid_m, pid_bh = _tile_and_head(seq_len, BLOCK_M)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    start, length = _sequence_bounds(SEQ_INFO, b, seq_len, MODE)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    base = b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + start * stride_os
    ptrs = base + offs_m[:, None] * stride_os + offs_d[None, :]
    rows = offs_m[:, None] < length
    o = tl.load(O + ptrs, mask=rows, other=0.0).to(tl.float32)
    do = tl.load(DO + ptrs, mask=rows, other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1) * keep_rate
    rows_owned = seq_len if MODE != 2 else length
    lse_base = DELTA + b.to(tl.int64) * stride_lb + h.to(tl.int64) * stride_lh + start
    tl.store(lse_base + offs_m, delta, mask=offs_m < rows_owned)


@triton.jit
def _dkdv_loop(
    dk, dv, k, v, q_base, do_base, lse_base, delta_base, dq_base, stride_qs, stride_os, n0, offs_n, offs_d,
    m_start, m_end, length, window, qk_scale, lattice_t, row_mult, row_block_mult, row_block_key, threshold,
    MASKED: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ACCUMULATE_DQ: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Accumulate dK, dV of one key tile over query tiles [m_start, m_end); with ``ACCUMULATE_DQ``
    also add each query tile's share ``dS K`` of dQ (unscaled, fp32) into ``dq_base`` atomically.

    With dropout, dV collects ``P * Z`` here and is scaled by ``1 / (1 - p)`` once at the end, and
    dK (and dQ) collect ``(1 - p) dS = P Z dP - P (1 - p) Delta`` (Delta comes scaled by ``1 - p``
    from the preprocess kernel), so one select of P serves both dV and dS.
    """
    for m0 in range(m_start, m_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        q_ptrs = q_base + offs_m[:, None] * stride_qs + offs_d[None, :]
        do_ptrs = do_base + offs_m[:, None] * stride_os + offs_d[None, :]
        if MASKED:
            query_rows = offs_m[:, None] < length
            q = tl.load(q_ptrs, mask=query_rows, other=0.0)
            do = tl.load(do_ptrs, mask=query_rows, other=0.0)
            lse = tl.load(lse_base + offs_m, mask=offs_m < length, other=0.0)
            delta = tl.load(delta_base + offs_m, mask=offs_m < length, other=0.0)
        else:
            q = tl.load(q_ptrs)
            do = tl.load(do_ptrs)
            lse = tl.load(lse_base + offs_m)
            delta = tl.load(delta_base + offs_m)
        # Transposed tiles [BLOCK_N, BLOCK_M]: rows are keys, columns are queries.
        qk_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)
        p_t = tl.exp2(qk_t * qk_scale - lse[None, :])
        if MASKED:
            allowed_t = _allowed(offs_m[None, :], offs_n[:, None], length, window, HAS_WINDOW)
            p_t = tl.where(allowed_t, p_t, 0.0)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        if HAS_DROPOUT:
            tile_offset = _dropout_tile_offset(m0, row_mult, row_block_mult, row_block_key, BLOCK_M)
            p_kept_t = _dropout_zero(p_t, lattice_t + tile_offset, threshold, True)
            ds_t = p_kept_t * dp_t - p_t * delta[None, :]  # (1 - p) dS
        else:
            p_kept_t = p_t
            ds_t = p_t * (dp_t - delta[None, :])
        dv += tl.dot(p_kept_t.to(do.dtype), do, input_precision=DOT_PRECISION)
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)
        if ACCUMULATE_DQ:
            dq_part = tl.dot(tl.trans(ds_t).to(k.dtype), k, input_precision=DOT_PRECISION)  # [BLOCK_M, D]
            dq_ptrs = dq_base + offs_m[:, None] * stride_os + offs_d[None, :]
            if MASKED:
                tl.atomic_add(dq_ptrs, dq_part, mask=offs_m[:, None] < length, sem="relaxed")
            else:
                tl.atomic_add(dq_ptrs, dq_part, sem="relaxed")
    return dk, dv


@triton.autotune(configs=BWD_DKDV_CONFIGS, key=AUTOTUNE_KEY + ["ACCUMULATE_DQ"], prune_configs_by=FP32_BWD_DKDV)
@triton.jit
def _attention_bwd_dkdv_kernel(
    Q,  # [B, H, S, D] or [T, H, D]
    K,  # same layout family as Q
    V,  # same layout family as Q
    DO,  # [B, H, S, D] or [T, H, D] contiguous (strides stride_o*)
    LSE,  # [B, H, S] or [H, T] fp32 from the forward
    DELTA,  # [B, H, S] or [H, T] fp32 from the preprocess kernel
    DK,  # like DO, out
    DV,  # like DO, out
    DQ_ACC,  # like DO but fp32, zeroed, out (+=): unscaled dQ; read only when ACCUMULATE_DQ
    SEQ_INFO,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_os,
    stride_lb, stride_lh,
    num_heads,
    seq_len,
    window,
    qk_scale,  # softmax_scale * log2(e)
    softmax_scale,
    dropout_p,
    SEED,  # [1] int64 dropout seed; read only when HAS_DROPOUT
    SEQ_BUCKET,
    MODE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    ACCUMULATE_DQ: tl.constexpr,  # single-pass backward: dQ by fp32 atomics, no dQ kernel
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    (pid_n, length, q_base, k_base, v_base, o_offset, lse_offset, key, row_mult, row_block_mult, row_block_key,
     col_mult, col_block_mult, col_block_key, threshold) = _program_start(
        Q, K, V, SEQ_INFO, SEED, stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
        stride_vb, stride_vh, stride_vs, stride_ob, stride_oh, stride_os, stride_lb, stride_lh,
        num_heads, seq_len, dropout_p, BLOCK_N, MODE, HAS_DROPOUT)
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    key_rows = offs_n[:, None] < length
    k = tl.load(k_base + offs_n[:, None] * stride_ks + offs_d[None, :], mask=key_rows, other=0.0)
    v = tl.load(v_base + offs_n[:, None] * stride_vs + offs_d[None, :], mask=key_rows, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    lattice_t = offs_n
    if HAS_DROPOUT:  # this tile's keys x the query rows of a tile at 0
        lattice_t = _dropout_lattice(
            _dropout_axis_terms(n0, col_mult, col_block_mult, col_block_key, BLOCK_N, True) + key,
            _dropout_axis_terms(0, row_mult, row_block_mult, row_block_key, BLOCK_M, False))

    lo, full_lo, full_hi, hi = _visit_ranges(n0, BLOCK_N, length, window, BLOCK_M, HAS_WINDOW)
    do_base = DO + o_offset
    lse_base = LSE + lse_offset
    delta_base = DELTA + lse_offset
    dq_base = DQ_ACC + o_offset
    dk, dv = _dkdv_loop(dk, dv, k, v, q_base, do_base, lse_base, delta_base, dq_base, stride_qs, stride_os,
                        n0, offs_n, offs_d, full_lo, full_hi, length, window, qk_scale, lattice_t, row_mult,
                        row_block_mult, row_block_key, threshold, False, HAS_WINDOW, HAS_DROPOUT, DOT_PRECISION,
                        ACCUMULATE_DQ, BLOCK_M, BLOCK_N)
    dk, dv = _dkdv_loop(dk, dv, k, v, q_base, do_base, lse_base, delta_base, dq_base, stride_qs, stride_os,
                        n0, offs_n, offs_d, lo, full_lo, length, window, qk_scale, lattice_t, row_mult,
                        row_block_mult, row_block_key, threshold, True, HAS_WINDOW, HAS_DROPOUT, DOT_PRECISION,
                        ACCUMULATE_DQ, BLOCK_M, BLOCK_N)
    dk, dv = _dkdv_loop(dk, dv, k, v, q_base, do_base, lse_base, delta_base, dq_base, stride_qs, stride_os,
                        n0, offs_n, offs_d, full_hi, hi, length, window, qk_scale, lattice_t, row_mult,
                        row_block_mult, row_block_key, threshold, True, HAS_WINDOW, HAS_DROPOUT, DOT_PRECISION,
                        ACCUMULATE_DQ, BLOCK_M, BLOCK_N)

    dk = dk * softmax_scale
    if HAS_DROPOUT:
        inv_keep = 1.0 / (1.0 - dropout_p)
        dk = dk * inv_keep
        dv = dv * inv_keep
    rows_owned = seq_len if MODE != 2 else length  # padded layouts: zeros for padded keys
    out_ptrs = o_offset + offs_n[:, None] * stride_os + offs_d[None, :]
    tl.store(DK + out_ptrs, dk.to(DK.dtype.element_ty), mask=offs_n[:, None] < rows_owned)
    tl.store(DV + out_ptrs, dv.to(DV.dtype.element_ty), mask=offs_n[:, None] < rows_owned)


@triton.jit
def _dq_loop(
    dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d, n_start, n_end,
    length, window, qk_scale, lattice, col_mult, col_block_mult, col_block_key, threshold,
    MASKED: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Accumulate dQ of one query tile over key tiles [n_start, n_end); with dropout ``(1 - p) dS``
    (Delta comes scaled by ``1 - p``, as in :func:`_dkdv_loop`)."""
    for n0 in range(n_start, n_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[:, None] * stride_ks + offs_d[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_vs + offs_d[None, :]
        if MASKED:
            key_rows = offs_n[:, None] < length
            k = tl.load(k_ptrs, mask=key_rows, other=0.0)
            v = tl.load(v_ptrs, mask=key_rows, other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        p = tl.exp2(qk * qk_scale - lse[:, None])
        if MASKED:
            allowed = _allowed(offs_m[:, None], offs_n[None, :], length, window, HAS_WINDOW)
            p = tl.where(allowed, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        if HAS_DROPOUT:
            # (1 - p) dS = P Z dP - P Delta': both outcomes, chosen in the matmul's dtype, where a
            # 16-bit pair costs one select (_dropout_select) instead of one mask per fp32 dP.
            dropped = p * -delta[:, None]
            kept = p * dp + dropped
            tile_offset = _dropout_tile_offset(n0, col_mult, col_block_mult, col_block_key, BLOCK_N)
            ds = _dropout_select(kept.to(k.dtype), dropped.to(k.dtype), lattice + tile_offset, threshold, False)
        else:
            ds = (p * (dp - delta[:, None])).to(k.dtype)
        dq += tl.dot(ds, k, input_precision=DOT_PRECISION)
    return dq


@triton.autotune(configs=BWD_DQ_CONFIGS, key=AUTOTUNE_KEY, prune_configs_by=FP32_BWD_DQ)
@triton.jit
def _attention_bwd_dq_kernel(
    Q,  # [B, H, S, D] or [T, H, D]
    K,  # same layout family as Q
    V,  # same layout family as Q
    DO,  # [B, H, S, D] or [T, H, D] contiguous (strides stride_o*)
    LSE,  # [B, H, S] or [H, T] fp32
    DELTA,  # [B, H, S] or [H, T] fp32
    DQ,  # like DO, out
    SEQ_INFO,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_os,
    stride_lb, stride_lh,
    num_heads,
    seq_len,
    window,
    qk_scale,
    softmax_scale,
    dropout_p,
    SEED,  # [1] int64 dropout seed; read only when HAS_DROPOUT
    SEQ_BUCKET,
    MODE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    (pid_m, length, q_base, k_base, v_base, o_offset, lse_offset, key, row_mult, row_block_mult, row_block_key,
     col_mult, col_block_mult, col_block_key, threshold) = _program_start(
        Q, K, V, SEQ_INFO, SEED, stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
        stride_vb, stride_vh, stride_vs, stride_ob, stride_oh, stride_os, stride_lb, stride_lh,
        num_heads, seq_len, dropout_p, BLOCK_M, MODE, HAS_DROPOUT)
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    query_rows = offs_m[:, None] < length
    q = tl.load(q_base + offs_m[:, None] * stride_qs + offs_d[None, :], mask=query_rows, other=0.0)
    do = tl.load(DO + o_offset + offs_m[:, None] * stride_os + offs_d[None, :], mask=query_rows, other=0.0)
    lse = tl.load(LSE + lse_offset + offs_m, mask=offs_m < length, other=0.0)
    delta = tl.load(DELTA + lse_offset + offs_m, mask=offs_m < length, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    lattice = offs_m
    if HAS_DROPOUT:  # this tile's rows x the keys of a tile at 0
        lattice = _dropout_lattice(
            _dropout_axis_terms(m0, row_mult, row_block_mult, row_block_key, BLOCK_M, True) + key,
            _dropout_axis_terms(0, col_mult, col_block_mult, col_block_key, BLOCK_N, False))

    lo, full_lo, full_hi, hi = _visit_ranges(m0, BLOCK_M, length, window, BLOCK_N, HAS_WINDOW)
    dq = _dq_loop(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d, full_lo, full_hi,
                  length, window, qk_scale, lattice, col_mult, col_block_mult, col_block_key, threshold,
                  False, HAS_WINDOW, HAS_DROPOUT, DOT_PRECISION, BLOCK_N)
    dq = _dq_loop(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d, lo, full_lo,
                  length, window, qk_scale, lattice, col_mult, col_block_mult, col_block_key, threshold,
                  True, HAS_WINDOW, HAS_DROPOUT, DOT_PRECISION, BLOCK_N)
    dq = _dq_loop(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d, full_hi, hi,
                  length, window, qk_scale, lattice, col_mult, col_block_mult, col_block_key, threshold,
                  True, HAS_WINDOW, HAS_DROPOUT, DOT_PRECISION, BLOCK_N)

    dq = dq * softmax_scale
    if HAS_DROPOUT:
        dq = dq * (1.0 / (1.0 - dropout_p))
    rows_owned = seq_len if MODE != 2 else length  # padded layouts: zeros for padded queries
    tl.store(DQ + o_offset + offs_m[:, None] * stride_os + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=offs_m[:, None] < rows_owned)


@triton.jit
def _dropout_keep_mask_kernel(
    KEEP,  # [B, H, S, S] int8 (1 = kept), contiguous
    seq_len,
    dropout_p,
    SEED,  # [1] int64 dropout seed
    BLOCK: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_n = tl.program_id(2)
    key, row_mult, row_block_mult, row_block_key, col_mult, col_block_mult, col_block_key, threshold = (
        _dropout_keys(tl.load(SEED), pid_bh, dropout_p))
    offs_m = pid_m * BLOCK + tl.arange(0, BLOCK)
    offs_n = pid_n * BLOCK + tl.arange(0, BLOCK)
    lattice = _dropout_lattice(
        _dropout_axis_terms(pid_m * BLOCK, row_mult, row_block_mult, row_block_key, BLOCK, True) + key,
        _dropout_axis_terms(pid_n * BLOCK, col_mult, col_block_mult, col_block_key, BLOCK, True))
    keep = _dropout_keep(lattice, threshold, False)
    base = KEEP + pid_bh.to(tl.int64) * seq_len * seq_len
    mask = (offs_m[:, None] < seq_len) & (offs_n[None, :] < seq_len)
    tl.store(base + offs_m[:, None].to(tl.int64) * seq_len + offs_n[None, :], keep.to(tl.int8), mask=mask)


# --------------------------------------------------------------------------- launch functions
def _layout(q: torch.Tensor, seq_info: Optional[torch.Tensor]) -> Tuple[int, int, int, int]:
    """(MODE, batch, heads, rows per sequence) of a call."""
    if q.dim() == 3:
        return MODE_VARLEN, seq_info.numel() - 1, q.shape[1], -1
    return (MODE_DENSE if seq_info is None else MODE_SEQ_LENS), q.shape[0], q.shape[1], q.shape[2]


def _bhs_strides(t: torch.Tensor) -> Tuple[int, int, int]:
    """(batch, head, sequence) strides; packed ``[T, H, D]`` has no batch stride."""
    if t.dim() == 3:
        return 0, t.stride(1), t.stride(0)
    return t.stride(0), t.stride(1), t.stride(2)


def _lse_strides(lse: torch.Tensor) -> Tuple[int, int]:
    """LSE/Delta is ``[B, H, S]`` or ``[H, T]``, unit stride along the sequence."""
    if lse.dim() == 2:
        return 0, lse.stride(0)
    return lse.stride(0), lse.stride(1)


def _lse_shape(q: torch.Tensor) -> Tuple[int, ...]:
    return (q.shape[1], q.shape[0]) if q.dim() == 3 else tuple(q.shape[:3])


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs keep fp32 products (the parity tests run at 1e-5); 16-bit ones use tensor cores.
    return "ieee" if dtype == torch.float32 else "tf32"


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: bool, fn: str) -> None:
    """Shape/dtype/device checks shared by the launch functions (no host sync)."""
    want = 3 if packed else 4
    layout = "[T, H, D]" if packed else "[B, H, S, D]"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != want:
            raise ValueError(f"{fn}: {name} must be {layout}, got shape {tuple(t.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"{fn}: q, k, v must have equal shapes {layout}, got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"{fn}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them first")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{fn}: q dtype must be one of float16, bfloat16, float32, got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{fn}: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"{fn}: head dim (last dim of q) must be one of {SUPPORTED_HEAD_DIMS}, got {q.shape[-1]}; "
            "pad the head dim or use backend='torch'"
        )


def _check_seq_info(q: torch.Tensor, seq_info: Optional[torch.Tensor], fn: str) -> None:
    """``seq_lens`` [B] / ``cu_seqlens`` [B + 1] must be int32 on q's device (no host sync)."""
    if q.dim() == 3 and seq_info is None:
        raise ValueError(f"{fn}: packed [T, H, D] input needs cu_seqlens")
    if seq_info is None:
        return
    name = "cu_seqlens" if q.dim() == 3 else "seq_lens"
    if seq_info.dtype != torch.int32 or seq_info.dim() != 1 or seq_info.device != q.device:
        raise ValueError(
            f"{fn}: {name} must be a 1-D int32 tensor on {q.device}, got {seq_info.dtype} "
            f"{tuple(seq_info.shape)} on {seq_info.device}"
        )
    if q.dim() == 4 and seq_info.numel() != q.shape[0]:
        raise ValueError(f"{fn}: seq_lens must be [B={q.shape[0]}], got {tuple(seq_info.shape)}")
    if q.dim() == 3 and seq_info.numel() < 1:
        raise ValueError(f"{fn}: cu_seqlens must be [B + 1] with B >= 0, got an empty tensor")


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _seed_arg(seed: Optional[torch.Tensor], q: torch.Tensor) -> torch.Tensor:
    """The SEED pointer: the seed tensor, or any tensor when there is no dropout (never read)."""
    return q if seed is None else seed


def _attention_forward_launch(
    q: torch.Tensor,  # [B, H, S, D] or [T, H, D]
    k: torch.Tensor,
    v: torch.Tensor,
    seq_info: Optional[torch.Tensor],  # seq_lens [B] int32 / cu_seqlens [B+1] int32 / None
    max_seqlen: int,
    window: int,  # < 0: no window
    dropout_p: float,
    seed: Optional[torch.Tensor],  # [1] int64 on q's device; None without dropout
    softmax_scale: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel; returns (O like q but contiguous, LSE fp32)."""
    dropout_p = attention_dropout_effective_p(dropout_p)
    _check_qkv(q, k, v, packed=q.dim() == 3, fn="attention forward")
    _check_seq_info(q, seq_info, fn="attention forward")
    q, k, v = _unit_last_stride(q), _unit_last_stride(k), _unit_last_stride(v)
    mode, batch, heads, seq_len = _layout(q, seq_info)
    if mode == MODE_VARLEN:
        seq_len = max_seqlen
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(_lse_shape(q), dtype=torch.float32, device=q.device)
    if out.numel() == 0 or batch == 0 or seq_len <= 0:
        out.zero_()
        lse.zero_()
        return out, lse
    grid = lambda meta: (triton.cdiv(seq_len, meta["BLOCK_M"]) * batch * heads,)  # noqa: E731
    _attention_fwd_kernel[grid](
        q, k, v, out, lse, seq_info if seq_info is not None else q,
        *_bhs_strides(q), *_bhs_strides(k), *_bhs_strides(v), *_bhs_strides(out), *_lse_strides(lse),
        heads, seq_len, max(window, 0), softmax_scale * LOG2E, dropout_p, _seed_arg(seed, q),
        triton.next_power_of_2(seq_len),
        MODE=mode, HEAD_DIM=q.shape[-1], HAS_WINDOW=window >= 0, HAS_DROPOUT=dropout_p > 0.0,
        DOT_PRECISION=_dot_precision(q.dtype),
    )
    return out, lse


def _attention_backward_launch(
    grad_out: torch.Tensor,  # like out
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,  # contiguous, from the forward
    lse: torch.Tensor,  # fp32, from the forward
    seq_info: Optional[torch.Tensor],
    max_seqlen: int,
    window: int,
    dropout_p: float,
    seed: Optional[torch.Tensor],  # the forward's
    softmax_scale: float,
    deterministic: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Preprocess (Delta), then the dK/dV and dQ kernels, or with ``deterministic=False`` the
    single-pass dK/dV kernel that also adds dQ into an fp32 buffer by atomics; returns contiguous
    (dq, dk, dv)."""
    dropout_p = attention_dropout_effective_p(dropout_p)
    _check_qkv(q, k, v, packed=q.dim() == 3, fn="attention backward")
    _check_seq_info(q, seq_info, fn="attention backward")
    q, k, v = _unit_last_stride(q), _unit_last_stride(k), _unit_last_stride(v)
    out = out.contiguous()
    grad_out = grad_out.to(q.dtype).contiguous()
    mode, batch, heads, seq_len = _layout(q, seq_info)
    if mode == MODE_VARLEN:
        seq_len = max_seqlen
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dv = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if q.numel() == 0 or batch == 0 or seq_len <= 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = torch.empty_like(lse)
    seq_info_arg = seq_info if seq_info is not None else q
    head_dim = q.shape[-1]
    o_strides = _bhs_strides(out)
    l_strides = _lse_strides(lse)
    _attention_bwd_preprocess_kernel[(triton.cdiv(seq_len, PREPROCESS_BLOCK_M) * batch * heads,)](
        out, grad_out, delta, seq_info_arg, *o_strides, *l_strides, heads, seq_len, 1.0 - dropout_p,
        MODE=mode, HEAD_DIM=head_dim, BLOCK_M=PREPROCESS_BLOCK_M,
    )
    common = dict(MODE=mode, HEAD_DIM=head_dim, HAS_WINDOW=window >= 0, HAS_DROPOUT=dropout_p > 0.0,
                  DOT_PRECISION=_dot_precision(q.dtype))
    scalars = (heads, seq_len, max(window, 0), softmax_scale * LOG2E, softmax_scale, dropout_p,
               _seed_arg(seed, q), triton.next_power_of_2(seq_len))
    strides = (*_bhs_strides(q), *_bhs_strides(k), *_bhs_strides(v), *o_strides, *l_strides)
    grid_kv = lambda meta: (triton.cdiv(seq_len, meta["BLOCK_N"]) * batch * heads,)  # noqa: E731
    if not deterministic:
        dq_acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device)  # strides of out
        _attention_bwd_dkdv_kernel[grid_kv](
            q, k, v, grad_out, lse, delta, dk, dv, dq_acc, seq_info_arg, *strides, *scalars, **common,
            ACCUMULATE_DQ=True,
        )
        return dq_acc.mul_(softmax_scale / (1.0 - dropout_p)).to(q.dtype), dk, dv  # it holds (1 - p) dQ
    _attention_bwd_dkdv_kernel[grid_kv](
        q, k, v, grad_out, lse, delta, dk, dv, dk, seq_info_arg, *strides, *scalars, **common,
        ACCUMULATE_DQ=False,
    )
    grid_q = lambda meta: (triton.cdiv(seq_len, meta["BLOCK_M"]) * batch * heads,)  # noqa: E731
    _attention_bwd_dq_kernel[grid_q](
        q, k, v, grad_out, lse, delta, dq, seq_info_arg, *strides, *scalars, **common,
    )
    return dq, dk, dv


# --------------------------------------------------------------------------- torch.library op
@torch.library.custom_op("spanbert_fast::attention_forward", mutates_args=())
def attention_forward_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_info: Optional[torch.Tensor],
    max_seqlen: int,
    window: int,
    dropout_p: float,
    seed: Optional[torch.Tensor],
    softmax_scale: float,
    deterministic: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(O, LSE) of fused attention. ``q.dim() == 3``: packed with ``seq_info = cu_seqlens``;
    else padded with ``seq_info = seq_lens`` or None. ``window < 0``: no window.
    ``deterministic`` chooses the backward (see :func:`attention`); the forward ignores it."""
    return _attention_forward_launch(q, k, v, seq_info, max_seqlen, window, dropout_p, seed, softmax_scale)


@attention_forward_op.register_fake
def _attention_forward_fake(q, k, v, seq_info, max_seqlen, window, dropout_p, seed, softmax_scale,
                            deterministic=True):
    out = q.new_empty(q.shape)
    lse = q.new_empty(_lse_shape(q), dtype=torch.float32)
    return out, lse


@torch.library.custom_op("spanbert_fast::attention_backward", mutates_args=())
def attention_backward_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    seq_info: Optional[torch.Tensor],
    max_seqlen: int,
    window: int,
    dropout_p: float,
    seed: Optional[torch.Tensor],
    softmax_scale: float,
    deterministic: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dQ, dK, dV) of :func:`attention_forward_op`; bit-reproducible when ``deterministic``."""
    return _attention_backward_launch(
        grad_out, q, k, v, out, lse, seq_info, max_seqlen, window, dropout_p, seed, softmax_scale, deterministic
    )


@attention_backward_op.register_fake
def _attention_backward_fake(grad_out, q, k, v, out, lse, seq_info, max_seqlen, window, dropout_p, seed,
                             softmax_scale, deterministic=True):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, seq_info, max_seqlen, window, dropout_p, seed, softmax_scale, *rest = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, seed)
    ctx.seq_info = seq_info
    ctx.options = (max_seqlen, window, dropout_p, softmax_scale, rest[0] if rest else True)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, seed = ctx.saved_tensors
    max_seqlen, window, dropout_p, softmax_scale, deterministic = ctx.options
    dq, dk, dv = attention_backward_op(
        grad_out, q, k, v, out, lse, ctx.seq_info, max_seqlen, window, dropout_p, seed, softmax_scale, deterministic
    )
    return dq, dk, dv, None, None, None, None, None, None, None


attention_forward_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- functional API
def _check_options(fn: str, window, dropout_p, seed, softmax_scale, deterministic=True) -> None:
    if window is not None and (not is_int(window) or window < 0):
        raise ValueError(f"{fn}: window must be None or an int >= 0 (keys with |i - j| <= window), got {window!r}")
    if not isinstance(dropout_p, numbers.Real) or not (0.0 <= float(dropout_p) < 1.0):
        raise ValueError(f"{fn}: dropout_p must be a float in [0, 1), got {dropout_p!r}")
    check_seed(seed, fn)
    if not isinstance(deterministic, bool):
        raise ValueError(f"{fn}: deterministic must be True or False, got {deterministic!r}")
    if softmax_scale is not None and not (
        isinstance(softmax_scale, numbers.Real) and math.isfinite(softmax_scale) and softmax_scale > 0
    ):
        raise ValueError(f"{fn}: softmax_scale must be a positive finite float or None, got {softmax_scale!r}")


def attention(
    q: torch.Tensor,  # [B, H, S, D]
    k: torch.Tensor,  # [B, H, S, D]
    v: torch.Tensor,  # [B, H, S, D]
    *,
    seq_lens: Optional[torch.Tensor] = None,  # [B] integer, right padding
    window: Optional[int] = None,
    dropout_p: float = 0.0,
    seed: SeedLike = None,
    softmax_scale: Optional[float] = None,
    deterministic: bool = True,
) -> torch.Tensor:
    """Fused attention on padded ``[B, H, S, D]``; returns ``[B, H, S, D]`` in q's dtype.

    ``seq_lens[b]``: keys at positions >= it get no weight and those query rows are zeros.
    ``window``: query i sees keys j with ``|i - j| <= window``. ``dropout_p``/``seed``: see
    :func:`attention_dropout_keep_mask`; ``seed=None`` draws a fresh one on q's device from
    torch's generator, an int or a one-element int64 tensor fixes the mask.
    ``softmax_scale`` defaults to ``1/sqrt(D)``. ``deterministic=True`` (default): the two-kernel
    backward, bit-reproducible; ``False``: the single-pass backward (one kernel, five matmuls per
    tile pair instead of seven, dQ summed by fp32 atomics in a run-dependent order).
    """
    fn = "attention"
    _check_qkv(q, k, v, packed=False, fn=fn)
    _check_options(fn, window, dropout_p, seed, softmax_scale, deterministic)
    batch, _, seq_len, head_dim = q.shape
    seq_info = None
    if seq_lens is not None:
        if not isinstance(seq_lens, torch.Tensor) or seq_lens.dim() != 1 or seq_lens.numel() != batch:
            shape = tuple(seq_lens.shape) if isinstance(seq_lens, torch.Tensor) else type(seq_lens).__name__
            raise ValueError(f"{fn}: seq_lens must be a [B={batch}] tensor of lengths, got {shape}")
        if seq_lens.dtype.is_floating_point or seq_lens.dtype == torch.bool or seq_lens.is_complex():
            raise ValueError(f"{fn}: seq_lens must hold integers, got {seq_lens.dtype}; use .to(torch.int32)")
        if seq_lens.device != q.device:
            raise ValueError(f"{fn}: seq_lens must be on {q.device} like q, got {seq_lens.device}")
        if may_sync(seq_lens) and seq_lens.numel() and bool(((seq_lens < 0) | (seq_lens > seq_len)).any()):
            raise ValueError(f"{fn}: seq_lens must lie in [0, S={seq_len}], got {seq_lens.tolist()}")
        seq_info = seq_lens.to(torch.int32).contiguous()
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
    seed = seed_tensor(seed, float(dropout_p), q.device, fn)
    out, _ = attention_forward_op(
        q, k, v, seq_info, seq_len, -1 if window is None else int(window), float(dropout_p), seed, scale,
        bool(deterministic),
    )
    return out


def attention_varlen(
    q: torch.Tensor,  # [T, H, D]
    k: torch.Tensor,  # [T, H, D]
    v: torch.Tensor,  # [T, H, D]
    cu_seqlens: torch.Tensor,  # [B + 1] int32: 0, len_0, len_0 + len_1, ..., T
    max_seqlen: int,  # >= every length; also the row length of the dropout counter
    *,
    window: Optional[int] = None,
    dropout_p: float = 0.0,
    seed: SeedLike = None,
    softmax_scale: Optional[float] = None,
    validate: bool = True,
    deterministic: bool = True,
) -> torch.Tensor:
    """Fused attention on packed sequences; returns ``[T, H, D]`` in q's dtype.

    Sequence b is rows ``cu_seqlens[b]:cu_seqlens[b + 1]`` and attends only to itself.
    Zero-length sequences are allowed (repeat an offset), e.g. to keep shapes fixed.
    ``validate=False`` skips the value checks of ``cu_seqlens`` (one host sync) for callers
    that built it themselves, as the model does when it unpads. ``deterministic``: as in
    :func:`attention`.
    """
    fn = "attention_varlen"
    _check_qkv(q, k, v, packed=True, fn=fn)
    _check_options(fn, window, dropout_p, seed, softmax_scale, deterministic)
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        shape = tuple(cu_seqlens.shape) if isinstance(cu_seqlens, torch.Tensor) else type(cu_seqlens).__name__
        raise ValueError(f"{fn}: cu_seqlens must be a [B + 1] int32 tensor of offsets, got {shape}")
    if cu_seqlens.dtype != torch.int32:
        raise ValueError(f"{fn}: cu_seqlens must be int32, got {cu_seqlens.dtype}; use cu_seqlens.to(torch.int32)")
    if cu_seqlens.device != q.device:
        raise ValueError(f"{fn}: cu_seqlens must be on {q.device} like q, got {cu_seqlens.device}")
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < 0:
        raise ValueError(f"{fn}: max_seqlen must be a Python int >= 0, got {max_seqlen!r}")
    total = q.shape[0]
    if validate and may_sync(cu_seqlens):  # one host sync for all value checks
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        if lengths.numel() == 0:
            lengths = cu_seqlens.new_zeros(1)
        first, last, shortest, longest = torch.stack(
            [cu_seqlens[0], cu_seqlens[-1], lengths.min(), lengths.max()]
        ).tolist()
        if first != 0 or last != total or shortest < 0:
            raise ValueError(
                f"{fn}: cu_seqlens must start at 0, never decrease and end at T={total}, got "
                f"{cu_seqlens.tolist()}"
            )
        if longest > max_seqlen:
            raise ValueError(f"{fn}: max_seqlen={max_seqlen} is below the longest sequence ({longest})")
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    out, _ = attention_forward_op(
        q, k, v, cu_seqlens.contiguous(), int(max_seqlen), -1 if window is None else int(window),
        float(dropout_p), seed_tensor(seed, float(dropout_p), q.device, fn), scale, bool(deterministic),
    )
    return out


def attention_dropout_effective_p(dropout_p: float) -> float:
    """The drop rate the kernels apply for ``dropout_p``: ``T / 128`` with
    ``T = min(floor(p * 128 + 1/2), 127)``, p rounded to the nearest multiple of 1/128 (the
    kernels compare 7 random bits per score with T). Kept values are scaled by
    ``1 / (1 - T / 128)``; ``p < 1/256`` is no dropout. 0.1 -> 13/128 = 0.1015625."""
    return min(math.floor(float(dropout_p) * 128.0 + 0.5), 127) / 128.0


def attention_dropout_keep_mask(
    batch: int,
    heads: int,
    seq_len: int,
    dropout_p: float,
    seed,  # int or one-element int64 tensor
    device=None,
) -> torch.Tensor:
    """``[B, H, S, S]`` bool, True where the kernels keep probability (b, h, i, j).

    The same bits as the attention kernels (``_dropout_keep``; the module docstring gives the
    function). They do not depend on S: padded calls (with or without ``seq_lens``) and
    :func:`attention_varlen` (with ``batch = len(cu_seqlens) - 1``) use ``mask[b, :, :L, :L]``
    for sequence b of length L, for any ``seq_len >= L`` (positions are local to the sequence). Pass it to
    ``ops.attention_torch(..., dropout_mask=mask)`` to reproduce the kernel with the reference.
    """
    fn = "attention_dropout_keep_mask"
    if seed is None:
        raise ValueError(f"{fn}: pass the seed whose mask you want (an int or a one-element int64 tensor)")
    _check_options(fn, None, dropout_p, seed, None)
    device = torch.device("cpu") if device is None else torch.device(device)
    dropout_p = attention_dropout_effective_p(dropout_p)
    if dropout_p == 0.0:
        return torch.ones(batch, heads, seq_len, seq_len, dtype=torch.bool, device=device)
    keep = torch.empty(batch, heads, seq_len, seq_len, dtype=torch.int8, device=device)
    if keep.numel() == 0:
        return keep.bool()
    grid = (batch * heads, triton.cdiv(seq_len, KEEP_MASK_BLOCK), triton.cdiv(seq_len, KEEP_MASK_BLOCK))
    seed = as_seed_tensor(seed, device, fn)
    _dropout_keep_mask_kernel[grid](keep, seq_len, float(dropout_p), seed, BLOCK=KEEP_MASK_BLOCK)
    return keep.bool()
