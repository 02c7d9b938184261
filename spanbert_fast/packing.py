"""Packing: padded ``[B, L, ...]`` batches <-> the varlen layout ``[T, ...]`` of their real tokens.

The one home of the layout that the varlen attention kernel and the packed batches share:

    rows        [T]      flat indices of the real tokens in the padded ``[B * L]`` grid, row-major
    cu_seqlens  [B + 1]  int32 offsets: sequence ``b`` is tokens ``cu_seqlens[b]:cu_seqlens[b + 1]``
    max_seqlen  int      the longest sequence (a Python int)

:func:`unpad` and :func:`repad` convert tensors (the model unpads once per forward when the
Triton kernels run on a padded batch; :func:`spanbert_fast.ops.attention` does for one call
whose mask is not right-padded, :func:`right_padding_lengths` tells);
:class:`VarlenLayout` carries the layout through the encoder;
:func:`spanbert_fast.data.collate.pack_batch` packs a whole collated batch on the CPU.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn.functional as F

from spanbert_fast.kernels._host_sync import may_sync  # torch only


def unpad(hidden: torch.Tensor, key_padding_mask: torch.Tensor):
    """``[B, S, ...]`` -> ``([T, ...], rows [T], cu_seqlens [B+1] int32, max_seqlen)``.

    Works for any mask pattern (left, right or inner padding): the real tokens of
    each row are kept in order. ``max_seqlen`` is a Python int (one host sync).
    """
    mask = key_padding_mask.bool()
    lengths = mask.sum(dim=1, dtype=torch.int32)
    rows = torch.nonzero(mask.flatten()).squeeze(1)
    cu_seqlens = F.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
    max_seqlen = int(lengths.max().item()) if lengths.numel() else 0
    return hidden.flatten(0, 1)[rows], rows, cu_seqlens, max_seqlen


def repad(packed: torch.Tensor, rows: torch.Tensor, batch: int, seq_len: int) -> torch.Tensor:
    """Inverse of :func:`unpad`: ``[T, ...]`` -> ``[B, S, ...]`` with zeros at padding."""
    out = packed.new_zeros(batch * seq_len, *packed.shape[1:])
    out = out.index_copy(0, rows, packed)
    return out.view(batch, seq_len, *packed.shape[1:])


@dataclasses.dataclass
class VarlenLayout:
    """Where the real tokens of a batch are in ``[T, d]``: a padded batch the model unpadded
    (``rows`` and the padded shape), or a batch packed already (``rows`` None)."""

    cu_seqlens: torch.Tensor  # [B + 1] int32
    max_seqlen: int
    rows: Optional[torch.Tensor] = None  # [T] flat indices into the padded [B * L] grid; None: input was packed
    batch: int = 0
    seq_len: int = 0

    @classmethod
    def of_padded(cls, hidden: torch.Tensor, key_padding_mask: torch.Tensor):
        """``(hidden [T, ...], layout)`` of a padded ``hidden [B, L, ...]`` (one host sync)."""
        packed, rows, cu_seqlens, max_seqlen = unpad(hidden, key_padding_mask)
        return packed, cls(cu_seqlens, max_seqlen, rows, *key_padding_mask.shape)

    def repad(self, packed: torch.Tensor) -> torch.Tensor:
        """``[T, d]`` -> ``[B, L, d]`` with zeros at padding (packed input stays packed)."""
        return packed if self.rows is None else repad(packed, self.rows, self.batch, self.seq_len)

    def token_index(self, flat_rows: torch.Tensor) -> torch.Tensor:
        """Flat rows of the padded ``[B * L]`` grid (real tokens) -> their index in ``[T]``.

        ``rows`` is sorted (:func:`unpad` keeps row-major order), so a binary search finds
        each one without a host sync. Packed input is indexed by token already. A padding row
        (only ignored targets may point there) lands on a neighbouring token, never past the end.
        """
        if self.rows is None:
            return flat_rows
        return torch.searchsorted(self.rows, flat_rows).clamp_(max=max(self.rows.numel() - 1, 0))


def right_padding_lengths(key_padding_mask: torch.Tensor) -> Optional[torch.Tensor]:
    """``[B]`` int32 lengths when every row of the ``[B, S]`` mask is its real tokens followed by
    padding (what tokenizers and collators make), else ``None``. One host sync to check; ``None``
    while compiling or capturing, where no value may be read."""
    if not may_sync(key_padding_mask):
        return None
    real = key_padding_mask.bool()
    lengths = real.sum(-1, dtype=torch.int32)
    positions = torch.arange(real.shape[-1], device=real.device)
    return lengths if bool(torch.equal(positions[None, :] < lengths[:, None], real)) else None
