"""Useful FLOPs of a SpanBERT / BERT training step and MFU: the formulas, in one place.

A training step (forward + backward) costs 3x the forward FLOPs, and
a forward matmul of an ``[n, k]`` by a ``[k, m]`` matrix costs ``2 n k m``; so per token:

* encoder linears:      ``6 * N_nonembedding``  (each parameter is one multiply-add per token);
* attention matmuls:    ``12 * L * S * d``      (``q k^T`` and ``p v``, ``2 S d`` each, per layer);
* MLM decoder:          ``6 * d * V`` per *masked* position (heads count at predicted rows only);
* SBO head (ours only): ``6 * ((2d + P) d + d^2 + d V)`` per SBO target (``W_1`` on
  ``[h_left; h_right; p_i]``, ``W_2``, the tied decoder), as the reference head computes it.

``N_nonembedding`` counts the encoder layers' parameters (weights, biases, LayerNorms); the
embedding tables and the heads are left out (the heads are charged at the rows they predict).
The MLM transform (``d x d`` at the masked rows, ~0.1 % of the step) is left out, so figures
compare with the reference HF rows (one H100, 2026-11-22: base 56.6 ms/step = 169.8 TFLOP/s; see
tests/test_bench_flops.py). With padding, only real tokens count: a
batch of lengths ``L_b`` costs ``6 N sum(L_b) + 12 L d sum(L_b^2)``, whatever the implementation
does with the padding. Every function here is pure arithmetic on Python numbers.
"""
from __future__ import annotations

from typing import Iterable


def encoder_parameters(hidden: int, layers: int, intermediate: int) -> int:
    """``N_nonembedding``: parameters of ``layers`` post-LN BERT layers of width ``hidden``.

    Per layer: q, k, v, o (``4 (d^2 + d)``), the feed-forward pair (``2 d f + f + d``) and two
    LayerNorms (``4 d``).
    """
    d, f = hidden, intermediate
    per_layer = 4 * (d * d + d) + (2 * d * f + f + d) + 4 * d
    return layers * per_layer


def encoder_flops(lengths: Iterable[int], hidden: int, layers: int, intermediate: int) -> float:
    """Training FLOPs of the encoder on sequences of the given real lengths."""
    lengths = list(lengths)
    n_params = encoder_parameters(hidden, layers, intermediate)
    tokens = sum(lengths)
    pairs = sum(length * length for length in lengths)
    return 6.0 * n_params * tokens + 12.0 * layers * hidden * pairs


def mlm_head_flops(n_masked: int, hidden: int, vocab: int) -> float:
    """Training FLOPs of the tied MLM decoder at ``n_masked`` predicted rows."""
    return 6.0 * n_masked * hidden * vocab


def sbo_head_flops(n_targets: int, hidden: int, vocab: int, position_size: int) -> float:
    """Training FLOPs of the SBO head at ``n_targets`` span tokens: W_1, W_2, tied decoder."""
    d = hidden
    per_target = (2 * d + position_size) * d + d * d + d * vocab
    return 6.0 * n_targets * per_target


def train_step_flops(lengths: Iterable[int], hidden: int, layers: int, intermediate: int, vocab: int,
                     n_masked: int, n_sbo_targets: int = 0, sbo_position_size: int = 200) -> float:
    """Useful FLOPs of one training step: encoder + MLM decoder (+ SBO head when targets > 0)."""
    flops = encoder_flops(lengths, hidden, layers, intermediate) + mlm_head_flops(n_masked, hidden, vocab)
    if n_sbo_targets:
        flops += sbo_head_flops(n_sbo_targets, hidden, vocab, sbo_position_size)
    return flops


def matmul_flops(m: int, n: int, k: int) -> float:
    """FLOPs of an ``[m, k] @ [k, n]`` matmul."""
    return 2.0 * m * n * k


def tflops(flops: float, ms: float) -> float:
    """TFLOP/s of ``flops`` done in ``ms`` milliseconds."""
    return flops / ms / 1e9


def mfu_percent(achieved_tflops: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation, in percent of a measured peak (the bf16 matmul of the same run)."""
    if peak_tflops <= 0:
        raise ValueError(f"peak_tflops must be positive, got {peak_tflops}")
    return 100.0 * achieved_tflops / peak_tflops
