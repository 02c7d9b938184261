"""Parity of the fused Triton attention with the pure-torch references in ``spanbert_fast.ops``.

Output and dQ, dK, dV for padded ``[B, H, S, D]`` input (dense and with ``seq_lens``, lengths
0 and 1 included), packed varlen input with very unequal lengths, sliding windows (narrower
than a tile, a tile wide, wider than the sequence), a custom softmax scale, strided input;
seeded dropout (reproducible, seed-dependent, keep rate ~ 1 - p, gradients against the
reference given the kernel's keep-mask; the mask is the documented hash, with sound statistics);
deterministic backward and the single-pass (atomic dQ) one; the torch.library
registration (opcheck, torch.compile) and input validation. On CPU every kernel runs under
the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1).

Tolerances (tests/helpers.py): fp32 at 1e-5, 1e-4 when a softmax row or a gradient sum runs
over >= 256 positions; bf16/fp16 on GPU by the 2x rule against an fp32 reference.
"""
import math

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from helpers import DEVICE, FP32_REDUCTION_TOL, FP32_TOL, assert_close_fp32, assert_close_lowp
from spanbert_fast import ops
from spanbert_fast.kernels import attention as kernel
from spanbert_fast.kernels.attention import (
    attention, attention_dropout_effective_p, attention_dropout_keep_mask, attention_varlen,
)

GRAD_NAMES = ("dq", "dk", "dv")


# --------------------------------------------------------------------------- helpers
def make_qkv(*shape, dtype=torch.float32, device=DEVICE):
    return [torch.randn(*shape, device=device).to(dtype).requires_grad_() for _ in range(3)]


def output_and_grads(fn, q, k, v, grad_out):
    """(output, [dq, dk, dv]) of ``fn(q, k, v)`` for the upstream gradient ``grad_out``."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(grad_out)
    return out.detach(), [q.grad, k.grad, v.grad]


def lengths_to_mask(seq_lens, seq_len):
    """``[B]`` lengths -> ``[B, S]`` bool key-padding mask (True = real token)."""
    return torch.arange(seq_len, device=seq_lens.device)[None, :] < seq_lens[:, None]


def cu_seqlens_of(lengths, device=DEVICE):
    return F.pad(torch.tensor(lengths, device=device).cumsum(0), (1, 0)).to(torch.int32)


def pad_packed(t, lengths, max_seqlen):
    """Packed ``[T, H, D]`` -> padded ``[B, H, S, D]`` (zeros at padding), differentiable."""
    mask = lengths_to_mask(torch.tensor(lengths, device=t.device), max_seqlen)
    rows = torch.nonzero(mask.flatten()).squeeze(1)
    padded = t.new_zeros(len(lengths) * max_seqlen, *t.shape[1:]).index_copy(0, rows, t)
    return padded.view(len(lengths), max_seqlen, *t.shape[1:]).transpose(1, 2), mask, rows


def on_padded(fn, lengths, max_seqlen):
    """A packed ``(q, k, v) -> out`` that runs ``fn(qp, kp, vp, key_padding_mask)`` on the padded
    ``[B, H, S, D]`` copies and packs its output back (a varlen reference from a padded one)."""
    def packed(q, k, v):
        (qp, mask, rows), kp, vp = pad_packed(q, lengths, max_seqlen), pad_packed(k, lengths, max_seqlen)[0], \
            pad_packed(v, lengths, max_seqlen)[0]
        return fn(qp, kp, vp, mask).transpose(1, 2).reshape(-1, *q.shape[1:])[rows]

    return packed


def tolerance(longest):
    return FP32_REDUCTION_TOL if longest >= 256 else FP32_TOL


def assert_parity(actual, expected, tol):
    (out, grads), (ref_out, ref_grads) = actual, expected
    assert_close_fp32(out, ref_out, tol, name="output")
    for name, grad, ref in zip(GRAD_NAMES, grads, ref_grads):
        assert_close_fp32(grad, ref, tol, name=name)


# --------------------------------------------------------------------------- padded parity
# (B, H, S, D, seq_lens or None, window or None)
PADDED_CASES = [
    pytest.param(1, 1, 1, 32, None, None, id="B1-H1-S1-D32"),
    pytest.param(1, 2, 7, 32, None, None, id="B1-H2-S7-D32"),
    pytest.param(3, 2, 64, 64, None, None, id="B3-H2-S64-D64"),
    pytest.param(1, 4, 129, 128, None, None, id="B1-H4-S129-D128"),
    pytest.param(1, 2, 257, 64, None, None, id="B1-H2-S257-D64"),
    pytest.param(3, 2, 7, 128, [7, 1, 0], None, id="B3-H2-S7-D128-pad-len1-len0"),
    pytest.param(3, 2, 129, 64, [129, 1, 70], None, id="B3-H2-S129-D64-pad"),
    pytest.param(3, 1, 257, 32, [200, 257, 65], None, id="B3-H1-S257-D32-pad"),
    pytest.param(1, 2, 257, 32, None, 0, id="B1-H2-S257-D32-w0"),
    pytest.param(1, 1, 257, 64, None, 70, id="B1-H1-S257-D64-w70"),
    pytest.param(1, 1, 257, 32, None, 126, id="B1-H1-S257-D32-w126"),
    pytest.param(3, 1, 129, 64, [129, 1, 100], 16, id="B3-H1-S129-D64-pad-w16"),
    pytest.param(1, 2, 64, 128, None, 64, id="B1-H2-S64-D128-w64"),
    pytest.param(1, 1, 128, 32, None, 63, id="B1-H1-S128-D32-w63"),
    pytest.param(2, 1, 128, 32, [128, 127], 62, id="B2-H1-S128-D32-pad-w62"),
    pytest.param(1, 1, 64, 32, None, 500, id="B1-H1-S64-D32-w500"),
]


@pytest.mark.parametrize("batch,heads,seq_len,head_dim,seq_lens,window", PADDED_CASES)
def test_padded_parity(batch, heads, seq_len, head_dim, seq_lens, window):
    q, k, v = make_qkv(batch, heads, seq_len, head_dim)
    grad_out = torch.randn_like(q)
    lens = None if seq_lens is None else torch.tensor(seq_lens, device=DEVICE)
    mask = None if lens is None else lengths_to_mask(lens, seq_len)
    ours = output_and_grads(lambda q, k, v: attention(q, k, v, seq_lens=lens, window=window), q, k, v, grad_out)
    ref = output_and_grads(lambda q, k, v: ops.attention_torch(q, k, v, mask, window), q, k, v, grad_out)
    assert_parity(ours, ref, tolerance(seq_len))
    if lens is not None:  # padded query rows: zero output, zero dq; padded keys: zero dk, dv
        out, (dq, dk, dv) = ours
        padded = ~mask[:, None, :, None].expand_as(out)
        for name, t in (("output", out), ("dq", dq), ("dk", dk), ("dv", dv)):
            assert torch.all(t[padded] == 0), f"{name} is not zero at padded rows"


def test_softmax_scale_and_strided_input():
    """[B, S, H, D] projections viewed as [B, H, S, D] are read in place; a custom scale."""
    batch, seq_len, heads, head_dim = 2, 65, 3, 32
    q, k, v = (t.detach().transpose(1, 2).requires_grad_() for t in make_qkv(batch, seq_len, heads, head_dim))
    assert not q.is_contiguous()
    grad_out = torch.randn(batch, heads, seq_len, head_dim, device=DEVICE)
    ours = output_and_grads(lambda q, k, v: attention(q, k, v, softmax_scale=0.5), q, k, v, grad_out)
    ref = output_and_grads(lambda q, k, v: ops.attention_torch(q, k, v, softmax_scale=0.5), q, k, v, grad_out)
    assert_parity(ours, ref, FP32_TOL)


# --------------------------------------------------------------------------- varlen parity
# (H, D, lengths, max_seqlen or None (= longest), window)
VARLEN_CASES = [
    pytest.param(2, 64, [1, 130, 7, 64], None, None, id="H2-D64-lens1,130,7,64"),
    pytest.param(1, 32, [257], None, None, id="H1-D32-lens257"),
    pytest.param(2, 128, [5, 0, 200, 1], None, 20, id="H2-D128-lens5,0,200,1-w20"),
    pytest.param(4, 32, [3, 3, 3], 10, None, id="H4-D32-lens3,3,3-max10"),
    pytest.param(1, 64, [300, 2], None, 1, id="H1-D64-lens300,2-w1"),
]


@pytest.mark.parametrize("heads,head_dim,lengths,max_seqlen,window", VARLEN_CASES)
def test_varlen_parity(heads, head_dim, lengths, max_seqlen, window):
    max_seqlen = max_seqlen or max(lengths)
    cu_seqlens = cu_seqlens_of(lengths)
    q, k, v = make_qkv(sum(lengths), heads, head_dim)
    grad_out = torch.randn_like(q)
    ours = output_and_grads(
        lambda q, k, v: attention_varlen(q, k, v, cu_seqlens, max_seqlen, window=window), q, k, v, grad_out
    )
    ref = output_and_grads(
        lambda q, k, v: ops.attention_varlen_torch(q, k, v, cu_seqlens, max_seqlen, window), q, k, v, grad_out
    )
    assert_parity(ours, ref, tolerance(max(lengths)))


@pytest.mark.parametrize("layout", ["right-padded", "left-padded"])
def test_ops_triton_backend_with_padding_mask(layout, monkeypatch):
    """``ops.attention(..., backend="triton")``: a right-padded mask runs the kernel's ``seq_lens``
    mode on the padded tensors, any other mask goes through unpad -> varlen -> repad; both equal
    the reference, outputs and every grad."""
    import spanbert_fast.kernels.attention as kernel

    batch, heads, seq_len, head_dim = 3, 2, 50, 64
    q, k, v = make_qkv(batch, heads, seq_len, head_dim)
    mask = lengths_to_mask(torch.tensor([50, 3, 21], device=DEVICE), seq_len)
    if layout == "left-padded":
        mask = mask.flip(-1)
    calls = []
    for name in ("attention", "attention_varlen"):
        original = getattr(kernel, name)
        monkeypatch.setattr(kernel, name, lambda *a, _f=original, _n=name, **kw: calls.append((_n, kw)) or _f(*a, **kw))
    grad_out = torch.randn_like(q)
    ours = output_and_grads(lambda q, k, v: ops.attention(q, k, v, mask, window=9, backend="triton"),
                            q, k, v, grad_out)
    ref = output_and_grads(lambda q, k, v: ops.attention(q, k, v, mask, window=9, backend="torch"),
                           q, k, v, grad_out)
    assert_parity(ours, ref, FP32_TOL)
    if layout == "right-padded":
        assert [name for name, _ in calls] == ["attention"]
        assert calls[0][1]["seq_lens"].tolist() == [50, 3, 21]
    else:
        assert [name for name, _ in calls] == ["attention_varlen"]


# --------------------------------------------------------------------------- dropout
def test_dropout_same_seed_same_output_other_seed_other_output():
    q, k, v = (t.detach() for t in make_qkv(2, 2, 40, 32))
    first = attention(q, k, v, dropout_p=0.2, seed=7)
    again = attention(q, k, v, dropout_p=0.2, seed=7)
    other = attention(q, k, v, dropout_p=0.2, seed=8)
    no_dropout = attention(q, k, v, dropout_p=0.0, seed=7)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first, no_dropout)
    # A one-element int64 tensor is the same seed as the int (what the kernels read).
    assert torch.equal(first, attention(q, k, v, dropout_p=0.2, seed=torch.tensor([7], device=DEVICE)))
    assert torch.equal(attention_dropout_keep_mask(2, 2, 40, 0.2, seed=7, device=DEVICE),
                       attention_dropout_keep_mask(2, 2, 40, 0.2, seed=torch.tensor(7, device=DEVICE),
                                                   device=DEVICE))


def test_dropout_without_seed_draws_from_torch_generator():
    """seed=None: a fresh mask per call, reproducible through torch.manual_seed."""
    q, k, v = (t.detach() for t in make_qkv(1, 2, 40, 32))
    torch.manual_seed(3)
    first, second = attention(q, k, v, dropout_p=0.2), attention(q, k, v, dropout_p=0.2)
    torch.manual_seed(3)
    assert torch.equal(first, attention(q, k, v, dropout_p=0.2))
    assert not torch.allclose(first, second)


def test_dropout_backward_uses_the_forward_mask_when_seed_is_fresh():
    """With seed=None the backward must regenerate the forward's mask (the drawn seed tensor
    is saved for backward). With q = 0 (uniform P) and v = I the output row i *is* the
    dropped row ``Z_i / (S (1 - p))``, so ``dV = out^T dO`` exactly when the masks agree."""
    seq_len, dropout_p = 64, 0.3
    q = torch.zeros(1, 2, seq_len, 64, device=DEVICE, requires_grad=True)
    k = torch.randn(1, 2, seq_len, 64, device=DEVICE, requires_grad=True)
    v = torch.eye(seq_len, 64, device=DEVICE).expand(1, 2, seq_len, 64).contiguous().requires_grad_()
    grad_out = torch.randn_like(v)
    out, (_, _, dv) = output_and_grads(lambda q, k, v: attention(q, k, v, dropout_p=dropout_p), q, k, v, grad_out)
    assert_close_fp32(dv, out.transpose(-1, -2) @ grad_out, name="dv")


@pytest.mark.parametrize("dropout_p", [0.1, 0.5])
def test_dropout_keep_rate(dropout_p):
    keep = attention_dropout_keep_mask(2, 3, 128, dropout_p, seed=123, device=DEVICE)
    assert keep.shape == (2, 3, 128, 128) and keep.dtype == torch.bool
    rate = keep.float().mean().item()
    # 98304 Bernoulli draws: the standard error is <= 0.0016, so 0.01 is > 6 sigma.
    assert abs(rate - (1 - attention_dropout_effective_p(dropout_p))) < 0.01, rate
    # Neither heads nor batch entries share a mask, and a new seed gives a new mask.
    assert not torch.equal(keep[0, 0], keep[0, 1]) and not torch.equal(keep[0, 0], keep[1, 0])
    assert not torch.equal(keep, attention_dropout_keep_mask(2, 3, 128, dropout_p, seed=124, device=DEVICE))


def test_dropout_kernel_keep_rate_matches_p():
    """The kernel itself drops ~p of the probabilities: with v = one-hot key ids the output
    row i holds P_ij * Z_ij / (1 - p); with q = 0 (uniform P) the kept fraction is readable."""
    seq_len, dropout_p = 64, 0.25  # a multiple of 1/128: the effective p is p itself
    assert attention_dropout_effective_p(dropout_p) == dropout_p
    q = torch.zeros(1, 4, seq_len, 64, device=DEVICE)
    k = torch.randn(1, 4, seq_len, 64, device=DEVICE)
    v = torch.eye(seq_len, 64, device=DEVICE).expand(1, 4, seq_len, 64).contiguous()
    out = attention(q, k, v, dropout_p=dropout_p, seed=5)  # out[b, h, i, j] = Z_ij / (S (1 - p))
    kept = out * seq_len * (1 - dropout_p)
    torch.testing.assert_close(kept, kept.round(), atol=1e-5, rtol=0)  # only 0s and 1s
    expected = attention_dropout_keep_mask(1, 4, seq_len, dropout_p, seed=5, device=DEVICE)
    assert torch.equal(kept.round().bool(), expected)
    assert abs(kept.mean().item() - (1 - dropout_p)) < 0.03


@pytest.mark.parametrize("seq_lens,window", [
    pytest.param([70, 33], None, id="B2-H2-S70-D32-pad-p0.3"),
    pytest.param([70, 1], 12, id="B2-H2-S70-D32-pad-w12-p0.3"),
])
def test_dropout_padded_parity_with_kernel_mask(seq_lens, window):
    batch, heads, seq_len, head_dim, dropout_p, seed = 2, 2, 70, 32, 0.3, 11
    q, k, v = make_qkv(batch, heads, seq_len, head_dim)
    grad_out = torch.randn_like(q)
    lens = torch.tensor(seq_lens, device=DEVICE)
    keep = attention_dropout_keep_mask(batch, heads, seq_len, dropout_p, seed, device=DEVICE)
    ours = output_and_grads(
        lambda q, k, v: attention(q, k, v, seq_lens=lens, window=window, dropout_p=dropout_p, seed=seed),
        q, k, v, grad_out,
    )
    ref = output_and_grads(
        lambda q, k, v: ops.attention_torch(q, k, v, lengths_to_mask(lens, seq_len), window,
                                            attention_dropout_effective_p(dropout_p), dropout_mask=keep),
        q, k, v, grad_out,
    )
    assert_parity(ours, ref, FP32_TOL)


@pytest.mark.parametrize("lengths, dropout_p, seed, window, deterministic", [
    ([9, 100, 1], 0.2, 3, None, True),
    ([9, 70, 0, 1, 33], 0.1, 6, 20, False),  # the single-pass backward (atomic dQ), with a window
], ids=["two-kernel", "single-pass"])
def test_dropout_varlen_parity_with_kernel_mask(lengths, dropout_p, seed, window, deterministic):
    """Varlen sequence b uses ``keep_mask(B, H, max_seqlen, p, seed)[b, :, :L, :L]``, in both backwards."""
    heads, head_dim = 2, 64
    max_seqlen = max(lengths)
    cu_seqlens = cu_seqlens_of(lengths)
    q, k, v = make_qkv(sum(lengths), heads, head_dim)
    grad_out = torch.randn_like(q)
    keep = attention_dropout_keep_mask(len(lengths), heads, max_seqlen, dropout_p, seed, device=DEVICE)

    reference = on_padded(lambda qp, kp, vp, mask: ops.attention_torch(
        qp, kp, vp, mask, window, attention_dropout_effective_p(dropout_p), dropout_mask=keep), lengths, max_seqlen)

    ours = output_and_grads(
        lambda q, k, v: attention_varlen(q, k, v, cu_seqlens, max_seqlen, window=window, dropout_p=dropout_p,
                                         seed=seed, deterministic=deterministic),
        q, k, v, grad_out,
    )
    assert_parity(ours, output_and_grads(reference, q, k, v, grad_out), FP32_TOL)


def _mix32(x):
    """lowbias32 on int64 tensors holding uint32 values (as ``kernels.attention._mix32``)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def _square_fold(x):
    """The low word xor the high word of the 64-bit square of uint32 values held in int64 (int64
    wraps: the low 64 bits of the product are exact)."""
    x = x * x
    return (x ^ (x >> 32)) & 0xFFFFFFFF


def reference_keep_mask(batch, heads, seq_len, dropout_p, seed, block_terms=True):
    """The documented keep-bit function, written again in torch int64 arithmetic: element
    (b, h, i, j) takes byte ``2 * ((i // 8) % 2) + (j // 8) % 2`` of the hash of
    ``R(i) + C(j) + key``, ``R(i) = pair(i % 64) * mr + fold((i - i % 64) * br + kr)`` (C alike with
    the key constants, pair(n) = n & ~8) under the constants of (seed, b * H + h), and is kept when
    that byte's low 7 bits are >= round(p * 128).

    ``block_terms=False`` is the previous mask (commit 0b68d4b), whose input was the plain lattice
    ``pair(i) * mr + pair(j) * mc + key``: the negative control of the offset statistics test."""
    m32 = 0xFFFFFFFF
    n = torch.arange(seq_len, dtype=torch.int64)
    block_size = 64 if block_terms else 2**32  # without block terms: one block, pair(n) * m
    local_pair = (n % block_size) & ~8
    block_start = n - n % block_size
    i, j = n[:, None], n[None, :]
    byte = ((i >> 3) & 1) * 2 + ((j >> 3) & 1)
    threshold = min(math.floor(dropout_p * 128 + 0.5), 127)
    scalar = lambda v: _mix32(torch.tensor(v & m32, dtype=torch.int64))  # noqa: E731
    masks = []
    for bh in range(batch * heads):
        key = scalar(int(seed & m32) ^ int(scalar((seed >> 32) ^ int(scalar(bh + 0x9E3779B9)))))
        derived = lambda salt: scalar(int(key) + salt)  # noqa: E731
        rows = local_pair * (derived(0x6A09E667) | 1)
        cols = local_pair * (derived(0xBB67AE85) | 1)
        if block_terms:
            rows = rows + _square_fold((block_start * (derived(0x3C6EF372) | 1) + derived(0x510E527F)) & m32)
            cols = cols + _square_fold((block_start * (derived(0xA54FF53A) | 1) + derived(0x9B05688C)) & m32)
        x = _square_fold((rows[:, None] + cols[None, :] + key) & m32)
        masks.append(((x >> (8 * byte)) & 0x7F) >= threshold)
    return torch.stack(masks).view(batch, heads, seq_len, seq_len)


@pytest.mark.parametrize("seed", [0, 77, 2**40 + 5, 2**63 - 1])
def test_dropout_mask_is_the_documented_hash(seed):
    """The kernels' bits are exactly the documented function of (seed, b * H + h, i, j), with
    nothing of the tile sizes or the sequence length in it (S = 40 and 200 agree; 200 spans four
    blocks of 64)."""
    expected = reference_keep_mask(2, 2, 200, 0.3, seed)
    got = attention_dropout_keep_mask(2, 2, 200, 0.3, seed=seed, device=DEVICE).cpu()
    assert torch.equal(got, expected)
    short = attention_dropout_keep_mask(2, 2, 40, 0.3, seed=seed, device=DEVICE).cpu()
    assert torch.equal(short, expected[:, :, :40, :40])


def _lag1_correlation(keep, dim):
    first, second = keep.narrow(dim, 0, keep.shape[dim] - 1), keep.narrow(dim, 1, keep.shape[dim] - 1)
    return torch.corrcoef(torch.stack([first.flatten(), second.flatten()]).double())[0, 1].item()


@pytest.mark.parametrize("dropout_p,seed", [(0.1, 2024), (0.1, 7), (0.1, 2**40 + 5), (0.5, 99)])
def test_dropout_mask_statistics(dropout_p, seed):
    """Over 1,048,576 bits of the kernel's mask: the keep rate is within 3 sigma of 1 - p_effective
    (p rounded to 1/128), and neighbouring rows (queries), neighbouring columns (keys),
    neighbouring heads and the four scores of one hash are uncorrelated (|r| < 0.01; one
    standard error is ~0.001 over the whole mask, ~0.002 over a quarter)."""
    keep = attention_dropout_keep_mask(1, 4, 512, dropout_p, seed=seed, device=DEVICE).double().cpu()
    n = keep.numel()
    p_effective = attention_dropout_effective_p(dropout_p)  # 13 / 128 for 0.1
    sigma = math.sqrt(p_effective * (1 - p_effective) / n)
    assert abs(keep.mean().item() - (1 - p_effective)) < 3 * sigma
    assert abs(_lag1_correlation(keep, 2)) < 0.01, "rows"
    assert abs(_lag1_correlation(keep, 3)) < 0.01, "columns"
    assert abs(_lag1_correlation(keep, 1)) < 0.01, "heads"
    # the four bytes of one hash: (i, j), (i, j + 8), (i + 8, j), (i + 8, j + 8), every two of them
    groups = keep.unflatten(3, (-1, 2, 8)).unflatten(2, (-1, 2, 8))  # [B, H, i // 16, (i, i + 8), 8, j // 16, ...]
    scores = [groups[:, :, :, r, :, :, c, :].flatten() for r in (0, 1) for c in (0, 1)]
    for first in range(4):
        for second in range(first + 1, 4):
            r = torch.corrcoef(torch.stack([scores[first], scores[second]]))[0, 1].item()
            assert abs(r) < 0.01, f"bytes {first} and {second} of one hash: r = {r}"


# Every offset, not only lag 1: the correlation of the mask with itself shifted by (di, dj), all
# |di|, |dj| <= 255 (261,120 offsets of a 512 x 512 mask), and of two heads' masks likewise. For
# independent bits r * sqrt(n) (n the overlap count of the offset) is ~N(0, 1), and its max |.| over
# all offsets is ~4.6 (60 random masks at p = 0.1 and 0.5: median 4.6, max 5.5, cross-heads the
# same); P(> 6.5) is ~1e-5 per mask. The plain lattice input of commit 0b68d4b gave up to 15-29
# (p = 0.5) at a few offsets (di * mr + dj * mc ~ 0 mod 2**32), which the lag-1 test missed.
OFFSET_SEQ_LEN, MAX_OFFSET, MAX_OFFSET_Z = 512, 255, 6.5


def _offset_spectrum(bits):
    """rfft2 of the [S, S] mask, standardised (mean 0, variance 1), zero-padded to [2S, 2S] so that
    products of spectra give linear (not circular) correlations."""
    x = bits.double()
    x = (x - x.mean()) / x.std(unbiased=False)
    return torch.fft.rfft2(x, s=(2 * OFFSET_SEQ_LEN, 2 * OFFSET_SEQ_LEN))


def _max_offset_z(first, second):
    """max over offsets |di|, |dj| <= MAX_OFFSET of |r| sqrt(n): r the correlation of the masks of
    the spectra ``first`` and ``second`` at that offset over its n overlapping positions (the zero
    offset left out when they are the same mask)."""
    s, lag = OFFSET_SEQ_LEN, MAX_OFFSET
    sums = torch.fft.fftshift(torch.fft.irfft2(first * second.conj(), s=(2 * s, 2 * s)))
    sums = sums[s - lag:s + lag + 1, s - lag:s + lag + 1]  # [di + lag, dj + lag]: sum of x[i, j] y[i + di, j + dj]
    overlap = s - torch.arange(-lag, lag + 1, dtype=torch.float64).abs()
    z = sums / (overlap[:, None] * overlap[None, :]).sqrt()
    if first is second:
        z[lag, lag] = 0.0
    return z.abs().max().item()


def _max_offset_z_over_heads(keep):
    """(max over heads of the self statistic, max over neighbouring heads of the cross one) of
    ``keep`` [H, S, S]."""
    spectra = [_offset_spectrum(head) for head in keep]
    auto = max(_max_offset_z(f, f) for f in spectra)
    cross = max(_max_offset_z(f, g) for f, g in zip(spectra, spectra[1:]))
    return auto, cross


@pytest.mark.parametrize("dropout_p,seed", [(0.1, 2024), (0.1, 7), (0.5, 2024), (0.5, 2**40 + 5)])
def test_dropout_mask_has_no_correlation_at_any_offset(dropout_p, seed):
    """The kernel's mask of 4 heads of one 512-long sequence: no offset (di, dj), |di|, |dj| <= 255,
    correlates a head with itself or with the next head beyond |r| sqrt(n) < 6.5 (random bits: ~4.6).
    Negative control: the previous hash (``reference_keep_mask(..., block_terms=False)``) fails this
    at every one of these cases (test below), and this test failed on it (commit 0b68d4b)."""
    keep = attention_dropout_keep_mask(1, 4, OFFSET_SEQ_LEN, dropout_p, seed=seed, device=DEVICE).cpu()[0]
    auto, cross = _max_offset_z_over_heads(keep)
    assert auto < MAX_OFFSET_Z, f"a head correlates with itself at some offset: max |z| = {auto:.1f}"
    assert cross < MAX_OFFSET_Z, f"two heads correlate at some offset: max |z| = {cross:.1f}"


def test_offset_statistic_rejects_the_lattice_hash():
    """Negative control of the test above: the previous mask (the plain lattice input) exceeds the
    bound, so the statistic can fail."""
    keep = reference_keep_mask(1, 4, OFFSET_SEQ_LEN, 0.5, 2024, block_terms=False)[0]
    auto, _ = _max_offset_z_over_heads(keep)
    assert auto > MAX_OFFSET_Z


@triton.jit
def _tile_offset_probe(OUT, start, multiplier, block_multiplier, block_key, BLOCK: tl.constexpr):
    """OUT[0] = a moving axis's hash terms of the tile at ``start`` as the loops form them (the tile
    at 0 plus :func:`_dropout_tile_offset`), OUT[1] = the same terms computed directly."""
    zeros = kernel._dropout_axis_terms(0, 0, 0, 0, 16, False)  # a first axis of one zero pair group
    looped = kernel._dropout_lattice(zeros, kernel._dropout_axis_terms(
        0, multiplier, block_multiplier, block_key, BLOCK, False))
    looped += kernel._dropout_tile_offset(start, multiplier, block_multiplier, block_key, BLOCK)
    direct = kernel._dropout_lattice(zeros, kernel._dropout_axis_terms(
        start, multiplier, block_multiplier, block_key, BLOCK, True))
    offsets = tl.arange(0, 4 * BLOCK)
    tl.store(OUT + offsets, tl.reshape(looped, (4 * BLOCK,)).to(tl.int64) & 0xFFFFFFFF)
    tl.store(OUT + 4 * BLOCK + offsets, tl.reshape(direct, (4 * BLOCK,)).to(tl.int64) & 0xFFFFFFFF)


@pytest.mark.parametrize("block", [32, 64, 128])
def test_dropout_tile_offset_matches_the_direct_terms(block):
    """The loops' per-tile update (the moving axis's terms at 0 plus ``_dropout_tile_offset``) equals
    the terms computed at the tile's start, for every tile width the kernels use (128 spans two
    blocks of 64, 32 half of one) and tile starts up to 640."""
    for start in range(0, 640, block):
        out = torch.zeros(2, 4 * block, dtype=torch.int64, device=DEVICE)
        _tile_offset_probe[(1,)](out, start, 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, BLOCK=block)
        assert torch.equal(out[0], out[1]), f"tile at {start}"


# --------------------------------------------------------------------------- determinism, registration
def test_backward_is_deterministic():
    q, k, v = make_qkv(2, 2, 129, 64)
    grad_out = torch.randn_like(q)
    lens = torch.tensor([129, 77], device=DEVICE)
    fn = lambda q, k, v: attention(q, k, v, seq_lens=lens, dropout_p=0.1, seed=1)  # noqa: E731
    first, second = output_and_grads(fn, q, k, v, grad_out), output_and_grads(fn, q, k, v, grad_out)
    for name, a, b in zip(("output",) + GRAD_NAMES, [first[0], *first[1]], [second[0], *second[1]]):
        assert torch.equal(a, b), f"{name} differs between two identical runs"


# --------------------------------------------------------------------------- single-pass backward
# The deterministic=False backward (dK/dV kernel adding dQ by fp32 atomics): the same parity cases.
SINGLE_PASS_PADDED = [
    pytest.param(3, 2, 129, 64, [129, 1, 70], None, 0.0, id="B3-H2-S129-D64-pad"),
    pytest.param(1, 1, 257, 32, None, 70, 0.0, id="B1-H1-S257-D32-w70"),
    pytest.param(2, 2, 70, 32, [70, 33], 12, 0.3, id="B2-H2-S70-D32-pad-w12-p0.3"),
    pytest.param(3, 2, 7, 128, [7, 1, 0], None, 0.2, id="B3-H2-S7-D128-pad-len1-len0-p0.2"),
]


@pytest.mark.parametrize("batch,heads,seq_len,head_dim,seq_lens,window,dropout_p", SINGLE_PASS_PADDED)
def test_single_pass_backward_padded_parity(batch, heads, seq_len, head_dim, seq_lens, window, dropout_p):
    q, k, v = make_qkv(batch, heads, seq_len, head_dim)
    grad_out = torch.randn_like(q)
    lens = None if seq_lens is None else torch.tensor(seq_lens, device=DEVICE)
    mask = None if lens is None else lengths_to_mask(lens, seq_len)
    keep = attention_dropout_keep_mask(batch, heads, seq_len, dropout_p, 4, device=DEVICE) if dropout_p else None
    ours = output_and_grads(
        lambda q, k, v: attention(q, k, v, seq_lens=lens, window=window, dropout_p=dropout_p, seed=4,
                                  deterministic=False),
        q, k, v, grad_out,
    )
    ref = output_and_grads(
        lambda q, k, v: ops.attention_torch(q, k, v, mask, window, attention_dropout_effective_p(dropout_p),
                                            dropout_mask=keep), q, k, v, grad_out
    )
    assert_parity(ours, ref, tolerance(seq_len))
    if lens is not None:  # padded query rows get no dQ from the atomics either
        dq = ours[1][0]
        assert torch.all(dq[~mask[:, None, :, None].expand_as(dq)] == 0)


def test_opcheck_padded_and_varlen():
    q, k, v = make_qkv(1, 2, 16, 32)
    lens = torch.tensor([11], dtype=torch.int32, device=DEVICE)
    seed = torch.tensor([5], device=DEVICE)
    torch.library.opcheck(kernel.attention_forward_op, (q, k, v, lens, 16, 3, 0.1, seed, 0.25))
    qp, kp, vp = make_qkv(16, 2, 32)
    cu_seqlens = torch.tensor([0, 5, 16], dtype=torch.int32, device=DEVICE)
    torch.library.opcheck(kernel.attention_forward_op, (qp, kp, vp, cu_seqlens, 11, -1, 0.0, None, 0.2))


def test_torch_compile_traces_through_the_op():
    """aot_eager runs the fake and autograd registrations (inductor's CPU codegen is slow to build)."""
    q, k, v = make_qkv(2, 2, 24, 32)
    grad_out = torch.randn_like(q)
    lens = torch.tensor([24, 9], device=DEVICE)
    fn = lambda q, k, v: attention(q, k, v, seq_lens=lens, window=5, dropout_p=0.1, seed=2)  # noqa: E731
    backend = "inductor" if torch.cuda.is_available() else "aot_eager"
    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    assert_parity(output_and_grads(compiled, q, k, v, grad_out), output_and_grads(fn, q, k, v, grad_out), FP32_TOL)


def test_torch_compile_fullgraph_with_a_fresh_seed():
    """seed=None inside a compiled region: the seed is a device tensor drawn by torch.randint,
    so there is no graph break (fullgraph=True), and the backward still sees the forward's mask
    (the identity trick of test_dropout_backward_uses_the_forward_mask_when_seed_is_fresh)."""
    seq_len = 64
    q = torch.zeros(1, 2, seq_len, 64, device=DEVICE)
    k = torch.randn(1, 2, seq_len, 64, device=DEVICE)
    v = torch.eye(seq_len, 64, device=DEVICE).expand(1, 2, seq_len, 64).contiguous()
    grad_out = torch.randn_like(v)
    backend = "inductor" if torch.cuda.is_available() else "aot_eager"
    compiled = torch.compile(lambda q, k, v: attention(q, k, v, dropout_p=0.3), backend=backend, fullgraph=True)
    out, (_, _, dv) = output_and_grads(compiled, q, k, v, grad_out)
    kept = out * seq_len * (1 - attention_dropout_effective_p(0.3))
    torch.testing.assert_close(kept, kept.round(), atol=1e-5, rtol=0)  # a real dropout mask
    assert 0.5 < kept.mean().item() < 0.9
    assert_close_fp32(dv, out.transpose(-1, -2) @ grad_out, name="dv")


# --------------------------------------------------------------------------- bad input
def _qkv(*shape, dtype=torch.float32):
    return [torch.randn(*shape, dtype=dtype) for _ in range(3)]


BAD_PADDED = [
    pytest.param(lambda: attention(*_qkv(2, 2, 8, 48)), "head dim", id="head-dim-48"),
    pytest.param(lambda: attention(*_qkv(2, 8, 32)), r"q must be \[B, H, S, D\]", id="3d-input"),
    pytest.param(lambda: attention(torch.randn(2, 2, 8, 32), torch.randn(2, 2, 9, 32), torch.randn(2, 2, 8, 32)),
                 "equal shapes", id="k-shape"),
    pytest.param(lambda: attention(torch.randn(1, 1, 8, 32), torch.randn(1, 1, 8, 32).double(),
                                   torch.randn(1, 1, 8, 32)), "share a dtype", id="dtype-mismatch"),
    pytest.param(lambda: attention(*_qkv(1, 1, 8, 32, dtype=torch.float64)), "dtype must be", id="float64"),
    pytest.param(lambda: attention(*_qkv(2, 1, 8, 32), seq_lens=torch.tensor([8])), "seq_lens must be a", id="lens-B"),
    pytest.param(lambda: attention(*_qkv(2, 1, 8, 32), seq_lens=torch.tensor([8.0, 2.0])), "integers",
                 id="lens-float"),
    pytest.param(lambda: attention(*_qkv(2, 1, 8, 32), seq_lens=torch.tensor([9, 2])), r"\[0, S=8\]",
                 id="lens-too-long"),
    pytest.param(lambda: attention(*_qkv(1, 1, 8, 32), window=-1), "window", id="window-negative"),
    pytest.param(lambda: attention(*_qkv(1, 1, 8, 32), dropout_p=1.0), "dropout_p", id="dropout-1"),
    pytest.param(lambda: attention(*_qkv(1, 1, 8, 32), seed=-3), "seed", id="seed-negative"),
    pytest.param(lambda: attention(*_qkv(1, 1, 8, 32), deterministic="yes"), "deterministic", id="deterministic-str"),
]

BAD_VARLEN = [
    pytest.param(lambda: attention_varlen(*_qkv(8, 2, 32), torch.tensor([0, 3, 8]), 5), "int32", id="cu-int64"),
    pytest.param(lambda: attention_varlen(*_qkv(8, 2, 32), torch.tensor([0, 5, 3, 8], dtype=torch.int32), 5),
                 "never decrease", id="cu-decreasing"),
    pytest.param(lambda: attention_varlen(*_qkv(8, 2, 32), torch.tensor([0, 3, 7], dtype=torch.int32), 5),
                 "end at T=8", id="cu-wrong-total"),
    pytest.param(lambda: attention_varlen(*_qkv(8, 2, 32), torch.tensor([1, 3, 8], dtype=torch.int32), 5),
                 "start at 0", id="cu-not-from-0"),
    pytest.param(lambda: attention_varlen(*_qkv(8, 2, 32), torch.tensor([0, 3, 8], dtype=torch.int32), 4),
                 "max_seqlen=4", id="max-seqlen-short"),
    pytest.param(lambda: attention_varlen(*_qkv(8, 2, 32), torch.tensor([[0, 8]], dtype=torch.int32), 8),
                 "cu_seqlens must be", id="cu-2d"),
    pytest.param(lambda: attention_varlen(*_qkv(8, 2, 64, 1)[:3], torch.tensor([0, 8], dtype=torch.int32), 8),
                 r"\[T, H, D\]", id="4d-input"),
]


BAD_OP = [  # the registered op validates too (it can be called directly)
    pytest.param(lambda: kernel.attention_forward_op(*_qkv(2, 1, 8, 32), torch.tensor([8, 2]), 8, -1, 0.0, None, 0.1),
                 "int32", id="op-seq-lens-int64"),
    pytest.param(lambda: kernel.attention_forward_op(*_qkv(8, 1, 32), None, 8, -1, 0.0, None, 0.1),
                 "needs cu_seqlens", id="op-packed-without-cu"),
]


@pytest.mark.parametrize("call,message", BAD_PADDED + BAD_VARLEN + BAD_OP)
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------- GPU: bf16 / fp16
def attention_lowp_reference(q, k, v, key_padding_mask=None, window=None, dropout_p=0.0, dropout_mask=None):
    """PyTorch's own low-precision attention (no upcast): the error the 2x rule measures against."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    seq_len = q.shape[2]
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    allowed = torch.ones(seq_len, seq_len, dtype=torch.bool, device=q.device)[None, None]
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]
    if window is not None:
        allowed = allowed & ops.window_mask(seq_len, window, q.device)
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
    if dropout_mask is not None:
        probs = probs * dropout_mask / (1.0 - dropout_p)
    out = torch.matmul(probs.to(v.dtype), v)
    if key_padding_mask is not None:
        out = out * key_padding_mask[:, None, :, None]
    return out


GPU_CASES = [  # the last field: the deterministic (two-kernel) backward, or the single-pass one
    pytest.param(4, 12, 512, 64, False, None, 0.0, True, id="B4-H12-S512-D64"),
    pytest.param(3, 4, 333, 128, True, None, 0.0, True, id="B3-H4-S333-D128-pad"),
    pytest.param(2, 4, 1000, 32, True, 64, 0.0, True, id="B2-H4-S1000-D32-pad-w64"),
    pytest.param(2, 4, 257, 64, True, None, 0.1, True, id="B2-H4-S257-D64-pad-p0.1"),
    pytest.param(4, 12, 512, 64, True, None, 0.1, False, id="B4-H12-S512-D64-pad-p0.1-single-pass"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("batch,heads,seq_len,head_dim,padded,window,dropout_p,deterministic", GPU_CASES)
def test_gpu_lowp_parity(batch, heads, seq_len, head_dim, padded, window, dropout_p, deterministic, dtype):
    q, k, v = make_qkv(batch, heads, seq_len, head_dim, dtype=dtype, device="cuda")
    grad_out = torch.randn_like(q)
    lens = torch.randint(1, seq_len + 1, (batch,), device="cuda") if padded else None
    if padded:
        lens[0] = 1
    mask = None if lens is None else lengths_to_mask(lens, seq_len)
    keep = attention_dropout_keep_mask(batch, heads, seq_len, dropout_p, 9, device="cuda") if dropout_p else None
    ours = output_and_grads(
        lambda q, k, v: attention(q, k, v, seq_lens=lens, window=window, dropout_p=dropout_p, seed=9,
                                  deterministic=deterministic),
        q, k, v, grad_out,
    )
    fp32 = [t.detach().float() for t in (q, k, v)]
    ref = output_and_grads(
        lambda q, k, v: ops.attention_torch(q, k, v, mask, window, attention_dropout_effective_p(dropout_p),
                                            dropout_mask=keep),
        *fp32, grad_out.float(),
    )
    lowp = output_and_grads(
        lambda q, k, v: attention_lowp_reference(q, k, v, mask, window, dropout_p, keep), q, k, v, grad_out
    )
    assert_close_lowp(ours[0], ref[0], lowp[0], name="output")
    for name, a, r, l in zip(GRAD_NAMES, ours[1], ref[1], lowp[1]):
        assert_close_lowp(a, r, l, name=name)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_varlen_lowp_parity(dtype):
    lengths, heads, head_dim = [128, 512, 1, 300, 77], 12, 64
    max_seqlen = max(lengths)
    cu_seqlens = cu_seqlens_of(lengths, device="cuda")
    q, k, v = make_qkv(sum(lengths), heads, head_dim, dtype=dtype, device="cuda")
    grad_out = torch.randn_like(q)
    ours = output_and_grads(lambda q, k, v: attention_varlen(q, k, v, cu_seqlens, max_seqlen), q, k, v, grad_out)
    fp32 = [t.detach().float() for t in (q, k, v)]
    ref = output_and_grads(lambda q, k, v: ops.attention_varlen_torch(q, k, v, cu_seqlens, max_seqlen),
                           *fp32, grad_out.float())

    lowp_fn = on_padded(attention_lowp_reference, lengths, max_seqlen)

    lowp = output_and_grads(lowp_fn, q, k, v, grad_out)
    assert_close_lowp(ours[0], ref[0], lowp[0], name="output")
    for name, a, r, l in zip(GRAD_NAMES, ours[1], ref[1], lowp[1]):
        assert_close_lowp(a, r, l, name=name)


@pytest.mark.gpu
def test_gpu_fp32_parity_and_determinism():
    q, k, v = make_qkv(2, 4, 300, 64, device="cuda")
    grad_out = torch.randn_like(q)
    lens = torch.tensor([300, 5], device="cuda")
    fn = lambda q, k, v: attention(q, k, v, seq_lens=lens, window=100)  # noqa: E731
    ours = output_and_grads(fn, q, k, v, grad_out)
    ref = output_and_grads(lambda q, k, v: ops.attention_torch(q, k, v, lengths_to_mask(lens, 300), 100),
                           q, k, v, grad_out)
    assert_parity(ours, ref, FP32_REDUCTION_TOL)
    again = output_and_grads(fn, q, k, v, grad_out)
    for a, b in zip(ours[1], again[1]):
        assert torch.equal(a, b)
    single_pass = output_and_grads(
        lambda q, k, v: attention(q, k, v, seq_lens=lens, window=100, deterministic=False), q, k, v, grad_out
    )
    assert_parity(single_pass, ref, FP32_REDUCTION_TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("seq_len", [128, 100])
@pytest.mark.parametrize("deterministic", [True, False], ids=["two-kernel", "single-pass"])
def test_gpu_inline_ptx_dropout_applies_the_keep_mask(dtype, seq_len, deterministic):
    """Compiled, the kernels apply the mask with inline PTX (``_dropout_zero``,
    ``_dropout_select``: a byte permute per fp32 score or per pair of 16-bit scores, which relies
    on the pair of one register being keys j, j + 1); the interpreter tests see only their
    ``tl.where`` twins. With q = 0 (uniform P), v = one-hot key ids and dO = one-hot query ids,
    the output reads ``Z_ij / (S (1 - p))`` at [i, j] (the forward's 16-bit or fp32 path) and dV
    reads it at [j, i] (dK/dV's fp32 path); both must be exactly ``attention_dropout_keep_mask``.
    dQ's select is checked by ``test_gpu_lowp_parity``'s dropout cases (every grad against the
    reference with this mask)."""
    heads, head_dim, dropout_p, seed = 4, 128, 0.25, 11
    q = torch.zeros(1, heads, seq_len, head_dim, device="cuda", dtype=dtype)
    k = torch.randn(1, heads, seq_len, head_dim, device="cuda", dtype=dtype)
    eye = torch.eye(seq_len, head_dim, device="cuda", dtype=dtype).expand(1, heads, seq_len, head_dim)
    v = eye.contiguous().requires_grad_(True)
    out = attention(q, k, v, dropout_p=dropout_p, seed=seed, deterministic=deterministic)
    out.backward(eye.contiguous())
    expected = attention_dropout_keep_mask(1, heads, seq_len, dropout_p, seed, device="cuda")
    scale = seq_len * (1 - dropout_p)
    kept_out = out[..., :seq_len].float() * scale
    kept_dv = v.grad[..., :seq_len].float().transpose(-1, -2) * scale
    for kept in (kept_out, kept_dv):
        torch.testing.assert_close(kept, kept.round(), atol=0.02, rtol=0)  # only 0s and 1s
        assert torch.equal(kept.round().bool(), expected)
