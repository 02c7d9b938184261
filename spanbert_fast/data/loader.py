"""Deterministic, resumable, DDP-sharded batches of masked blocks.

Order: in epoch ``e`` the blocks are visited in the permutation drawn from
``PCG64([seed, e, ORDER_STREAM])``; global batch ``t`` of the epoch is
``perm[t·G : (t+1)·G]`` (G = global batch size); rank ``r`` of ``w`` takes the contiguous slice
``[r·G/w, (r+1)·G/w)`` of it. An epoch has ``len(dataset) // G`` steps (the incomplete last batch
is dropped so every rank runs the same number of steps). Every block is masked with
:class:`~spanbert_fast.data.masking.SpanMasker` keyed by (seed, epoch, block index), so a batch
depends only on (seed, epoch, step, rank, world size), never on worker processes or on where a run
was resumed.

Position: ``state_dict()`` = ``{"epoch", "step", ...}``, where ``step`` counts the batches already
handed out in ``epoch``; ``load_state_dict`` continues exactly with the next batch. Iterating the
loader yields the rest of the current epoch and then moves to the next epoch (step 0).
"""
from __future__ import annotations

from typing import Dict, Iterator, Optional

import numpy as np
import torch

from .collate import collate_masked_blocks
from .masking import SpanMasker

ORDER_STREAM = 0x5EED  # separates the order generator from the per-block mask generators


class _EpochBatches(torch.utils.data.Dataset):
    """Map-style view: item ``step`` is the collated batch of that step (for DataLoader workers)."""

    def __init__(self, loader: "PretrainingLoader", epoch: int):
        self.loader = loader
        self.epoch = epoch

    def __len__(self) -> int:
        return self.loader.steps_per_epoch

    def __getitem__(self, step: int):
        return self.loader.make_batch(self.epoch, step)


class PretrainingLoader:
    """Batches for one DDP rank, in a deterministic order, with a restorable position.

    Args:
        dataset: indexable blocks (``dataset[i]`` → (token_ids, word_starts)), e.g. ``BlockDataset``.
        masker: the :class:`SpanMasker` (its seed keys the masks).
        global_batch_size: blocks per optimiser step over all ranks; divisible by ``world_size``.
        seed: seed of the block order.
        rank, world_size: this process's DDP rank and the number of ranks.
        num_workers: DataLoader worker processes for masking/collation (0 = in this process).
        pad_to_multiple_of: passed to the collator.
    """

    def __init__(
        self,
        dataset,
        masker: SpanMasker,
        global_batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pad_to_multiple_of: Optional[int] = None,
    ):
        if global_batch_size < 1 or global_batch_size % world_size:
            raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of world_size {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        if len(dataset) < global_batch_size:
            raise ValueError(f"dataset has {len(dataset)} blocks, fewer than one global batch ({global_batch_size})")
        self.dataset = dataset
        self.masker = masker
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.pad_to_multiple_of = pad_to_multiple_of
        self.epoch = 0
        self.step = 0
        self._order_cache = (None, None)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.dataset) // self.global_batch_size

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of block indices for ``epoch`` (identical on every rank)."""
        if self._order_cache[0] != epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, int(epoch), ORDER_STREAM]))
            self._order_cache = (epoch, rng.permutation(len(self.dataset)))
        return self._order_cache[1]

    def batch_indices(self, epoch: int, step: int) -> np.ndarray:
        """Block indices this rank gets at (epoch, step)."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} outside 0..{self.steps_per_epoch - 1}")
        first = step * self.global_batch_size + self.rank * self.local_batch_size
        return self.epoch_order(epoch)[first : first + self.local_batch_size]

    def make_batch(self, epoch: int, step: int) -> Dict[str, torch.Tensor]:
        """Mask and collate this rank's blocks of (epoch, step)."""
        masked = []
        for index in self.batch_indices(epoch, step).tolist():
            token_ids, word_starts = self.dataset[index]
            masked.append(self.masker(token_ids, word_starts, epoch=epoch, index=index))
        return collate_masked_blocks(masked, self.masker.special_ids, pad_to_multiple_of=self.pad_to_multiple_of)

    def state_dict(self) -> Dict[str, int]:
        """Position (epoch, batches already handed out) plus the layout it is valid for."""
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed,
                "global_batch_size": self.global_batch_size, "num_blocks": len(self.dataset)}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Resume at ``state``; refuses a state saved with another seed, batch size or dataset."""
        for key in ("seed", "global_batch_size", "num_blocks"):
            mine = self.state_dict()[key]
            if key in state and state[key] != mine:
                raise ValueError(f"data position saved with {key}={state[key]}, this loader has {mine}")
        if not 0 <= state["step"] <= self.steps_per_epoch:
            raise ValueError(f"step {state['step']} outside 0..{self.steps_per_epoch}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        """Yield the remaining batches of the current epoch, then advance to the next epoch."""
        if self.step >= self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        epoch, first = self.epoch, self.step
        if self.num_workers > 0:
            batches = torch.utils.data.DataLoader(
                _EpochBatches(self, epoch), batch_size=None, sampler=range(first, self.steps_per_epoch),
                num_workers=self.num_workers,
            )
        else:
            batches = (self.make_batch(epoch, step) for step in range(first, self.steps_per_epoch))
        for batch in batches:
            self.step += 1
            yield batch
        self.epoch, self.step = epoch + 1, 0

    def __len__(self) -> int:
        return self.steps_per_epoch
