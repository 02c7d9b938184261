"""The hot-path ops of SpanBERT, each behind one ``backend`` switch.

The model calls these functions and nothing else for its three (four) hot ops:

===========================  ==========================================  ====================
op                           math                                        used by
===========================  ==========================================  ====================
``attention``                softmax(q k^T * scale + mask) v, padded     every encoder layer
``attention_varlen``         the same on packed ``[T, H, D]`` + offsets   unpadded batches
``bias_gelu``                GeLU_erf(x + bias)                          every FFN (``Intermediate``)
``bias_gelu_layernorm``      LayerNorm(GeLU_erf(x + bias))               MLM transform, SBO MLP
``bias_dropout_add_layernorm`` LayerNorm(dropout(x + bias) + residual)   every encoder layer
``masked_lm_loss``           mean CE of (h W^T + b) at selected rows     MLM and SBO heads
===========================  ==========================================  ====================

``backend``: ``"torch"`` runs the pure-PyTorch reference defined in this file;
``"triton"`` runs the kernel from :mod:`spanbert_fast.kernels` (on CUDA tensors, or
on CPU tensors under the Triton interpreter, ``TRITON_INTERPRET=1``); ``"auto"``
picks Triton for CUDA tensors when it is installed and the reference otherwise
(:mod:`spanbert_fast.backend` decides).
Each op imports its kernel module with a plain ``import`` statement when it first runs on
Triton, so Triton stays optional, and ``torch.compile`` traces the model as one graph (an
``importlib`` call would be a graph break; ``tests/test_model_compile.py`` checks).

The references are the ground truth of every parity test: written for clarity,
they compute in fp32 whatever the input dtype and return the input dtype.

Dropout is seeded: the same ``seed`` gives the same mask, so a backward pass (or a
test) can recompute it. ``seed=None`` (what the model passes) means a fresh mask from
torch's generator, so ``torch.manual_seed`` makes a run reproducible; the Triton path
draws its seed as a device tensor (no host sync, no ``torch.compile`` graph break, a new
mask on every CUDA-graph replay). The reference draws its mask from ``torch.Generator``
seeded with ``seed``; the Triton kernels hash (seed, position) (the attention kernel:
``kernels.attention``'s docstring; it drops ``p`` rounded to a multiple of 1/128,
``attention_dropout_effective_p``). The masks differ from each other, so parity tests
with dropout pass the kernel's mask (and the attention's effective p) to the reference
through ``dropout_mask``.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from spanbert_fast.backend import (  # noqa: F401  (the switch, also reachable as ops.<name>)
    BACKENDS,
    SUPPORTED_HEAD_DIMS,
    check_backend,
    host_sync_allowed,
    resolve_attention_backend,
    resolve_backend,
    triton_available,
    triton_interpreter_on,
)
from spanbert_fast.packing import repad, right_padding_lengths, unpad

# A dropout seed: None (fresh, from torch's generator on the tensors' device), an int, or
# a one-element int64 tensor (what the Triton kernels read; no host sync, CUDA-graph safe).
Seed = Union[int, torch.Tensor, None]


def _reference_keep_mask(shape, p: float, seed: Seed, device) -> torch.Tensor:
    """Reference dropout keep-mask: ``True`` where kept.

    ``seed=None`` draws from torch's generator on ``device`` (no host sync, traceable by
    ``torch.compile``); an int or a one-element tensor gives a mask reproducible from it
    (a tensor seed is read on the host: this is the reference, not the hot path).
    """
    if seed is None:
        return torch.rand(shape, device=device) >= p
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return (torch.rand(shape, generator=generator) >= p).to(device)


# --------------------------------------------------------------------------- attention
def _check_attention_inputs(q, k, v, packed: bool):
    want = 3 if packed else 4
    layout = "[T, H, D]" if packed else "[B, H, S, D]"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != want:
            raise ValueError(f"attention: {name} must be {layout}, got shape {tuple(t.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"attention: q, k, v must have equal shapes, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")


def window_mask(seq_len: int, window: Optional[int], device) -> Optional[torch.Tensor]:
    """``[S, S]`` bool, True where query i may see key j: ``|i - j| <= window``."""
    if window is None:
        return None
    idx = torch.arange(seq_len, device=device)
    return (idx[:, None] - idx[None, :]).abs() <= window


def attention_torch(
    q: torch.Tensor,  # [B, H, S, D]
    k: torch.Tensor,  # [B, H, S, D]
    v: torch.Tensor,  # [B, H, S, D]
    key_padding_mask: Optional[torch.Tensor] = None,  # [B, S] bool, True = real token
    window: Optional[int] = None,
    dropout_p: float = 0.0,
    seed: Seed = None,
    softmax_scale: Optional[float] = None,
    dropout_mask: Optional[torch.Tensor] = None,  # [B, H, S, S] bool keep-mask, overrides seed
) -> torch.Tensor:
    """Reference attention. Padded query rows (``key_padding_mask`` False) return zeros."""
    _check_attention_inputs(q, k, v, packed=False)
    batch, _, seq_len, head_dim = q.shape
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
    allowed = torch.ones(batch, 1, seq_len, seq_len, dtype=torch.bool, device=q.device)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask.bool()[:, None, None, :]
    local = window_mask(seq_len, window, q.device)
    if local is not None:
        allowed = allowed & local
    if dropout_p == 0.0 and dropout_mask is None:
        # SDPA needs a query row with at least one allowed key; give padded rows their
        # own key (the diagonal) and zero them below.
        safe = allowed | torch.eye(seq_len, dtype=torch.bool, device=q.device)
        out = F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), attn_mask=safe, scale=scale
        )
    else:
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        if dropout_mask is None and dropout_p > 0.0:
            dropout_mask = _reference_keep_mask(probs.shape, dropout_p, seed, q.device)
        if dropout_mask is not None:
            probs = probs * dropout_mask / (1.0 - dropout_p)
        out = torch.matmul(probs, v.float())
    if key_padding_mask is not None:
        out = out * key_padding_mask.bool()[:, None, :, None]
    return out.to(q.dtype)


def attention_varlen_torch(
    q: torch.Tensor,  # [T, H, D]
    k: torch.Tensor,  # [T, H, D]
    v: torch.Tensor,  # [T, H, D]
    cu_seqlens: torch.Tensor,  # [B + 1] int32, offsets of each sequence in T
    max_seqlen: int,
    window: Optional[int] = None,
    dropout_p: float = 0.0,
    seed: Seed = None,
    softmax_scale: Optional[float] = None,
) -> torch.Tensor:
    """Reference varlen attention: repad, run :func:`attention_torch`, unpad."""
    _check_attention_inputs(q, k, v, packed=True)
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    batch = lengths.numel()
    positions = torch.arange(max_seqlen, device=q.device)
    mask = positions[None, :] < lengths[:, None]  # [B, S]
    rows = torch.nonzero(mask.flatten()).squeeze(1)

    def repad(t):  # [T, H, D] -> [B, H, S, D]
        out = t.new_zeros(batch * max_seqlen, *t.shape[1:])
        out[rows] = t
        return out.view(batch, max_seqlen, *t.shape[1:]).transpose(1, 2)

    out = attention_torch(
        repad(q), repad(k), repad(v), mask, window=window, dropout_p=dropout_p,
        seed=seed, softmax_scale=softmax_scale,
    )
    return out.transpose(1, 2).reshape(batch * max_seqlen, *q.shape[1:])[rows]


def attention(
    q: torch.Tensor,  # [B, H, S, D]
    k: torch.Tensor,  # [B, H, S, D]
    v: torch.Tensor,  # [B, H, S, D]
    key_padding_mask: Optional[torch.Tensor] = None,  # [B, S] bool/int, True/1 = real token
    *,
    window: Optional[int] = None,
    dropout_p: float = 0.0,
    seed: Seed = None,
    softmax_scale: Optional[float] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Bidirectional multi-head attention on padded ``[B, H, S, D]`` tensors.

    Padded keys get no weight; padded query rows return zeros. ``window``: each query
    sees keys within ``±window`` positions. ``dropout_p`` drops attention probabilities
    with a mask reproducible from ``seed`` (fresh from torch's generator when ``None``).
    Returns ``[B, H, S, D]`` in the input dtype.

    On Triton a right-padded mask runs the kernel's ``seq_lens`` mode on the padded tensors;
    any other mask (left padding, holes) is unpadded to the varlen kernel and repadded.
    """
    if resolve_attention_backend(backend, q, q.shape[-1]) == "torch":
        return attention_torch(q, k, v, key_padding_mask, window, dropout_p, seed, softmax_scale)
    _check_attention_inputs(q, k, v, packed=False)
    from spanbert_fast.kernels import attention as kernel
    if key_padding_mask is None:
        return kernel.attention(q, k, v, window=window, dropout_p=dropout_p, seed=seed, softmax_scale=softmax_scale)
    seq_lens = right_padding_lengths(key_padding_mask)
    if seq_lens is not None:  # the kernel reads the padded tensors as they are: no unpad, no repad
        return kernel.attention(q, k, v, seq_lens=seq_lens, window=window, dropout_p=dropout_p, seed=seed,
                                softmax_scale=softmax_scale)
    batch, _, seq_len, _ = q.shape
    q_packed, rows, cu_seqlens, max_seqlen = unpad(q.transpose(1, 2), key_padding_mask)
    k_packed = k.transpose(1, 2).flatten(0, 1)[rows]
    v_packed = v.transpose(1, 2).flatten(0, 1)[rows]
    out = kernel.attention_varlen(
        q_packed, k_packed, v_packed, cu_seqlens, max_seqlen, window=window, dropout_p=dropout_p,
        seed=seed, softmax_scale=softmax_scale, validate=False,
    )
    return repad(out, rows, batch, seq_len).transpose(1, 2)


def attention_varlen(
    q: torch.Tensor,  # [T, H, D]
    k: torch.Tensor,  # [T, H, D]
    v: torch.Tensor,  # [T, H, D]
    cu_seqlens: torch.Tensor,  # [B + 1] int32
    max_seqlen: int,
    *,
    window: Optional[int] = None,
    dropout_p: float = 0.0,
    seed: Seed = None,
    softmax_scale: Optional[float] = None,
    validate: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention on packed sequences: sequence ``b`` is rows ``cu_seqlens[b]:cu_seqlens[b+1]``.

    ``validate=False`` skips the Triton path's value checks of ``cu_seqlens`` (a host sync);
    for offsets built by :func:`unpad`.
    """
    if resolve_attention_backend(backend, q, q.shape[-1]) == "torch":
        return attention_varlen_torch(q, k, v, cu_seqlens, max_seqlen, window, dropout_p, seed, softmax_scale)
    from spanbert_fast.kernels import attention as kernel

    return kernel.attention_varlen(
        q, k, v, cu_seqlens, max_seqlen, window=window, dropout_p=dropout_p, seed=seed,
        softmax_scale=softmax_scale, validate=validate,
    )


# --------------------------------------------------------------------------- feed-forward activation
def bias_gelu_torch(
    x: torch.Tensor,  # [..., F]
    bias: torch.Tensor,  # [F]
) -> torch.Tensor:
    """Reference: ``GeLU_erf(x + bias)``, fp32 math."""
    return F.gelu(x.float() + bias.float(), approximate="none").to(x.dtype)


def bias_gelu(
    x: torch.Tensor,  # [..., F]
    bias: torch.Tensor,  # [F]
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """``GeLU_erf(x + bias)``: the FFN expansion's epilogue (the kernel saves only x for backward)."""
    if resolve_backend(backend, x) == "torch":
        return bias_gelu_torch(x, bias)
    from spanbert_fast.kernels import bias_gelu as kernel

    return kernel.bias_gelu(x, bias)


# --------------------------------------------------------------------------- normalisation
def bias_gelu_layernorm_torch(
    x: torch.Tensor,  # [N, d]
    bias: Optional[torch.Tensor],  # [d] or None
    weight: torch.Tensor,  # [d] LayerNorm gamma
    ln_bias: torch.Tensor,  # [d] LayerNorm beta
    eps: float = 1e-12,
) -> torch.Tensor:
    """Reference: ``LayerNorm(GeLU_erf(x + bias))`` row-wise, fp32 math."""
    h = x.float() if bias is None else x.float() + bias.float()
    h = F.gelu(h, approximate="none")
    y = F.layer_norm(h, (h.shape[-1],), weight.float(), ln_bias.float(), eps)
    return y.to(x.dtype)


def bias_gelu_layernorm(
    x: torch.Tensor,  # [..., d]
    bias: Optional[torch.Tensor],  # [d] or None
    weight: torch.Tensor,  # [d]
    ln_bias: torch.Tensor,  # [d]
    eps: float = 1e-12,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """``LayerNorm(GeLU(x + bias))`` over the last dim (the MLM transform and SBO MLP)."""
    if resolve_backend(backend, x) == "torch":
        return bias_gelu_layernorm_torch(x, bias, weight, ln_bias, eps)
    from spanbert_fast.kernels import gelu_layernorm

    return gelu_layernorm.bias_gelu_layernorm(x, bias, weight, ln_bias, eps)


def bias_dropout_add_layernorm_torch(
    x: torch.Tensor,  # [N, d] sublayer output before its bias
    bias: Optional[torch.Tensor],  # [d] or None
    residual: torch.Tensor,  # [N, d]
    weight: torch.Tensor,  # [d]
    ln_bias: torch.Tensor,  # [d]
    p: float = 0.0,
    seed: Seed = None,
    eps: float = 1e-12,
    dropout_mask: Optional[torch.Tensor] = None,  # [N, d] bool keep-mask, overrides seed
) -> torch.Tensor:
    """Reference post-LN residual block: ``LayerNorm(dropout(x + bias) + residual)``."""
    h = x.float() if bias is None else x.float() + bias.float()
    if dropout_mask is None and p > 0.0:
        dropout_mask = _reference_keep_mask(h.shape, p, seed, h.device)
    if dropout_mask is not None:
        h = h * dropout_mask / (1.0 - p)
    h = h + residual.float()
    y = F.layer_norm(h, (h.shape[-1],), weight.float(), ln_bias.float(), eps)
    return y.to(x.dtype)


def bias_dropout_add_layernorm(
    x: torch.Tensor,  # [..., d]
    bias: Optional[torch.Tensor],  # [d] or None
    residual: torch.Tensor,  # [..., d]
    weight: torch.Tensor,  # [d]
    ln_bias: torch.Tensor,  # [d]
    p: float = 0.0,
    seed: Seed = None,
    eps: float = 1e-12,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """``LayerNorm(dropout(x + bias) + residual)``: the end of every post-LN sublayer."""
    if resolve_backend(backend, x) == "torch":
        return bias_dropout_add_layernorm_torch(x, bias, residual, weight, ln_bias, p, seed, eps)
    from spanbert_fast.kernels import dropout_add_layernorm

    return dropout_add_layernorm.bias_dropout_add_layernorm(
        x, bias, residual, weight, ln_bias, p, seed, eps
    )


# --------------------------------------------------------------------------- masked-position loss
def _check_loss_inputs(hidden, targets, weight, bias, positions):
    if hidden.dim() != 2:
        raise ValueError(f"masked_lm_loss: hidden must be [N, d], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"masked_lm_loss: weight must be [V, d={hidden.shape[1]}], got shape {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"masked_lm_loss: bias must be [V={weight.shape[0]}], got shape {tuple(bias.shape)}")
    rows = hidden.shape[0] if positions is None else positions.numel()
    if targets.dim() != 1 or targets.numel() != rows:
        raise ValueError(
            f"masked_lm_loss: targets must be [M={rows}] (one per selected row), got shape {tuple(targets.shape)}"
        )


def masked_lm_loss_torch(
    hidden: torch.Tensor,  # [N, d]
    targets: torch.Tensor,  # [M] int64, ignore_index rows skipped
    weight: torch.Tensor,  # [V, d] decoder (tied word embeddings)
    bias: Optional[torch.Tensor],  # [V]
    positions: Optional[torch.Tensor] = None,  # [M] int64 rows of hidden; None = all rows
    ignore_index: int = -100,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference: gather, full logits for the M rows, mean cross-entropy.

    Returns ``(loss, n_correct)``: fp32 scalar mean over valid targets (0 when there
    are none, with zero gradients) and an int64 count of rows whose argmax is the target.
    """
    _check_loss_inputs(hidden, targets, weight, bias, positions)
    rows = hidden if positions is None else hidden[positions]
    logits = F.linear(rows.float(), weight.float(), None if bias is None else bias.float())
    valid = targets != ignore_index
    loss_sum = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    loss = loss_sum / valid.sum().clamp(min=1)
    n_correct = ((logits.argmax(dim=-1) == targets) & valid).sum()
    return loss, n_correct


def masked_lm_loss(
    hidden: torch.Tensor,  # [N, d]
    targets: torch.Tensor,  # [M]
    weight: torch.Tensor,  # [V, d]
    bias: Optional[torch.Tensor],  # [V]
    positions: Optional[torch.Tensor] = None,  # [M]
    ignore_index: int = -100,
    *,
    validate: bool = True,
    backend: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of ``hidden[positions] @ weight.T + bias`` against ``targets``.

    The Triton kernel never materialises the ``[M, V]`` logits. Returns
    ``(loss, n_correct)`` as :func:`masked_lm_loss_torch` does. ``validate=False`` skips the
    Triton path's range checks of ``positions``/``targets`` (they cost a device sync).
    """
    if resolve_backend(backend, hidden) == "torch":
        return masked_lm_loss_torch(hidden, targets, weight, bias, positions, ignore_index)
    from spanbert_fast.kernels import masked_lm_loss as kernel

    return kernel.masked_lm_loss(
        hidden, targets, weight, bias, positions, ignore_index, validate=validate
    )
