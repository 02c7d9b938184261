"""Task features -> batches: padding, collation, resumable epochs, evaluation chunks."""
from __future__ import annotations

import itertools
import random
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence

import torch


IGNORE_INDEX = -100  # labels the loss skips (padding, sub-word pieces)


def pad_sequences(sequences: Sequence[Sequence[int]], pad_value: int, length: Optional[int] = None) -> torch.Tensor:
    """``[N, L]`` int64 tensor of right-padded rows (``L`` = longest row unless given)."""
    length = max((len(s) for s in sequences), default=0) if length is None else length
    out = torch.full((len(sequences), length), pad_value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
    return out


def collate_features(features: Sequence[dict], pad_id: int) -> Dict[str, torch.Tensor]:
    """Pad a list of feature dicts into a batch.

    Every feature has ``input_ids`` (list of ints); optional ``token_type_ids`` (padded with 0;
    a feature without them counts as all segment 0) and per-token ``token_labels`` (padded with
    -100), and scalar int fields (``label``, ``start_positions``, ``end_positions``) stacked as
    ``[B]`` -- these must be in every feature of the batch or in none. ``attention_mask`` is built here.
    """
    input_ids = pad_sequences([f["input_ids"] for f in features], pad_id)
    lengths = torch.tensor([len(f["input_ids"]) for f in features])
    batch = {
        "input_ids": input_ids,
        "attention_mask": (torch.arange(input_ids.shape[1])[None] < lengths[:, None]).long(),
    }
    def present(key: str) -> bool:  # every feature has it, none has it, or an error naming the key
        count = sum(key in f for f in features)
        if 0 < count < len(features):
            raise ValueError(f"{count} of {len(features)} features in a batch have {key!r}; all or none must")
        return count > 0

    if any("token_type_ids" in f for f in features):  # a feature without them is all segment 0
        batch["token_type_ids"] = pad_sequences([f.get("token_type_ids", ()) for f in features], 0,
                                                input_ids.shape[1])
    if present("token_labels"):
        batch["labels"] = pad_sequences([f["token_labels"] for f in features], IGNORE_INDEX, input_ids.shape[1])
    for key in ("label", "start_positions", "end_positions"):
        if present(key):
            name = "labels" if key == "label" else key
            batch[name] = torch.tensor([f[key] for f in features], dtype=torch.long)
    return batch


class EpochBatches:
    """Endless, resumable batches over ``features``: a fresh seeded shuffle every epoch.

    ``state_dict()`` records (epoch, position); after ``load_state_dict`` iteration
    continues with the batch after the last one yielded (what the trainer's resume needs).
    The last batch of an epoch may be smaller.
    """

    def __init__(self, features: Sequence[dict], batch_size: int, collate: Callable[[Sequence[dict]], dict],
                 seed: int = 0, shuffle: bool = True):
        if not features:
            raise ValueError("no training features: the training file produced no examples")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.features, self.batch_size, self.collate = list(features), batch_size, collate
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.position = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.features) // self.batch_size)

    def _order(self, epoch: int) -> List[int]:
        order = list(range(len(self.features)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def __iter__(self) -> Iterator[dict]:
        while True:
            order = self._order(self.epoch)
            while self.position < self.batches_per_epoch:
                start = self.position * self.batch_size
                chunk = [self.features[i] for i in order[start: start + self.batch_size]]
                self.position += 1
                yield self.collate(chunk)
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def batched(items: Iterable, batch_size: int) -> Iterator[List]:
    """Consecutive lists of at most ``batch_size`` of ``items`` (evaluation order); a generator
    is read lazily, one batch at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    remaining = iter(items)
    while chunk := list(itertools.islice(remaining, batch_size)):
        yield chunk
