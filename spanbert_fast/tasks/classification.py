"""Sequence classification: a head on the pooled encoder output, CSV/JSONL data, accuracy/macro-F1.

Model: ``logits = out_proj(dropout(pool(h)))`` where ``pool`` is the ``[CLS]`` vector
(``pooling="cls"``) or the mean over real tokens (``"mean"``), optionally passed through a
dense + tanh pooler first (``use_pooler=True``, BERT style). Loss: mean cross-entropy.

Data: a ``.csv`` file with a header holding ``text`` and ``label`` (optional ``text_pair``
for sentence pairs), or a ``.jsonl`` file with one ``{"text": ..., "label": ...}`` object per
line. Labels are strings; the label map is the sorted set of training labels and is saved
in ``task.json`` as ``id2label``.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from spanbert_fast.config import SpanBertConfig
from spanbert_fast.data.tokenizer import encode_pair
from spanbert_fast.model import SpanBertModel
from spanbert_fast.io import atomic_write
from spanbert_fast.tasks.prediction import masked_mean, predict_batches, progress_bar, truncation
from spanbert_fast.tasks.task_model import SpanBertTaskModel, saved_labels
from spanbert_fast.tasks.text_files import InputFileError, read_utf8

POOLINGS = ("cls", "mean")


# --------------------------------------------------------------------------- model
@dataclasses.dataclass
class SequenceClassifierOutput:
    loss: Optional[torch.Tensor]  # mean CE (None without labels)
    logits: torch.Tensor  # [B, num_labels]
    labels: Optional[torch.Tensor] = None  # [B]

    def metrics(self) -> Dict[str, torch.Tensor]:
        """Batch accuracy (a tensor, logged by the trainer)."""
        if self.labels is None:
            return {}
        return {"accuracy": (self.logits.argmax(-1) == self.labels).float().mean()}


class ClassificationHead(nn.Module):
    """``[optional dense + tanh] -> dropout -> out_proj`` on the pooled ``[B, d]`` vector."""

    def __init__(self, config: SpanBertConfig, num_labels: int, use_pooler: bool, dropout: float):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size) if use_pooler else None
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(config.hidden_size, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            pooled = torch.tanh(self.dense(pooled))
        return self.out_proj(self.dropout(pooled))


class SpanBertForSequenceClassification(SpanBertTaskModel):
    """SpanBERT encoder + a classification head over ``[CLS]`` or mean-pooled tokens."""

    task = "sequence-classification"

    def __init__(self, config: SpanBertConfig, *, labels: Sequence[str] = ("0", "1"), pooling: str = "cls",
                 use_pooler: bool = False, classifier_dropout: Optional[float] = None):
        super().__init__(config)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"labels must be at least two distinct names, got {list(labels)}")
        self.labels, self.pooling, self.use_pooler = [str(x) for x in labels], pooling, use_pooler
        self.classifier_dropout = config.hidden_dropout_prob if classifier_dropout is None else classifier_dropout
        self.bert = SpanBertModel(config)
        self.classifier = ClassificationHead(config, len(self.labels), use_pooler, self.classifier_dropout)
        self.init_weights()

    def head_settings(self) -> dict:
        return {"labels": list(self.labels), "pooling": self.pooling, "use_pooler": self.use_pooler,
                "classifier_dropout": self.classifier_dropout}

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, **unused):
        """``labels`` [B] int64 (optional) -> :class:`SequenceClassifierOutput`."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        pooled = hidden[:, 0] if self.pooling == "cls" else masked_mean(hidden, attention_mask)
        logits = self.classifier(pooled)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss, logits, labels)


# --------------------------------------------------------------------------- data
@dataclasses.dataclass
class ClassificationExample:
    text: str
    label: Optional[str]
    line: int  # line of the row in its file (1-based), for error messages
    text_pair: Optional[str] = None


def read_classification_file(path: str) -> List[ClassificationExample]:
    """Rows of a ``.csv`` (header with ``text``, ``label``[, ``text_pair``]) or ``.jsonl`` file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found")
    examples = []
    if path.endswith(".jsonl") or path.endswith(".json"):
        for number, line in enumerate(io.StringIO(read_utf8(path), newline=None), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputFileError(path, number, f"not valid JSON ({err.msg})") from err
            if not isinstance(row, dict) or "text" not in row or "label" not in row:
                raise InputFileError(path, number, 'each line must be an object with "text" and "label"')
            examples.append(ClassificationExample(str(row["text"]), str(row["label"]), number,
                                                  row.get("text_pair")))
    else:
        reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""))
        if reader.fieldnames is None or not {"text", "label"} <= set(reader.fieldnames):
            raise InputFileError(path, 1, f"the CSV header must name the columns text and label, "
                                          f"found {reader.fieldnames}")
        for row in reader:
            if row["text"] is None or row["label"] is None or None in row:
                raise InputFileError(path, reader.line_num,
                                     f"expected {len(reader.fieldnames)} columns ({','.join(reader.fieldnames)})")
            examples.append(ClassificationExample(row["text"], row["label"].strip(), reader.line_num,
                                                  row.get("text_pair") or None))
    if not examples:
        raise InputFileError(path, None, "no rows")
    return examples


def encode_example(example: ClassificationExample, tokenizer, max_length: int, label2id: Dict[str, int],
                   path: str) -> dict:
    """Token ids (``[CLS] a [SEP] (b [SEP])``, cut to ``max_length``) and the label id."""
    if example.label is not None and example.label not in label2id:
        raise InputFileError(path, example.line, f"label {example.label!r} is not one of the model's labels "
                                                 f"{sorted(label2id)}")
    with truncation(tokenizer, max_length):
        encoding = encode_pair(tokenizer, example.text, example.text_pair)  # "" pair: a single text, as HF
    # Always set: single rows are all segment 0, and a batch mixing single and pair rows
    # must not lose (or trip over) the pair rows' segment ids.
    feature = {"input_ids": encoding.ids, "token_type_ids": encoding.type_ids}
    if example.label is not None:
        feature["label"] = label2id[example.label]
    return feature


# --------------------------------------------------------------------------- metrics
def classification_metrics(gold: Sequence[int], predicted: Sequence[int], labels: Sequence[str]) -> dict:
    """Accuracy, macro-F1 (mean over labels seen in gold or predictions) and per-label F1."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    correct = sum(g == p for g, p in zip(gold, predicted))
    per_label = {}
    for index in sorted(set(gold) | set(predicted)):
        tp = sum(g == index and p == index for g, p in zip(gold, predicted))
        fp = sum(g != index and p == index for g, p in zip(gold, predicted))
        fn = sum(g == index and p != index for g, p in zip(gold, predicted))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        per_label[labels[index]] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": correct / len(gold) if gold else 0.0,
        "macro_f1": sum(per_label.values()) / len(per_label) if per_label else 0.0,
        "f1_per_label": per_label,
        "count": len(gold),
    }


# --------------------------------------------------------------------------- fine-tuning task
class ClassificationTask:
    """What :func:`spanbert_fast.tasks.finetune.finetune` needs for sequence classification."""

    name = "classification"

    def __init__(self, max_length: int = 128, pooling: str = "cls", use_pooler: bool = False):
        self.max_length, self.pooling, self.use_pooler = max_length, pooling, use_pooler

    def read(self, path: str) -> List[ClassificationExample]:
        return read_classification_file(path)

    def build_model(self, init: str, examples: List[ClassificationExample], backend: str):
        found = {e.label for e in examples}
        labels = saved_labels(init, SpanBertForSequenceClassification.task, found) or sorted(found)
        if len(labels) < 2:
            raise ValueError(f"the training data has a single label {labels}; classification needs two or more")
        return SpanBertForSequenceClassification.from_pretrained(
            init, backend=backend, labels=labels, pooling=self.pooling, use_pooler=self.use_pooler)

    def features(self, examples, tokenizer, model, path: str) -> List[dict]:
        return [encode_example(e, tokenizer, self.max_length, model.label2id, path) for e in examples]

    def predict(self, model, features: List[dict], pad_id: int, batch_size: int = 64,
                progress: bool = False) -> List[int]:
        """Predicted label ids, in order (``progress``: a bar over the rows)."""
        inputs = [{k: v for k, v in f.items() if k != "label"} for f in features]
        labels = []
        with progress_bar(len(inputs), "row", progress) as bar:
            for chunk, output in predict_batches(model, inputs, pad_id, batch_size):
                labels.extend(output.logits.argmax(-1).tolist())
                bar.update(len(chunk))
        return labels

    def read_eval(self, path: str, model) -> List[ClassificationExample]:
        """The rows of ``path``; a label the model does not have is an error (metrics need its id)."""
        examples = self.read(path)
        for example in examples:
            if example.label not in model.label2id:
                raise InputFileError(path, example.line, f"label {example.label!r} is not one of the model's "
                                                         f"labels {sorted(model.label2id)}")
        return examples

    def evaluate(self, model, tokenizer, path: str, out_dir: Optional[str], batch_size: int = 64,
                 examples: Optional[List[ClassificationExample]] = None, progress: bool = False) -> dict:
        """Accuracy and macro-F1 on ``path``; writes ``predictions.jsonl`` into ``out_dir``
        (``progress``: a bar while predicting)."""
        from spanbert_fast.data.tokenizer import special_ids

        examples = self.read_eval(path, model) if examples is None else examples
        features = self.features(examples, tokenizer, model, path)
        predicted = self.predict(model, features, special_ids(tokenizer).pad, batch_size, progress)
        metrics = classification_metrics([f["label"] for f in features], predicted, model.labels)
        if out_dir is not None:
            rows = [{"text": e.text, "label": e.label, "prediction": model.labels[p]} for e, p in zip(examples, predicted)]
            with atomic_write(os.path.join(out_dir, "predictions.jsonl")) as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return metrics


__all__ = ["SpanBertForSequenceClassification", "SequenceClassifierOutput", "ClassificationTask",
           "classification_metrics", "read_classification_file"]
