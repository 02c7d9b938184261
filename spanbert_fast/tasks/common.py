"""What every task shares: the task-model base class, ``task.json``, batching, input errors.

A fine-tuned folder holds ``config.json`` + ``model.safetensors`` (the HF layout written
by :func:`spanbert_fast.hub.save_pretrained`), ``task.json`` (which head, its settings and
the label map ``id2label``) and the tokenizer (``tokenizer.json`` + ``vocab.txt``), so
``SpanBertForXxx.from_pretrained(folder)`` rebuilds the same head with the same labels.

A plain encoder or pre-training checkpoint has no ``task.json``: the head is built from
the keyword arguments given to ``from_pretrained`` and freshly initialised, and
``model.load_report.missing`` lists its parameters (the loader also logs them).
"""
from __future__ import annotations

import codecs
import itertools
import json
import os
import random
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

from spanbert_fast.pretrained import SpanBertPreTrainedModel

TASK_FILE = "task.json"
IGNORE_INDEX = -100


class InputFileError(ValueError):
    """Bad user data: the message starts with ``path:line:`` (``path:`` when no line applies)."""

    def __init__(self, path, line: Optional[int], message: str):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path, self.line = str(path), line


def read_utf8(path, *, bom: bool = True) -> str:
    """The text of ``path`` decoded as UTF-8, newlines untouched; a leading byte-order mark
    (Excel's "CSV UTF-8" writes one) is dropped unless ``bom=False``.

    Bytes that are not UTF-8 raise :class:`InputFileError` naming the file and the line of the
    first bad byte. Iterate lines as ``open`` would with ``io.StringIO(text, newline=None)``.
    """
    with open(path, "rb") as f:
        data = f.read()
    skipped = len(codecs.BOM_UTF8) if bom and data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skipped:].decode("utf-8")
    except UnicodeDecodeError as err:
        start = skipped + err.start
        raise InputFileError(path, data.count(b"\n", 0, start) + 1,
                             f"not UTF-8 text ({err.reason} at byte {start}); convert the file to UTF-8") from err


def line_of(text: str, index: int) -> int:
    """1-based line number of character ``index`` in ``text``."""
    return text.count("\n", 0, max(0, index)) + 1


# --------------------------------------------------------------------------- task.json
def read_task_file(directory: str) -> Optional[dict]:
    """The ``task.json`` of a checkpoint folder, or ``None`` when it has none."""
    path = os.path.join(directory, TASK_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise InputFileError(path, err.lineno, f"not valid JSON ({err.msg})") from err


def saved_head(path: str, task: str) -> Optional[dict]:
    """Head settings of a folder fine-tuned for ``task`` (``labels`` read from ``id2label``); else None."""
    saved = read_task_file(path) if os.path.isdir(path) else None
    if not saved or saved.get("task") != task:
        return None
    head = dict(saved.get("head", {}))
    if "id2label" in saved:
        head["labels"] = [saved["id2label"][str(i)] for i in range(len(saved["id2label"]))]
    return head


def saved_labels(init: str, task: str, training_labels) -> Optional[List[str]]:
    """The label list of a folder fine-tuned for ``task`` (None for other checkpoints).

    Continuing from such a folder keeps its label ids; training labels it lacks are an error.
    """
    labels = (saved_head(init, task) or {}).get("labels")
    if labels is None:
        return None
    unknown = sorted(set(training_labels) - set(labels))
    if unknown:
        raise ValueError(f"{init} was fine-tuned with the labels {labels}; the training data adds {unknown}. "
                         "Start from an encoder or pre-training checkpoint to learn a new label set")
    return labels


class SpanBertTaskModel(SpanBertPreTrainedModel):
    """Base of the fine-tuning models: an encoder ``self.bert`` plus a task head.

    Subclasses set ``task`` (the name stored in ``task.json``) and implement
    :meth:`head_settings` (the constructor keyword arguments that rebuild the head).
    """

    task: str = ""

    def head_settings(self) -> dict:
        raise NotImplementedError

    @property
    def id2label(self) -> Dict[int, str]:
        return dict(enumerate(getattr(self, "labels", [])))

    @property
    def label2id(self) -> Dict[str, int]:
        return {label: i for i, label in enumerate(getattr(self, "labels", []))}

    @classmethod
    def saved_arguments(cls, path: str) -> dict:
        """The head settings of a folder fine-tuned for this task (``task.json``), else none.

        ``from_pretrained`` builds the head from them, overridden by the keyword arguments that
        name head settings (``labels``, ``pooling`` ...); an encoder or pre-training checkpoint
        gets a fresh head, listed in ``model.load_report.missing``.
        """
        return saved_head(path, cls.task) or {}

    def checkpoint_files(self) -> Dict[str, dict]:
        """``task.json``: the task, its head settings and ``id2label``."""
        settings = self.head_settings()
        labels = settings.pop("labels", None)
        values = {"task": self.task, "head": settings}
        if labels is not None:
            values["id2label"] = {str(i): label for i, label in enumerate(labels)}
        return {TASK_FILE: values}


# --------------------------------------------------------------------------- batching
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


def masked_mean(hidden: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of ``hidden`` [B, L, d] over the real tokens of each row (``attention_mask`` 1) -> [B, d]."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def batched(items: Iterable, batch_size: int) -> Iterator[List]:
    """Consecutive lists of at most ``batch_size`` of ``items`` (evaluation order); a generator
    is read lazily, one batch at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    remaining = iter(items)
    while chunk := list(itertools.islice(remaining, batch_size)):
        yield chunk


def progress_bar(total: int, unit: str, enabled: bool, desc: str = "predict"):
    """A tqdm bar over ``total`` items (``unit``) for prediction, shown by the rule of the
    training loop's bar: on stderr whenever ``enabled``, terminal or not (``--no-progress`` and
    the Python API's default turn it off). It stays on screen only when no other bar is open."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, leave=None)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict_batches(model, inputs: Iterable[dict], pad_id: int, batch_size: int) -> Iterator[Tuple[List[dict], object]]:
    """Run ``model`` in eval mode over ``inputs`` (dicts of ``input_ids`` [+ ``token_type_ids``]),
    ``batch_size`` at a time, in order; yields ``(chunk, output)`` per batch.

    ``inputs`` may be a generator (read one batch at a time); other keys of an input dict are
    not read by the model and ride along in ``chunk`` (e.g. what decoding needs)."""
    model.eval()
    device = model_device(model)
    for chunk in batched(inputs, batch_size):
        batch = collate_features(chunk, pad_id)
        with inference_context(device):
            output = model(**{k: v.to(device) for k, v in batch.items()})
        yield chunk, output


def resolve_tokenizer(checkpoint: str, tokenizer_path: Optional[str] = None):
    """The tokenizer at ``tokenizer_path``, else the one saved in the ``checkpoint`` folder."""
    from spanbert_fast.data.tokenizer import load_tokenizer
    from spanbert_fast.hub import resolve_checkpoint

    path = tokenizer_path or resolve_checkpoint(checkpoint)  # a hub repo id: its downloaded folder
    try:
        return load_tokenizer(path)
    except FileNotFoundError as err:
        hint = "" if tokenizer_path else "; pass --tokenizer PATH (a tokenizer.json, vocab.txt or a folder with one)"
        raise FileNotFoundError(f"{err}{hint}") from err


def check_length(n_tokens: int, model: torch.nn.Module, what: str) -> None:
    """Raise when a sequence is longer than the model's position table."""
    limit = model.config.max_position_embeddings
    if n_tokens > limit:
        raise ValueError(f"{what} has {n_tokens} tokens with [CLS]/[SEP]; the model takes at most {limit}")


def inference_context(device: torch.device):
    """bf16 autocast on CUDA (as training uses), nothing on CPU."""
    import contextlib

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class truncation:
    """``with truncation(tokenizer, max_length):`` encodes cut to ``max_length`` tokens
    (longest-first for pairs), then restores the tokenizer's own truncation setting."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __enter__(self):
        self.saved = self.tokenizer.truncation
        self.tokenizer.enable_truncation(self.max_length)
        return self.tokenizer

    def __exit__(self, *exc):
        if self.saved is None:
            self.tokenizer.no_truncation()
        else:
            self.tokenizer.enable_truncation(**self.saved)
        return False
