"""Token and sentence embeddings from any layer (or the mean of a layer range).

``layer`` counts like Python indices over ``hidden_states`` = (embedding output, layer 1,
..., layer L): ``-1`` is the last encoder layer, ``0`` the embedding output. A range
``(-4, -1)`` (CLI ``-4..-1``, both ends included) averages those layers.

``pool``:

* ``"cls"``  -- the ``[CLS]`` vector of each text: ``float32 [N, d]``;
* ``"mean"`` -- the mean over the text's tokens, ``[CLS]`` and ``[SEP]`` included
  (padding excluded): ``float32 [N, d]``;
* ``"none"`` -- every token's vector, ``[CLS]`` and ``[SEP]`` included: a ragged result.
  :func:`embed` returns a list of ``[n_i, d]`` arrays; :func:`save_embeddings` writes an
  ``.npz`` with ``embeddings`` ``float32 [sum n_i, d]`` (all texts' tokens, concatenated),
  ``offsets`` ``int64 [N + 1]`` (text ``i`` is rows ``offsets[i]:offsets[i+1]``) and
  ``input_ids`` ``int64 [sum n_i]`` (the token of each row). :func:`load_ragged` reads it back.

Texts are batched with padding (sorted by length to pad little, results returned in input
order) and run in eval mode under ``torch.no_grad``: the same input gives the same output.
Texts longer than the model's positions are cut (a warning says how many).
"""
from __future__ import annotations

import logging
import os
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch

from spanbert_fast.data.tokenizer import special_ids
from spanbert_fast.io import atomic_write
from spanbert_fast.tasks.batching import collate_features
from spanbert_fast.tasks.prediction import masked_mean, model_device

logger = logging.getLogger(__name__)

POOLINGS = ("cls", "mean", "none")
Layers = Union[int, Tuple[int, int]]


def parse_layers(spec: str) -> Layers:
    """``"-1"`` -> ``-1``; ``"-4..-1"`` -> ``(-4, -1)`` (inclusive range)."""
    try:
        if ".." in spec:
            first, last = spec.split("..")
            return int(first), int(last)
        return int(spec)
    except ValueError:
        raise ValueError(f"--layer must be an integer (e.g. -1) or a range FIRST..LAST (e.g. -4..-1), got {spec!r}")


def layer_indices(layers: Layers, num_layers: int) -> List[int]:
    """Indices into ``hidden_states`` (``num_layers + 1`` entries) for ``layers``."""
    count = num_layers + 1
    first, last = (layers, layers) if isinstance(layers, int) else layers

    def absolute(index: int) -> int:
        if not -count <= index < count:
            raise ValueError(f"layer {index} out of range: the model has hidden states 0..{num_layers} "
                             f"(or -{count}..-1)")
        return index % count

    first, last = absolute(first), absolute(last)
    if first > last:
        raise ValueError(f"layer range {layers} is empty: its first layer comes after its last")
    return list(range(first, last + 1))


def _encode(tokenizer, texts: Sequence[str], max_length: int) -> Tuple[List[List[int]], int]:
    ids = special_ids(tokenizer)
    rows, cut = [], 0
    for text in texts:
        body = tokenizer.encode(text, add_special_tokens=False).ids
        if len(body) > max_length - 2:
            body, cut = body[: max_length - 2], cut + 1
        rows.append([ids.cls] + body + [ids.sep])
    return rows, cut


@torch.no_grad()
def embed(model, tokenizer, texts: Sequence[str], *, layer: Layers = -1, pool: str = "cls",
          batch_size: int = 32, max_length: int = None, progress: bool = False):
    """Embeddings of ``texts`` (see the module docstring for ``layer`` and ``pool``).

    ``model``: a :class:`~spanbert_fast.SpanBertModel` or any model with a ``.bert`` encoder
    (pre-training and fine-tuned models). Returns ``float32 [N, d]`` for ``cls``/``mean``,
    a list of ``float32 [n_i, d]`` arrays for ``none``.
    """
    if pool not in POOLINGS:
        raise ValueError(f"pool must be one of {POOLINGS}, got {pool!r}")
    if max_length is not None and max_length < 2:
        raise ValueError(f"max_length (--max-length) must be at least 2 ([CLS] and [SEP]), got {max_length}")
    if batch_size < 1:
        raise ValueError(f"batch_size (--batch-size) must be at least 1, got {batch_size}")
    encoder = getattr(model, "bert", model)
    config = encoder.config
    indices = layer_indices(layer, config.num_hidden_layers)
    max_length = min(max_length or config.max_position_embeddings, config.max_position_embeddings)
    rows, cut = _encode(tokenizer, texts, max_length)
    if cut:
        logger.warning("%d of %d texts were longer than %d tokens and were cut", cut, len(rows), max_length)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    results: List[np.ndarray] = [None] * len(rows)
    pad, device = special_ids(tokenizer).pad, model_device(encoder)
    was_training = encoder.training
    encoder.eval()
    from tqdm.auto import tqdm

    bar = tqdm(total=len(rows), desc="embed", unit="text", disable=not progress)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            batch = collate_features([{"input_ids": rows[i]} for i in chunk], pad)
            mask = batch["attention_mask"].to(device)
            states = encoder(batch["input_ids"].to(device), mask, output_hidden_states=True).hidden_states
            hidden = torch.stack([states[i] for i in indices]).float().mean(dim=0)  # [B, L, d]
            if pool == "cls":
                pooled = hidden[:, 0]
            elif pool == "mean":
                pooled = masked_mean(hidden, mask)
            for row, index in enumerate(chunk):
                if pool == "none":
                    results[index] = hidden[row, : len(rows[index])].cpu().numpy()
                else:
                    results[index] = pooled[row].cpu().numpy()
            bar.update(len(chunk))
    finally:
        bar.close()
        encoder.train(was_training)
    if pool == "none":
        return results
    return np.stack(results) if results else np.zeros((0, config.hidden_size), dtype=np.float32)


def check_embeddings_path(path: str, per_token: bool) -> None:
    """Raise ``ValueError`` unless ``path`` can take the embeddings: ``.npy`` for pooled ones,
    ``.npz`` for per-token (ragged) ones, in an existing folder. Call it before embedding."""
    if not per_token and not path.endswith(".npy"):
        raise ValueError(f"{path}: pooled embeddings are written as .npy; use a path ending in .npy")
    if per_token and not path.endswith(".npz"):
        raise ValueError(f"{path}: per-token (--pool none) embeddings are ragged and written as .npz "
                         "(embeddings + offsets); use a path ending in .npz")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ValueError(f"{path}: folder {folder} does not exist")


def save_embeddings(path: str, embeddings, input_ids: Sequence[Sequence[int]] = None) -> str:
    """Write ``[N, d]`` embeddings as ``.npy``, or ragged per-token ones as ``.npz`` (offsets).

    Ragged results (a list of ``[n_i, d]`` arrays) need a path ending in ``.npz``;
    ``input_ids`` (one list per text) is stored beside them when given.
    """
    check_embeddings_path(path, per_token=not isinstance(embeddings, np.ndarray))
    if isinstance(embeddings, np.ndarray):
        with atomic_write(path, binary=True) as f:
            np.save(f, embeddings)
        return path
    lengths = [len(e) for e in embeddings]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    width = embeddings[0].shape[1] if embeddings else 0
    arrays = {"embeddings": np.concatenate(embeddings) if embeddings else np.zeros((0, width), np.float32),
              "offsets": offsets}
    if input_ids is not None:
        arrays["input_ids"] = np.asarray([t for ids in input_ids for t in ids], dtype=np.int64)
    with atomic_write(path, binary=True) as f:
        np.savez(f, **arrays)
    return path


def load_ragged(path: str) -> List[np.ndarray]:
    """Read a ``--pool none`` ``.npz`` back into a list of ``[n_i, d]`` arrays."""
    with np.load(path) as archive:
        embeddings, offsets = archive["embeddings"], archive["offsets"]
    return [embeddings[offsets[i]: offsets[i + 1]] for i in range(len(offsets) - 1)]


def token_ids_for(tokenizer, texts: Sequence[str], max_length: int) -> List[List[int]]:
    """The ``[CLS] text [SEP]`` ids :func:`embed` runs on (after the same cut)."""
    return _encode(tokenizer, texts, max_length)[0]
