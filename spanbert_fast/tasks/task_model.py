"""The base of the fine-tuning models and their ``task.json``.

A fine-tuned folder holds ``config.json`` + ``model.safetensors`` (the HF layout written by
:meth:`~spanbert_fast.pretrained.SpanBertPreTrainedModel.save_pretrained`), ``task.json`` (which
head, its settings and the label map ``id2label``) and the tokenizer (``tokenizer.json`` +
``vocab.txt``), so ``SpanBertForXxx.from_pretrained(folder)`` rebuilds the same head with the
same labels.

A plain encoder or pre-training checkpoint has no ``task.json``: the head is built from
the keyword arguments given to ``from_pretrained`` and freshly initialised, and
``model.load_report.missing`` lists its parameters (the loader also logs them).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

from spanbert_fast.pretrained import SpanBertPreTrainedModel
from spanbert_fast.tasks.text_files import InputFileError


TASK_FILE = "task.json"


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
