"""Masked blocks → the batch dict the model consumes, padded or packed (unpadded).

Padded batch (what :meth:`spanbert_fast.model.SpanBertForPreTraining.forward` takes; ``B`` rows
padded to the batch's longest block ``L``):

==================  ==========  =================================================================
key                 shape       meaning
==================  ==========  =================================================================
``input_ids``       [B, L]      ``[CLS] block [SEP]`` after masking replacements, ``[PAD]``-padded
``attention_mask``  [B, L]      1 for real tokens, 0 for padding (optional: None = no padding)
``token_type_ids``  [B, L]      optional, all zeros for SpanBERT
``mlm_positions``   [M]         flat indices ``row * L + col`` of the masked tokens
``mlm_labels``      [M]         original token ids at those positions
``sbo_left``        [K]         flat index of each SBO target's left boundary token ``s - 1``
``sbo_right``       [K]         flat index of its right boundary token ``e + 1``
``sbo_rel_pos``     [K]         the target's 0-based position inside its span, < ``sbo_max_targets``
``sbo_labels``      [K]         original token id of the target
``head_rows``       [R]         optional: sorted union of ``mlm_positions``, ``sbo_left`` and
                                ``sbo_right`` (the rows the heads read)
==================  ==========  =================================================================

All index tensors are int64. Flat indices address ``hidden.flatten(0, 1)``.

``head_rows`` must be sorted ascending and hold every head index (duplicates are allowed, so a
fixed-capacity buffer padded by repeating its last row keeps shapes static). The collator and
``pack_batch`` compute it on the CPU; without it the model takes ``torch.unique`` of the union
itself, which costs one host sync on CUDA.

``L`` is the longest block of the batch plus 2 (optionally rounded up to ``pad_to_multiple_of``).
The model gathers ``hidden.flatten(0, 1)[mlm_positions]`` and likewise for the SBO boundaries;
``head_rows`` (every row some head reads) lets its last layer skip the other rows past attention
without a host sync (``torch.unique`` on the GPU would need one, here it is CPU work).

:func:`pack_batch` turns a padded batch into the varlen layout of :mod:`spanbert_fast.packing`
(``cu_seqlens`` int32 [B+1], ``max_seqlen``), remapping every flat index into the packed token axis.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch

from spanbert_fast.packing import unpad

from .masking import MaskedBlock
from .tokenizer import SpecialIds

BATCH_KEYS = (
    "input_ids", "attention_mask", "mlm_positions", "mlm_labels",
    "sbo_left", "sbo_right", "sbo_rel_pos", "sbo_labels", "head_rows",
)
PER_BLOCK_KEYS = BATCH_KEYS[2:-1]  # concatenated block after block; head_rows is derived from them


def collate_masked_blocks(
    blocks: Sequence[MaskedBlock], special_ids: SpecialIds, *, pad_to_multiple_of: Optional[int] = None
) -> Dict[str, torch.Tensor]:
    """Build the padded batch (format in the module docstring) from masked blocks."""
    if not blocks:
        raise ValueError("cannot collate an empty list of blocks")
    lengths = np.array([block.input_ids.size for block in blocks], dtype=np.int64)
    width = int(lengths.max()) + 2
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = np.full((len(blocks), width), special_ids.pad, dtype=np.int64)
    attention_mask = np.zeros((len(blocks), width), dtype=np.int64)
    fields = {key: [] for key in PER_BLOCK_KEYS}
    for row, block in enumerate(blocks):
        n = block.input_ids.size
        input_ids[row, 0] = special_ids.cls
        input_ids[row, 1 : n + 1] = block.input_ids
        input_ids[row, n + 1] = special_ids.sep
        attention_mask[row, : n + 2] = 1
        offset = row * width + 1  # +1 for [CLS]
        fields["mlm_positions"].append(block.masked_positions + offset)
        fields["mlm_labels"].append(block.mlm_labels)
        fields["sbo_left"].append(block.sbo_left + offset)
        fields["sbo_right"].append(block.sbo_right + offset)
        fields["sbo_rel_pos"].append(block.sbo_rel_pos)
        fields["sbo_labels"].append(block.sbo_labels)
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask)}
    for key, parts in fields.items():
        batch[key] = torch.from_numpy(np.concatenate(parts).astype(np.int64, copy=False))
    batch["head_rows"] = head_rows(batch["mlm_positions"], batch["sbo_left"], batch["sbo_right"])
    return batch


def head_rows(mlm_positions: torch.Tensor, sbo_left: torch.Tensor, sbo_right: torch.Tensor) -> torch.Tensor:
    """The rows the pre-training heads read: sorted unique union of the three index tensors."""
    return torch.unique(torch.cat([mlm_positions, sbo_left, sbo_right]), sorted=True)


def pack_batch(batch: Dict[str, torch.Tensor]) -> Dict[str, object]:
    """Unpadded (varlen) form of a padded batch.

    Returns a new dict with ``input_ids`` [T] (real tokens only, row after row),
    ``position_ids`` [T] (0.. within each sequence), ``cu_seqlens`` int32 [B+1],
    ``max_seqlen`` (a Python int), ``unpad_index`` [T] (flat index of each packed token in the
    padded B·L grid: ``hidden_padded.flatten(0, 1)[unpad_index]`` packs a padded tensor), and
    ``mlm_positions`` / ``sbo_left`` / ``sbo_right`` remapped to indices into the packed axis,
    and their ``head_rows`` (computed when the padded batch has none); labels and ``sbo_rel_pos``
    are unchanged. Padding must be on the right.
    """
    attention_mask = batch["attention_mask"]
    rows, width = attention_mask.shape
    input_ids, unpad_index, cu_seqlens, max_seqlen = unpad(batch["input_ids"], attention_mask)
    starts = cu_seqlens[:-1].long()
    expected = torch.arange(width).expand(rows, width) < (cu_seqlens[1:] - cu_seqlens[:-1]).long()[:, None]
    if not torch.equal(expected, attention_mask.bool()):
        raise ValueError("pack_batch needs right padding (attention_mask = 1…1 0…0 per row)")
    grid_to_packed = torch.full((rows * width,), -1, dtype=torch.int64)
    grid_to_packed[unpad_index] = torch.arange(unpad_index.numel())
    row_of_token = torch.repeat_interleave(torch.arange(rows), (cu_seqlens[1:] - cu_seqlens[:-1]).long())
    packed = {
        "input_ids": input_ids,
        "position_ids": torch.arange(unpad_index.numel()) - starts[row_of_token],
        "cu_seqlens": cu_seqlens,
        "max_seqlen": max_seqlen,
        "unpad_index": unpad_index,
    }
    for key in ("mlm_positions", "sbo_left", "sbo_right"):
        packed[key] = grid_to_packed[batch[key]]
    for key in ("mlm_labels", "sbo_rel_pos", "sbo_labels"):
        packed[key] = batch[key]
    # grid_to_packed grows along the real tokens, so it keeps head_rows sorted and unique.
    packed["head_rows"] = (grid_to_packed[batch["head_rows"]] if "head_rows" in batch
                           else head_rows(packed["mlm_positions"], packed["sbo_left"], packed["sbo_right"]))
    return packed


def real_tokens(batch: Dict[str, object]):
    """How many real (not padding) tokens a batch holds, for throughput: ``num_tokens`` of a
    fixed-shape packed batch, else the ones of ``attention_mask``, else every input id (packed).
    A 0-dim tensor on the batch's device (no host sync) or an int."""
    if "num_tokens" in batch:  # fixed-shape packed batches count their real tokens
        return batch["num_tokens"]
    mask = batch.get("attention_mask")
    if mask is not None:
        return mask.sum()
    return batch["input_ids"].numel()
