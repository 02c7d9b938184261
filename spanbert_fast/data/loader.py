"""Deterministic, resumable, DDP-sharded batches of masked blocks.

Order: in epoch ``e`` the blocks are visited in the permutation drawn from
``SeedSequence([seed, e], spawn_key=(ORDER_STREAM,))``; global batch ``t`` of the epoch is
``perm[t·G : (t+1)·G]`` (G = global batch size); rank ``r`` of ``w`` takes the contiguous slice
``[r·G/w, (r+1)·G/w)`` of it. An epoch has ``len(dataset) // G`` steps (the incomplete last batch
is dropped so every rank runs the same number of steps). Every block is masked with
:class:`~spanbert_fast.data.masking.SpanMasker` keyed by (seed, epoch, block index), so a batch
depends only on (seed, epoch, step, rank, world size), never on worker processes or on where a run
was resumed.

Position: ``state_dict()`` = ``{"epoch", "step", ...}``, where ``step`` counts the batches already
handed out in ``epoch``; ``load_state_dict`` continues exactly with the next batch. Iterating
never ends: after the last batch of an epoch the next epoch (new order, fresh masks) starts at
step 0; the training loop decides when to stop. ``G`` = ``batch_size · world_size``, where
``batch_size`` is the per-rank (micro-)batch size.
"""
from __future__ import annotations

from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from .collate import collate_masked_blocks, pack_batch
from .masking import SpanMasker
from .static_shapes import pad_packed_batch, static_capacity

# The order generator is SeedSequence([seed, epoch], spawn_key=(ORDER_STREAM,)): the spawn key keeps
# it apart from every mask generator PCG64([seed, epoch, index]). (Appending ORDER_STREAM to the
# entropy instead would collide with the masks of block ORDER_STREAM.)
ORDER_STREAM = 0x5EED
HELD_OUT_STREAM = 0x0E7A1  # the generator of the held-out blocks: [seed, HELD_OUT_STREAM]


class BlockSubset:
    """The blocks ``indices`` of a prepared corpus, seen as a corpus of their own (for a held-out
    evaluation set and the training blocks around it). Block ``i`` of the view is ``indices[i]``."""

    def __init__(self, dataset, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.special_ids = dataset.special_ids
        self.vocab_size = dataset.vocab_size
        self.block_size = dataset.block_size
        self.word_boundaries = getattr(dataset, "word_boundaries", True)

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, index: int):
        return self.dataset[int(self.indices[index])]

    def unigram_counts(self) -> np.ndarray:
        return self.dataset.unigram_counts()  # of the whole corpus: a replacement-token distribution


def split_held_out(dataset, count: int, seed: int = 0) -> Tuple[BlockSubset, BlockSubset]:
    """``(training blocks, held-out blocks)``: ``count`` blocks drawn with ``seed``, the rest to train on.

    The draw depends only on (number of blocks, count, seed), so a resumed run holds out the same ones.
    """
    if not 0 < count < len(dataset):
        raise ValueError(f"held-out blocks must be between 1 and {len(dataset) - 1} (the corpus has "
                         f"{len(dataset)}), got {count}")
    rng = np.random.default_rng([seed, HELD_OUT_STREAM])
    held_out = np.sort(rng.choice(len(dataset), size=count, replace=False))
    training = np.setdiff1d(np.arange(len(dataset)), held_out, assume_unique=True)
    return BlockSubset(dataset, training), BlockSubset(dataset, held_out)


class _EpochBatches(torch.utils.data.Dataset):
    """Map-style view: item ``step`` is the collated batch of that step (for DataLoader workers)."""

    def __init__(self, batches: "PretrainingBatches", epoch: int):
        self.batches = batches
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches.steps_per_epoch

    def __getitem__(self, step: int):
        return self.batches.make_batch(self.epoch, step)


class PretrainingBatches:
    """Endless, deterministic, resumable stream of collated batches for one DDP rank.

    Args:
        dataset: indexable blocks (``dataset[i]`` → (token_ids, word_starts)) with ``special_ids``
            and ``vocab_size`` attributes, e.g. :class:`~spanbert_fast.data.prepare.BlockDataset`.
        batch_size: blocks per batch on this rank; the global batch is ``batch_size · world_size``.
        seed: seed of the block order and (unless ``masker`` is given) of the masks.
        masking: ``"span"`` | ``"word"`` | ``"subword"`` (ignored when ``masker`` is given).
        rank, world_size: this process's DDP rank and the number of ranks.
        num_workers: DataLoader worker processes that mask and collate (0 = in this process).
        unigram_replacement: draw random replacement tokens from the corpus unigram counts
            (``dataset.unigram_counts()``) instead of uniformly over non-special ids.
        masker: a ready :class:`SpanMasker` to use instead of building one.
        pad_to_multiple_of: passed to the collator.
        packed: yield the unpadded form of :func:`~spanbert_fast.data.collate.pack_batch`
            (``input_ids`` [T] with ``cu_seqlens``/``max_seqlen``): no padding, and the model
            needs no host sync to unpad.
        static_shapes: with ``packed``, pad every batch to fixed sizes
            (:mod:`~spanbert_fast.data.static_shapes`; ``True`` picks the capacity from the
            batch size, ``dataset.block_size`` and the masker's ratio), for a CUDA-graph step.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        *,
        seed: int = 0,
        masking: str = "span",
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        unigram_replacement: bool = False,
        masker: Optional[SpanMasker] = None,
        pad_to_multiple_of: Optional[int] = None,
        packed: bool = False,
        static_shapes: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        global_batch_size = batch_size * world_size
        if len(dataset) < global_batch_size:
            raise ValueError(
                f"dataset has {len(dataset)} blocks, fewer than one global batch "
                f"({batch_size} x {world_size} ranks = {global_batch_size})"
            )
        scheme = masker.scheme if masker is not None else masking
        if scheme != "subword" and not getattr(dataset, "word_boundaries", True):
            raise ValueError(f"{scheme} masking needs word boundaries, and the corpus was prepared with a tokenizer "
                             "that has no pre-tokenizer (no word boundary is known): use --masking subword "
                             "(masking='subword'), or prepare the corpus with a tokenizer that splits words")
        if masker is None:
            counts = dataset.unigram_counts() if unigram_replacement else None
            masker = SpanMasker(dataset.special_ids, dataset.vocab_size, scheme=masking,
                                unigram_counts=counts, seed=seed)
        self.dataset = dataset
        self.masker = masker
        self.batch_size = batch_size
        self.global_batch_size = global_batch_size
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.pad_to_multiple_of = pad_to_multiple_of
        self.packed = packed
        self.static_capacity = None
        if static_shapes:
            if not packed:
                raise ValueError("static_shapes=True needs packed=True (fixed-shape packed batches)")
            self.static_capacity = static_capacity(batch_size, dataset.block_size + 2, masker.mask_ratio)
        self.epoch = 0
        self.step = 0
        self._order_cache = (None, None)

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch (the incomplete last global batch is dropped)."""
        return len(self.dataset) // self.global_batch_size

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of block indices for ``epoch`` (identical on every rank)."""
        if self._order_cache[0] != epoch:
            sequence = np.random.SeedSequence([self.seed, int(epoch)], spawn_key=(ORDER_STREAM,))
            rng = np.random.Generator(np.random.PCG64(sequence))
            self._order_cache = (epoch, rng.permutation(len(self.dataset)))
        return self._order_cache[1]

    def batch_indices(self, epoch: int, step: int) -> np.ndarray:
        """Block indices this rank gets at (epoch, step)."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} outside 0..{self.steps_per_epoch - 1}")
        first = step * self.global_batch_size + self.rank * self.batch_size
        return self.epoch_order(epoch)[first : first + self.batch_size]

    def make_batch(self, epoch: int, step: int) -> Dict[str, torch.Tensor]:
        """Mask and collate this rank's blocks of (epoch, step); a pure function of its arguments."""
        masked = []
        for index in self.batch_indices(epoch, step).tolist():
            token_ids, word_starts = self.dataset[index]
            masked.append(self.masker(token_ids, word_starts, epoch=epoch, index=index))
        batch = collate_masked_blocks(masked, self.masker.special_ids, pad_to_multiple_of=self.pad_to_multiple_of)
        if not self.packed:
            return batch
        packed = pack_batch(batch)
        if self.static_capacity is not None:
            packed = pad_packed_batch(packed, self.static_capacity, self.masker.special_ids.pad)
        return packed

    def state_dict(self) -> Dict[str, int]:
        """Position (epoch, batches already handed out in it) plus the layout it is valid for."""
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed,
                "global_batch_size": self.global_batch_size, "num_blocks": len(self.dataset)}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Continue after the last batch handed out when ``state`` was saved.

        Refuses a state saved with another seed, global batch size or dataset size (the order
        would differ). The world size may change if the global batch size stays the same.
        """
        mine = self.state_dict()
        for key in ("seed", "global_batch_size", "num_blocks"):
            if key in state and state[key] != mine[key]:
                raise ValueError(f"data position saved with {key}={state[key]}, this batch source has {mine[key]}")
        if not 0 <= state["step"] <= self.steps_per_epoch:
            raise ValueError(f"step {state['step']} outside 0..{self.steps_per_epoch}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def _epoch_batches(self, epoch: int, first: int) -> Iterator[Dict[str, torch.Tensor]]:
        if self.num_workers > 0:
            return iter(torch.utils.data.DataLoader(
                _EpochBatches(self, epoch), batch_size=None, sampler=range(first, self.steps_per_epoch),
                num_workers=self.num_workers,
            ))
        return (self.make_batch(epoch, step) for step in range(first, self.steps_per_epoch))

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        """Yield batches from the current position on, forever (epoch after epoch)."""
        while True:
            if self.step >= self.steps_per_epoch:
                self.epoch, self.step = self.epoch + 1, 0
            for batch in self._epoch_batches(self.epoch, self.step):
                self.step += 1
                yield batch

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.steps_per_epoch
