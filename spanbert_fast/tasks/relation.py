"""Relation extraction as the SpanBERT paper fine-tunes it on TACRED: entity masking, a classifier
over the relation labels, and TACRED's official micro P/R/F1.

Model: ``logits = classifier(dropout(pool(h)))``. ``pooling="cls"`` (default) pools the
``[CLS]`` state: the paper ("a linear classifier on top of the [CLS] token"; its code runs
BERT's pooler, dense + tanh, on ``[CLS]`` first, whose pre-trained weights SpanBERT checkpoints
lack). ``pooling="entity-start"`` concatenates the states at the subject and object markers
(found in ``input_ids`` by their ids): a common stronger variant, not the paper's. Loss: mean
cross-entropy.

The task's parts, each in its own module: :mod:`.tacred_examples` (reading TACRED files, encoding
``[CLS] words-with-markers [SEP]`` within ``max_length``), :mod:`.entity_markers` (marker names
and their vocabulary entries) and :mod:`.tacred_scoring` (the official scorer). The names tests
and callers import from here are re-exported.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# Everything this module takes from the rest of the package (one block, to re-point after moves).
from spanbert_fast.config import SpanBertConfig
from spanbert_fast.data.tokenizer import special_ids, vocab_tokens
from spanbert_fast.hub import resolve_checkpoint
from spanbert_fast.io import write_json
from spanbert_fast.model import SpanBertModel
from spanbert_fast.tasks.classification import SequenceClassifierOutput
from spanbert_fast.tasks.entity_markers import (
    OBJECT,
    SUBJECT,
    add_marker_tokens,
    assign_entity_markers,
    check_entity_markers,
    marker_role,
)
from spanbert_fast.tasks.prediction import predict_batches, progress_bar, resolve_tokenizer
from spanbert_fast.tasks.tacred_examples import (
    RelationExample,
    check_unique_ids,
    encode_examples,
    keep_both_entities,
    read_tacred,
)
from spanbert_fast.tasks.tacred_scoring import NO_RELATION, tacred_scores
from spanbert_fast.tasks.task_model import SpanBertTaskModel, saved_head, saved_labels
from spanbert_fast.tasks.text_files import InputFileError

logger = logging.getLogger(__name__)

POOLINGS = ("cls", "entity-start")


# --------------------------------------------------------------------------- model
class SpanBertForRelationExtraction(SpanBertTaskModel):
    """SpanBERT encoder + a linear relation classifier on ``[CLS]`` or on the two marker states.

    ``entity_markers`` maps each marker name to its vocabulary ``{"token": ..., "id": ...}``
    (saved in ``task.json``; the task assigns it, see the module docstring). ``"entity-start"``
    pooling needs it: each row must hold one subject and one object marker id (the task's
    inputs always do); the first of each is read.
    """

    task = "relation-extraction"

    def __init__(self, config: SpanBertConfig, *, labels: Optional[Sequence[str]] = None, pooling: str = "cls",
                 classifier_dropout: Optional[float] = None, entity_markers: Optional[Dict[str, dict]] = None):
        super().__init__(config)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if labels is None or len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"labels must be at least two distinct relation names, got {labels}")
        self.entity_markers = check_entity_markers(entity_markers or {})
        if pooling == "entity-start" and {marker_role(m) for m in self.entity_markers} != {SUBJECT, OBJECT}:
            raise ValueError("pooling='entity-start' needs entity_markers with subject and object markers")
        self.labels, self.pooling = [str(x) for x in labels], pooling
        self.classifier_dropout = config.hidden_dropout_prob if classifier_dropout is None else classifier_dropout
        self.bert = SpanBertModel(config)
        self.dropout = nn.Dropout(self.classifier_dropout)
        width = config.hidden_size * (2 if pooling == "entity-start" else 1)
        self.classifier = nn.Linear(width, len(self.labels))
        for role, name in ((SUBJECT, "subject_marker_ids"), (OBJECT, "object_marker_ids")):
            ids = [v["id"] for m, v in self.entity_markers.items() if marker_role(m) == role]
            self.register_buffer(name, torch.tensor(ids, dtype=torch.long), persistent=False)
        self.init_weights()

    def head_settings(self) -> dict:
        return {"labels": list(self.labels), "pooling": self.pooling, "classifier_dropout": self.classifier_dropout,
                "entity_markers": {m: dict(v) for m, v in self.entity_markers.items()}}

    def pool(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """``[B, d]`` ``[CLS]`` states, or ``[B, 2d]`` subject-marker ++ object-marker states."""
        if self.pooling == "cls":
            return hidden[:, 0]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        subject = torch.isin(input_ids, self.subject_marker_ids).int().argmax(-1)  # first marker of the row
        obj = torch.isin(input_ids, self.object_marker_ids).int().argmax(-1)
        return torch.cat([hidden[rows, subject], hidden[rows, obj]], dim=-1)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, **unused):
        """``labels`` [B] int64 (optional) -> :class:`SequenceClassifierOutput` (logits [B, num_labels])."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        logits = self.classifier(self.dropout(self.pool(hidden, input_ids)))
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss, logits, labels)


def grow_word_embeddings(model: SpanBertTaskModel, vocab_size: int) -> None:
    """Give ``model`` ``vocab_size`` word embeddings (new rows: normal(0, initializer_range)),
    keeping the existing rows; ``config.vocab_size`` follows so the saved folder reloads."""
    old = model.bert.embeddings.word_embeddings
    if vocab_size <= old.num_embeddings:
        return
    grown = nn.Embedding(vocab_size, old.embedding_dim, padding_idx=old.padding_idx,
                         device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        nn.init.normal_(grown.weight, mean=0.0, std=model.config.initializer_range)
        grown.weight[: old.num_embeddings] = old.weight
    model.bert.embeddings.word_embeddings = grown
    model.config.vocab_size = vocab_size


# --------------------------------------------------------------------------- fine-tuning task
class RelationExtractionTask:
    """What :func:`spanbert_fast.tasks.finetune.finetune` needs for TACRED-style relation extraction.

    ``tokenizer_path`` must be the tokenizer ``finetune`` gets (``None``: the one in the
    checkpoint): :meth:`build_model` reads its ``[unusedN]`` entries to place the markers.
    """

    name = "relation-extraction"

    def __init__(self, max_length: int = 128, pooling: str = "cls", tokenizer_path: Optional[str] = None):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if max_length < 4:
            raise ValueError(f"max_length must be at least 4 ([CLS], two markers, [SEP]), got {max_length}")
        self.max_length, self.pooling, self.tokenizer_path = max_length, pooling, tokenizer_path

    def read(self, path: str) -> List[RelationExample]:
        return read_tacred(path)

    def build_model(self, init: str, examples: List[RelationExample], backend: str):
        """The model from ``init`` with the training relations as labels (``no_relation`` first,
        then sorted) and a marker for every entity type of ``examples``."""
        found = {e.relation for e in examples}
        labels = (saved_labels(init, SpanBertForRelationExtraction.task, found)
                  or [NO_RELATION] * (NO_RELATION in found) + sorted(found - {NO_RELATION}))
        if len(labels) < 2:
            raise ValueError(f"the training data has a single relation {labels}; relation extraction needs two or more")
        saved = (saved_head(resolve_checkpoint(init), SpanBertForRelationExtraction.task) or {}).get("entity_markers")
        tokenizer = resolve_tokenizer(init, self.tokenizer_path)
        vocabulary = vocab_tokens(tokenizer)
        markers = assign_entity_markers({m for e in examples for m in e.markers}, vocabulary, len(vocabulary), saved)
        model = SpanBertForRelationExtraction.from_pretrained(init, backend=backend, labels=labels,
                                                              pooling=self.pooling, entity_markers=markers)
        grow_word_embeddings(model, max(v["id"] for v in markers.values()) + 1)
        grown = [m for m, v in markers.items() if v["token"] == m]
        if grown:
            logger.info("no [unusedN] vocabulary entries left for %s; added to the tokenizer and the word "
                        "embeddings (vocab_size %d)", ", ".join(grown), model.config.vocab_size)
        return model

    def encode(self, examples, tokenizer, model, path: str) -> List[List[int]]:
        """Input ids of ``examples`` with ``model``'s markers (the tokenizer gains any it lacks)."""
        add_marker_tokens(tokenizer, model.entity_markers)
        max_length = min(self.max_length, model.config.max_position_embeddings)
        marker_ids = {m: v["id"] for m, v in model.entity_markers.items()}
        sequences, cut = encode_examples(examples, tokenizer, marker_ids, max_length, path)
        if cut:
            logger.warning("%s: %d examples are longer than %d tokens; context words were cut, both entities kept",
                           path, cut, max_length)
        return sequences

    def features(self, examples, tokenizer, model, path: str) -> List[dict]:
        """Training features: ``input_ids`` and the relation's ``label`` id."""
        label2id = model.label2id
        for example in examples:
            if example.relation not in label2id:
                raise InputFileError(path, example.line, f"example {example.id!r}: field 'relation': "
                                                         f"{example.relation!r} is not one of the model's relations "
                                                         f"{model.labels}")
        sequences = self.encode(examples, tokenizer, model, path)
        return [{"input_ids": ids, "label": label2id[e.relation]} for ids, e in zip(sequences, examples)]

    def read_eval(self, path: str, model) -> List[RelationExample]:
        """Examples of ``path``. A repeated id or an entity type without a marker is an error (the
        model cannot encode it); a relation the model was not trained on is logged and scored as wrong."""
        examples = self.read(path)
        check_unique_ids(examples, path)
        for example in examples:
            for field, marker in zip(("subj_type", "obj_type"), example.markers):
                if marker not in model.entity_markers:
                    raise InputFileError(path, example.line, f"example {example.id!r}: field {field!r}: "
                                                             f"{marker} was not seen in training; the model has "
                                                             f"markers for {', '.join(model.entity_markers)}")
        unknown: Dict[str, RelationExample] = {}
        for example in examples:
            if example.relation not in model.label2id:
                unknown.setdefault(example.relation, example)
        if unknown:
            where = ", ".join(f"{r!r} (example {e.id!r}, line {e.line})" for r, e in unknown.items())
            logger.warning("%s: relations the model was not trained on: %s; it cannot predict them, so they "
                           "count as wrong", path, where)
        return examples

    def predict(self, model, tokenizer, examples: List[RelationExample], path: str, batch_size: int = 64,
                progress: bool = False) -> List[str]:
        """The predicted relation of each example (``progress``: a bar over the examples)."""
        inputs = [{"input_ids": ids} for ids in self.encode(examples, tokenizer, model, path)]
        relations: List[str] = []
        with progress_bar(len(inputs), "example", progress) as bar:
            for chunk, output in predict_batches(model, inputs, special_ids(tokenizer).pad, batch_size):
                relations.extend(model.labels[i] for i in output.logits.argmax(-1).tolist())
                bar.update(len(chunk))
        return relations

    def evaluate(self, model, tokenizer, path: str, out_dir: Optional[str], batch_size: int = 64,
                 examples: Optional[List[RelationExample]] = None, progress: bool = False) -> dict:
        """:func:`tacred_scores` on ``path``; writes ``predictions.json`` (id -> relation) into ``out_dir``."""
        examples = self.read_eval(path, model) if examples is None else examples
        predicted = self.predict(model, tokenizer, examples, path, batch_size, progress)
        scores = tacred_scores([e.relation for e in examples], predicted)
        if out_dir is not None:
            write_json(os.path.join(out_dir, "predictions.json"),
                              {e.id: relation for e, relation in zip(examples, predicted)})
        return scores


__all__ = ["SpanBertForRelationExtraction", "RelationExtractionTask", "RelationExample", "read_tacred",
           "tacred_scores", "NO_RELATION",
           # re-exported from their own modules (imported from here by tests and callers)
           "add_marker_tokens", "assign_entity_markers", "check_unique_ids", "encode_examples", "keep_both_entities"]
