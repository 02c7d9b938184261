"""Packed batches with fixed shapes, so one captured CUDA graph serves every step.

A CUDA graph replays the exact kernels it captured, with the same tensor sizes and
addresses. A packed batch (:func:`~spanbert_fast.data.collate.pack_batch`) changes size
from step to step: the number of real tokens ``T``, of masked tokens ``M``, of SBO
targets ``K`` and of head rows ``R``. :func:`pad_packed_batch` pads each to a capacity that
no batch can exceed (:func:`static_capacity`, from the batch size, the block length and the
masking budget), in a way that changes nothing in the loss or the gradients:

* tokens: the ``capacity.tokens - T`` padding tokens ([PAD] ids) form extra sequences of
  at most ``max_seqlen`` tokens each, so every row belongs to a sequence and the varlen
  attention computes finite values there (an uncovered row would hold garbage, and
  ``0 * NaN`` in a weight gradient is NaN). Nothing reads those rows: they get no gradient.
  Unused sequence slots are empty (a repeated offset), so ``cu_seqlens`` has a fixed length.
* ``max_seqlen`` is the block length, not the longest sequence of the batch.
* MLM and SBO targets: padded with label ``-100`` (ignored by the loss) at the first head
  row (every index must be one of ``head_rows``).
* ``head_rows``: padded with duplicates of its last row (still sorted; a duplicate row
  computes the same values as the original).
* ``num_tokens``: a 0-dim tensor with the real token count, for throughput logging.

The cost: the padding tokens are computed like real ones. SpanBERT packs documents into
full blocks, so a batch is mostly full; :func:`padding_fractions` (``spanbert-fast info
--data DIR``) measures it on a corpus.
"""
from __future__ import annotations

import dataclasses
from typing import Dict

import numpy as np
import torch

from .masking import mask_budget

IGNORE_INDEX = -100


@dataclasses.dataclass(frozen=True)
class StaticCapacity:
    """Fixed sizes of a packed batch: every tensor is padded to these."""

    tokens: int  # T: packed token axis
    sequences: int  # cu_seqlens has sequences + 1 entries (real, padding and empty sequences)
    max_seqlen: int  # longest sequence (the block length with [CLS] and [SEP])
    mlm: int  # M: masked tokens
    sbo: int  # K: SBO targets
    head_rows: int  # R: rows the heads read


def static_capacity(batch_size: int, max_seq_len: int, mask_ratio: float = 0.15) -> StaticCapacity:
    """Capacities that hold any batch of ``batch_size`` blocks of at most ``max_seq_len``
    tokens ([CLS] and [SEP] included) masked by :class:`~spanbert_fast.data.masking.SpanMasker`.

    The masker masks exactly ``mask_budget(n)`` of a block's ``n`` tokens, and every SBO
    target is a masked token, so ``K <= M``; the head rows are at most ``M + 2K`` (targets and
    their two boundaries). Padding tokens need at most ``batch_size`` extra sequences.
    """
    if batch_size <= 0 or max_seq_len < 3:
        raise ValueError(f"static_capacity: need batch_size > 0 and max_seq_len >= 3, got {batch_size}, {max_seq_len}")
    tokens = batch_size * max_seq_len
    mlm = batch_size * mask_budget(max_seq_len - 2, mask_ratio)
    return StaticCapacity(
        tokens=tokens, sequences=2 * batch_size, max_seqlen=max_seq_len, mlm=mlm, sbo=mlm,
        head_rows=min(tokens, 3 * mlm),
    )


def _pad(t: torch.Tensor, size: int, value: int, name: str) -> torch.Tensor:
    if t.numel() > size:
        raise ValueError(
            f"pad_packed_batch: {name} has {t.numel()} entries, more than its capacity {size}; "
            "the capacity must come from static_capacity() with this batch size, block length and mask ratio"
        )
    return torch.cat([t, t.new_full((size - t.numel(),), value)])


def pad_packed_batch(packed: Dict[str, object], capacity: StaticCapacity, pad_id: int = 0) -> Dict[str, object]:
    """The packed batch with every size fixed by ``capacity`` (see the module docstring)."""
    cu_seqlens = packed["cu_seqlens"]
    real_tokens = int(cu_seqlens[-1])
    real_sequences = cu_seqlens.numel() - 1
    if packed["max_seqlen"] > capacity.max_seqlen:
        raise ValueError(f"pad_packed_batch: a sequence of {packed['max_seqlen']} tokens is longer than "
                         f"capacity.max_seqlen={capacity.max_seqlen}")
    spare = capacity.tokens - real_tokens
    if spare < 0:
        raise ValueError(f"pad_packed_batch: {real_tokens} tokens exceed capacity.tokens={capacity.tokens}")
    # Padding tokens: sequences of max_seqlen, the last one shorter; then empty sequences.
    padding_lengths = [capacity.max_seqlen] * (spare // capacity.max_seqlen)
    if spare % capacity.max_seqlen:
        padding_lengths.append(spare % capacity.max_seqlen)
    slots = capacity.sequences - real_sequences
    if len(padding_lengths) > slots:
        raise ValueError(f"pad_packed_batch: {real_sequences} sequences plus {len(padding_lengths)} of padding "
                         f"exceed capacity.sequences={capacity.sequences}")
    padding_lengths += [0] * (slots - len(padding_lengths))
    offsets = real_tokens + torch.cumsum(torch.tensor(padding_lengths, dtype=torch.int32), 0, dtype=torch.int32)
    padding_positions = torch.cat([torch.arange(n) for n in padding_lengths if n] or [torch.zeros(0)]).long()

    head_rows = packed["head_rows"]
    first_head_row, last_head_row = (int(head_rows[0]), int(head_rows[-1])) if head_rows.numel() else (0, 0)
    static = dict(packed)
    static.update(
        input_ids=_pad(packed["input_ids"], capacity.tokens, pad_id, "input_ids"),
        position_ids=torch.cat([packed["position_ids"], padding_positions]),
        cu_seqlens=torch.cat([cu_seqlens.to(torch.int32), offsets]),
        max_seqlen=capacity.max_seqlen,
        mlm_positions=_pad(packed["mlm_positions"], capacity.mlm, first_head_row, "mlm_positions"),
        mlm_labels=_pad(packed["mlm_labels"], capacity.mlm, IGNORE_INDEX, "mlm_labels"),
        sbo_left=_pad(packed["sbo_left"], capacity.sbo, first_head_row, "sbo_left"),
        sbo_right=_pad(packed["sbo_right"], capacity.sbo, first_head_row, "sbo_right"),
        sbo_rel_pos=_pad(packed["sbo_rel_pos"], capacity.sbo, 0, "sbo_rel_pos"),
        sbo_labels=_pad(packed["sbo_labels"], capacity.sbo, IGNORE_INDEX, "sbo_labels"),
        head_rows=_pad(head_rows, capacity.head_rows, last_head_row, "head_rows"),
        num_tokens=torch.tensor(real_tokens, dtype=torch.int64),
    )
    if "unpad_index" in packed:
        static["unpad_index"] = _pad(packed["unpad_index"], capacity.tokens, 0, "unpad_index")
    return static


def padding_fractions(block_lengths: np.ndarray, block_size: int, batch_size: int, samples: int = 2000,
                      seed: int = 0) -> Dict[str, float]:
    """Share of computed tokens that are padding, per batch layout, for random batches of a corpus.

    ``block_lengths``: tokens per block (without [CLS]/[SEP]). ``padded``: each batch padded to
    its longest row (the padded collator); ``packed``: none (varlen); ``fixed``: padded to
    ``batch_size * (block_size + 2)`` tokens (:func:`pad_packed_batch`, for CUDA graphs).
    Estimated over ``samples`` batches drawn without replacement within a batch.
    """
    lengths = np.asarray(block_lengths, dtype=np.int64) + 2
    if lengths.size < batch_size:
        raise ValueError(f"padding_fractions: {lengths.size} blocks, fewer than one batch of {batch_size}")
    rng = np.random.default_rng(seed)
    batches = np.stack([rng.choice(lengths, size=batch_size, replace=False) for _ in range(samples)])
    real = batches.sum(axis=1).astype(np.float64)
    padded = batches.max(axis=1) * batch_size
    fixed = batch_size * (block_size + 2)
    return {"padded": float(1.0 - (real / padded).mean()), "packed": 0.0, "fixed": float(1.0 - real.mean() / fixed)}
