"""Fused attention: ours vs PyTorch SDPA, forward and forward+backward, TFLOP/s.

FLOPs: forward ``4 * H * D * sum_b L_b^2`` -- only real tokens' pairs
count, so a padded batch is charged for its real work whatever the implementation does with
the padding; forward+backward is 3.5x the forward. Windowed cases count only the allowed
pairs (``|i - j| <= window``), so their TFLOP/s is useful work, and a kernel that skips
masked tiles shows it.

Cases (GPU, bf16):

* dense ``B32 H12 S512``, ``B32 H16 S512``, ``B8 H12 S2048`` (D = 64): ours vs SDPA with the
  flash backend; the training shape ``B32 H12 S512`` also at attention dropout 0.1 (BERT's
  ``attention_probs_dropout_prob``), SDPA with the same ``dropout_p``;
* the same shapes with right padding, lengths uniform in ``[S/4, S]``: ours with
  ``seq_lens``, ours through ``ops.attention(..., backend="triton")`` (the same kernel after its
  right-padding check), ours unpad -> varlen -> repad (what the model runs), SDPA with a boolean
  key-padding mask;
* varlen: 32 sequences, lengths uniform in [128, 512], 12 heads, dropout 0 and 0.1: ours packed
  vs SDPA on the padded batch with a key-padding mask and the same dropout;
* sliding windows 64 and 128 at ``B32 H12 S512``: ours vs SDPA with a band mask.

Every "ours" row uses the default deterministic two-kernel backward; "ours single-pass" rows
(dense and varlen) use ``deterministic=False`` (dQ by fp32 atomics), to choose the default by
measurement.

``smoke=True`` runs tiny shapes (on a machine without a GPU: on CPU through the Triton interpreter; importing this module
there sets ``TRITON_INTERPRET=1`` when Triton is not yet imported): it checks that the suite runs,
not speed. ``python -m benchmarks.bench_attention [--smoke] [--csv PATH]`` prints the rows.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

from benchmarks.common import Result, bench_ms, interpret_without_cuda, kernel_module, peak_memory_mb, suite_main

interpret_without_cuda()

SUITE = "attention"


def _kernel_module():
    return kernel_module("attention")


def attention_flops(heads: int, head_dim: int, lengths: List[int], window: Optional[int] = None) -> float:
    """Forward FLOPs of attention over real tokens (allowed pairs only when windowed)."""
    pairs = 0
    for length in lengths:
        if window is None or window >= length:
            pairs += length * length
        else:  # pairs with |i - j| <= w in a length-L sequence
            w = window
            pairs += length * (2 * w + 1) - w * (w + 1)
    return 4.0 * heads * head_dim * pairs


def _lengths_mask(lengths: List[int], seq_len: int, device) -> torch.Tensor:
    lens = torch.tensor(lengths, device=device)
    return torch.arange(seq_len, device=device)[None, :] < lens[:, None]  # [B, S] True = real


def _measure(rows: List[Result], case: str, impl: str, fwd: Callable[[], torch.Tensor],
             inputs: List[torch.Tensor], flops: float, smoke: bool, extra: str = "") -> None:
    """Time ``fwd`` alone (no autograd) and forward+backward; append two Result rows."""
    reps = 1 if smoke else 3
    with torch.no_grad():
        ms = bench_ms(fwd, smoke=smoke, reps=reps)
    rows.append(Result(SUITE, case, impl, "fwd", ms, "TFLOP/s", flops / ms / 1e9, extra))

    for t in inputs:
        t.requires_grad_(True)
    grad_out = torch.randn_like(fwd())

    def fwd_bwd():
        for t in inputs:
            t.grad = None
        fwd().backward(grad_out)

    ms = bench_ms(fwd_bwd, smoke=smoke, reps=reps)
    peak = None if smoke else peak_memory_mb(fwd_bwd)
    note = extra if peak is None else f"{extra}; peak {peak:.0f} MB".lstrip("; ")
    rows.append(Result(SUITE, case, impl, "fwd+bwd", ms, "TFLOP/s", 3.5 * flops / ms / 1e9, note))
    for t in inputs:
        t.requires_grad_(False)
        t.grad = None


def _sdpa_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """SDPA restricted to its flash backend on a GPU (the dense baseline); any backend on CPU."""
    if not q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


def _unpad_varlen(kernel, q, k, v, mask):
    """What the model runs on a padded batch: unpad once, varlen attention, repad."""
    from spanbert_fast.packing import repad, unpad

    batch, _, seq_len, _ = q.shape
    q_packed, rows, cu_seqlens, max_seqlen = unpad(q.transpose(1, 2), mask)
    k_packed, v_packed = (t.transpose(1, 2).flatten(0, 1)[rows] for t in (k, v))
    out = kernel.attention_varlen(q_packed, k_packed, v_packed, cu_seqlens, max_seqlen, validate=False)
    return repad(out, rows, batch, seq_len).transpose(1, 2)


def _dropout_tag(dropout_p: float) -> str:
    return f"-p{dropout_p:g}" if dropout_p else ""


def _random_lengths(batch: int, low: int, high: int, generator: torch.Generator) -> List[int]:
    return torch.randint(low, high + 1, (batch,), generator=generator).tolist()


def run(smoke: bool = False) -> List[Result]:
    """All attention rows: see the module docstring for cases and FLOP counting."""
    from spanbert_fast import ops

    kernel = _kernel_module()
    device = "cuda" if torch.cuda.is_available() else "cpu"  # smoke on a GPU machine: tiny shapes on the GPU
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    generator = torch.Generator().manual_seed(0)
    if smoke:
        dense_shapes = [(2, 2, 64, 32)]
        varlen_batch, varlen_heads, varlen_range = 3, 2, (5, 40)
        window_shape, windows = (1, 2, 64, 32), [8]
    else:
        dense_shapes = [(32, 12, 512, 64), (32, 16, 512, 64), (8, 12, 2048, 64)]
        varlen_batch, varlen_heads, varlen_range = 32, 12, (128, 512)
        window_shape, windows = (32, 12, 512, 64), [64, 128]

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    rows: List[Result] = []
    for index, (batch, heads, seq_len, head_dim) in enumerate(dense_shapes):
        q, k, v = randn(batch, heads, seq_len, head_dim), randn(batch, heads, seq_len, head_dim), \
            randn(batch, heads, seq_len, head_dim)
        flops = attention_flops(heads, head_dim, [seq_len] * batch)
        # the first shape is the training one: it also runs with dropout, and the single-pass backward
        for p in (0.0, 0.1) if index == 0 else (0.0,):
            case = f"B{batch}-H{heads}-S{seq_len}-D{head_dim}{_dropout_tag(p)}"
            _measure(rows, case, "ours", lambda: kernel.attention(q, k, v, dropout_p=p), [q, k, v], flops, smoke)
            if index == 0:
                _measure(rows, case, "ours single-pass",
                         lambda: kernel.attention(q, k, v, dropout_p=p, deterministic=False), [q, k, v], flops, smoke)
            _measure(rows, case, "sdpa flash", lambda: _sdpa_flash(q, k, v, p), [q, k, v], flops, smoke)
        case = f"B{batch}-H{heads}-S{seq_len}-D{head_dim}"

        # Right padding, lengths uniform in [S/4, S].
        lengths = _random_lengths(batch, seq_len // 4, seq_len, generator)
        seq_lens = torch.tensor(lengths, device=device)
        mask = _lengths_mask(lengths, seq_len, device)
        sdpa_mask = mask[:, None, None, :]
        case_pad = f"{case}-pad"
        flops = attention_flops(heads, head_dim, lengths)
        extra = f"lengths U[{seq_len // 4}, {seq_len}], flops of real tokens"
        _measure(rows, case_pad, "ours seq_lens", lambda: kernel.attention(q, k, v, seq_lens=seq_lens),
                 [q, k, v], flops, smoke, extra)
        _measure(rows, case_pad, "ours ops.attention",  # the seq_lens mode after its right-padding check
                 lambda: ops.attention(q, k, v, mask, backend="triton"), [q, k, v], flops, smoke, extra)
        _measure(rows, case_pad, "ours unpad+varlen", lambda: _unpad_varlen(kernel, q, k, v, mask),
                 [q, k, v], flops, smoke, extra)
        _measure(rows, case_pad, "sdpa mask",
                 lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask), [q, k, v], flops, smoke,
                 extra)

    # Packed varlen vs SDPA on the padded batch.
    head_dim = 64 if not smoke else 32
    lengths = _random_lengths(varlen_batch, *varlen_range, generator)
    max_seqlen = max(lengths)
    cu_seqlens = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(device=device, dtype=torch.int32)
    total = sum(lengths)
    qp, kp, vp = randn(total, varlen_heads, head_dim), randn(total, varlen_heads, head_dim), \
        randn(total, varlen_heads, head_dim)
    mask = _lengths_mask(lengths, max_seqlen, device)
    q, k, v = (randn(varlen_batch, varlen_heads, max_seqlen, head_dim) for _ in range(3))
    flops = attention_flops(varlen_heads, head_dim, lengths)
    extra = f"T={total}, max_seqlen={max_seqlen}, flops of real tokens"
    sdpa_mask = mask[:, None, None, :]
    for p in (0.0, 0.1):
        case = (f"varlen-B{varlen_batch}-H{varlen_heads}-L{varlen_range[0]}..{varlen_range[1]}-D{head_dim}"
                f"{_dropout_tag(p)}")
        _measure(rows, case, "ours varlen",
                 lambda: kernel.attention_varlen(qp, kp, vp, cu_seqlens, max_seqlen, dropout_p=p),
                 [qp, kp, vp], flops, smoke, extra)
        _measure(rows, case, "ours varlen single-pass",
                 lambda: kernel.attention_varlen(qp, kp, vp, cu_seqlens, max_seqlen, dropout_p=p, deterministic=False),
                 [qp, kp, vp], flops, smoke, extra)
        _measure(rows, case, "sdpa mask (padded)",
                 lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask, dropout_p=p), [q, k, v], flops,
                 smoke, extra)

    # Sliding windows vs SDPA with a band mask.
    batch, heads, seq_len, head_dim = window_shape
    q, k, v = (randn(batch, heads, seq_len, head_dim) for _ in range(3))
    for window in windows:
        case = f"B{batch}-H{heads}-S{seq_len}-D{head_dim}-w{window}"
        band = ops.window_mask(seq_len, window, device)
        flops = attention_flops(heads, head_dim, [seq_len] * batch, window)
        extra = "flops of allowed pairs |i-j| <= w"
        _measure(rows, case, "ours", lambda: kernel.attention(q, k, v, window=window), [q, k, v], flops, smoke,
                 extra)
        _measure(rows, case, "sdpa band mask", lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=band),
                 [q, k, v], flops, smoke, extra)
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    suite_main(run, __doc__.splitlines()[0], argv)

if __name__ == "__main__":
    main()
