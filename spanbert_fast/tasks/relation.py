"""Relation extraction as the SpanBERT paper fine-tunes it on TACRED: entity masking, a classifier
over the relation labels, and TACRED's official micro P/R/F1.

Input (the TACRED format): a ``.json`` file holding a list of objects, or the same objects one per
line (JSONL; told apart by the first character, ``[`` or not), each with ``id``, ``token`` (the
words), ``subj_start``, ``subj_end``, ``obj_start``, ``obj_end`` (inclusive word indices),
``subj_type``, ``obj_type`` and ``relation``. PTB bracket words (``-LRB-`` ...) become the brackets
they stand for, as the SpanBERT code does.

Entity masking (the paper's setup, "ner" mode of its ``run_tacred.py``): the subject's words are
replaced by one marker ``[SUBJ-<subj_type>]``, the object's by ``[OBJ-<obj_type>]``::

    [CLS] [SUBJ-PERSON] was born in [OBJ-CITY] , Michigan [SEP]

Markers are vocabulary entries, not text: sorted (every ``SUBJ`` marker by type, then every
``OBJ`` marker) they take the vocabulary's free ``[unusedN]`` entries in id order, so the
checkpoint keeps its vocabulary size; when none are left, the marker itself is added to the
tokenizer and the word embeddings grow by one row (normal(0, initializer_range)). The mapping
(marker -> vocabulary token and id, in that order) and the label list are saved in
``task.json``, so a reloaded model tokenizes exactly as it was trained. Ids of the other words
are never marker ids (an added marker typed in the text becomes ``[UNK]``).

Model: ``logits = classifier(dropout(pool(h)))``. ``pooling="cls"`` (default) pools the
``[CLS]`` state: the paper ("a linear classifier on top of the [CLS] token"; its code runs
BERT's pooler, dense + tanh, on ``[CLS]`` first, whose pre-trained weights SpanBERT checkpoints
lack). ``pooling="entity-start"`` concatenates the states at the subject and object markers
(found in ``input_ids`` by their ids): a common stronger variant, not the paper's. Loss: mean
cross-entropy.

Sequences longer than ``max_length`` keep both markers: the cut keeps a window of words around
them (centred on the pair), or, when the words between them alone are too many, a window
around each marker; context is dropped, never an entity.

Score (:func:`tacred_scores`, TACRED's published scorer): over the examples whose gold or
predicted relation is not ``no_relation``, ``correct`` = predicted relation equals the gold
one, ``predicted`` = examples predicted as a relation, ``gold`` = examples with a gold relation;
precision = correct / predicted (100 when nothing is predicted, as the scorer does), recall =
correct / gold (0 without gold relations), F1 their harmonic mean, all in percent. Predicting
``no_relation`` for a gold relation only lowers recall; a wrong relation lowers both.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

# Everything this module takes from the rest of the package (one block, to re-point after moves).
from spanbert_fast.config import SpanBertConfig
from spanbert_fast.data.tokenizer import special_ids, vocab_tokens
from spanbert_fast.hub import resolve_checkpoint
from spanbert_fast.model import SpanBertModel
from spanbert_fast.tasks.classification import SequenceClassifierOutput
from spanbert_fast.io import write_json
from spanbert_fast.tasks.prediction import predict_batches, progress_bar, resolve_tokenizer
from spanbert_fast.tasks.task_model import SpanBertTaskModel, saved_head, saved_labels
from spanbert_fast.tasks.text_files import InputFileError, read_utf8

logger = logging.getLogger(__name__)

NO_RELATION = "no_relation"
POOLINGS = ("cls", "entity-start")
SUBJECT, OBJECT = "SUBJ", "OBJ"
REQUIRED_FIELDS = ("id", "token", "subj_start", "subj_end", "obj_start", "obj_end", "subj_type", "obj_type",
                   "relation")
UNUSED_TOKEN = re.compile(r"\[unused\d+\]")
ENTITY_TYPE = re.compile(r"[^\s\[\]]+")  # a marker is "[SUBJ-" + type + "]": no spaces or brackets in the type
PTB_BRACKETS = {"-lrb-": "(", "-rrb-": ")", "-lsb-": "[", "-rsb-": "]", "-lcb-": "{", "-rcb-": "}"}


def marker_name(role: str, entity_type: str) -> str:
    """``[SUBJ-PERSON]`` for ``("SUBJ", "PERSON")``."""
    return f"[{role}-{entity_type}]"


def marker_role(marker: str) -> Optional[str]:
    """``"SUBJ"`` / ``"OBJ"`` for a well-formed marker name, else None."""
    for role in (SUBJECT, OBJECT):
        if marker.startswith(f"[{role}-") and marker.endswith("]") and ENTITY_TYPE.fullmatch(marker[len(role) + 2:-1]):
            return role
    return None


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


def check_entity_markers(markers: Dict[str, dict]) -> Dict[str, dict]:
    """``markers`` with ids as ints; ValueError for a bad name, a repeated token or id."""
    checked = {}
    for marker, entry in markers.items():
        if marker_role(marker) is None:
            raise ValueError(f"entity marker {marker!r} is not [SUBJ-<TYPE>] or [OBJ-<TYPE>]")
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str) or \
                isinstance(entry.get("id"), bool) or not isinstance(entry.get("id"), int) or entry["id"] < 0:
            raise ValueError(f"entity marker {marker!r} needs {{'token': str, 'id': int >= 0}}, got {entry!r}")
        checked[marker] = {"token": entry["token"], "id": entry["id"]}
    for key in ("token", "id"):
        values = [v[key] for v in checked.values()]
        if len(set(values)) != len(values):
            raise ValueError(f"entity markers share a vocabulary {key}: {checked}")
    return checked


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


# --------------------------------------------------------------------------- TACRED data
@dataclasses.dataclass
class RelationExample:
    id: str
    words: List[str]
    subj_start: int
    subj_end: int
    obj_start: int
    obj_end: int
    subj_type: str
    obj_type: str
    relation: str
    line: int  # 1-based line where the example starts in its file, for error messages

    @property
    def markers(self) -> Tuple[str, str]:
        return marker_name(SUBJECT, self.subj_type), marker_name(OBJECT, self.obj_type)


def json_list_items(text: str, path: str) -> List[Tuple[int, object]]:
    """``(line, value)`` of each element of the JSON list ``text`` (one pass, lines counted as it goes)."""
    decoder, whitespace = json.JSONDecoder(), " \t\r\n"
    items, position, line, counted = [], 0, 1, 0

    def skip(index: int) -> int:
        while index < len(text) and text[index] in whitespace:
            index += 1
        return index

    def line_at(index: int) -> int:
        nonlocal line, counted
        line, counted = line + text.count("\n", counted, index), index
        return line

    position = skip(position) + 1  # the caller saw "[" here
    position = skip(position)
    if position < len(text) and text[position] == "]":
        position += 1
    else:
        while True:
            try:
                value, end = decoder.raw_decode(text, position)
            except json.JSONDecodeError as err:
                raise InputFileError(path, err.lineno, f"not valid JSON ({err.msg})") from err
            items.append((line_at(position), value))
            position = skip(end)
            if position < len(text) and text[position] == ",":
                position = skip(position + 1)
                continue
            if position < len(text) and text[position] == "]":
                position += 1
                break
            raise InputFileError(path, line_at(min(position, len(text))), "not valid JSON (expected ',' or ']')")
    if skip(position) != len(text):
        raise InputFileError(path, line_at(skip(position)), "not valid JSON (extra data after the list)")
    return items


def parse_example(row, path: str, line: int, number: int) -> RelationExample:
    """The ``number``-th (from 1) TACRED object of ``path`` -> :class:`RelationExample`; an
    InputFileError naming file, line, example id and field."""
    if not isinstance(row, dict):
        raise InputFileError(path, line, f"example #{number}: expected an object with the fields "
                                         f"{', '.join(REQUIRED_FIELDS)}, got {type(row).__name__}")
    name = f"example {row['id']!r}" if "id" in row else f"example #{number} (no id)"

    def fail(field: str, message: str):
        raise InputFileError(path, line, f"{name}: field {field!r}: {message}")

    missing = [field for field in REQUIRED_FIELDS if field not in row]
    if missing:
        fail(missing[0], "missing" + (f" (so are {', '.join(map(repr, missing[1:]))})" if missing[1:] else ""))
    if isinstance(row["id"], bool) or not isinstance(row["id"], (str, int)):
        fail("id", f"must be a string or an integer, got {row['id']!r}")
    words = row["token"]
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        fail("token", "must be a list of word strings")
    if not words:
        fail("token", "empty token list")
    for field in ("subj_start", "subj_end", "obj_start", "obj_end"):
        value = row[field]
        if isinstance(value, bool) or not isinstance(value, int):
            fail(field, f"must be an integer word index, got {value!r}")
        if not 0 <= value < len(words):
            fail(field, f"{value} is outside the {len(words)} tokens (0..{len(words) - 1})")
    for role in ("subj", "obj"):
        if row[f"{role}_start"] > row[f"{role}_end"]:
            fail(f"{role}_start", f"{row[f'{role}_start']} is after {role}_end {row[f'{role}_end']}")
    if row["obj_start"] <= row["subj_end"] and row["subj_start"] <= row["obj_end"]:
        fail("obj_start", f"object words {row['obj_start']}..{row['obj_end']} overlap subject words "
                          f"{row['subj_start']}..{row['subj_end']}")
    for field in ("subj_type", "obj_type"):
        if not isinstance(row[field], str) or not ENTITY_TYPE.fullmatch(row[field]):
            fail(field, f"must be a non-empty type name without spaces or brackets, got {row[field]!r}")
    if not isinstance(row["relation"], str) or not row["relation"]:
        fail("relation", f"must be a non-empty string, got {row['relation']!r}")
    return RelationExample(str(row["id"]), [PTB_BRACKETS.get(w.lower(), w) for w in words], row["subj_start"],
                           row["subj_end"], row["obj_start"], row["obj_end"], row["subj_type"], row["obj_type"],
                           row["relation"], line)


def read_tacred(path: str) -> List[RelationExample]:
    """Examples of a TACRED ``.json`` list or a JSONL file; every example is checked before any is
    returned (InputFileError naming file, line, example id and field)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found")
    text = read_utf8(path)
    if text.lstrip(" \t\r\n").startswith("["):
        rows = json_list_items(text, path)
    else:
        rows = []
        for number, line in enumerate(io.StringIO(text, newline=None), start=1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise InputFileError(path, number, f"not valid JSON ({err.msg})") from err
    examples = [parse_example(row, path, line, number) for number, (line, row) in enumerate(rows, start=1)]
    if not examples:
        raise InputFileError(path, None, "no examples")
    return examples


def check_unique_ids(examples: Sequence[RelationExample], path: str) -> None:
    """InputFileError at the first repeated ``id`` (evaluation files: ``predictions.json`` is keyed by id)."""
    first_line: Dict[str, int] = {}
    for example in examples:
        if example.id in first_line:
            raise InputFileError(path, example.line, f"example {example.id!r}: field 'id': repeated (first at line "
                                                     f"{first_line[example.id]}); predictions.json is keyed by id")
        first_line[example.id] = example.line


# --------------------------------------------------------------------------- markers and encoding
def assign_entity_markers(markers: Sequence[str], vocabulary: Sequence[str], vocab_size: int,
                          saved: Optional[Dict[str, dict]] = None) -> Dict[str, dict]:
    """The marker mapping: ``saved`` entries first (kept as they are), then each new marker of
    ``markers`` (sorted: subject markers by type, then object markers) on the next free
    ``[unusedN]`` entry of ``vocabulary`` (tokens indexed by id), and past those on the marker
    itself at ids ``vocab_size``, ``vocab_size + 1`` ... (the tokenizer and embeddings grow)."""
    mapping = check_entity_markers(dict(saved or {}))
    taken = {v["id"] for v in mapping.values()}
    free = (i for i, token in enumerate(vocabulary) if UNUSED_TOKEN.fullmatch(token) and i not in taken)
    grown = max([vocab_size - 1, *taken]) + 1
    new = sorted(set(markers) - set(mapping), key=lambda m: (marker_role(m) != SUBJECT, m))
    for marker in new:
        index = next(free, None)
        if index is None:
            mapping[marker], grown = {"token": marker, "id": grown}, grown + 1
        else:
            mapping[marker] = {"token": vocabulary[index], "id": index}
    return mapping


def add_marker_tokens(tokenizer, entity_markers: Dict[str, dict]) -> None:
    """Make ``tokenizer`` hold every marker's token at its id: markers past the vocabulary are added
    (as special tokens, in id order); a token found elsewhere is a ValueError (wrong tokenizer)."""
    for marker, entry in sorted(entity_markers.items(), key=lambda item: item[1]["id"]):
        found = tokenizer.token_to_id(entry["token"])
        if found is None and entry["id"] == tokenizer.get_vocab_size(with_added_tokens=True):
            tokenizer.add_special_tokens([entry["token"]])
            found = tokenizer.token_to_id(entry["token"])
        if found != entry["id"]:
            raise ValueError(f"the tokenizer does not match the model's entity markers: {marker} is "
                             f"{entry['token']!r} with id {entry['id']} in task.json, id {found} in the tokenizer; "
                             "use the tokenizer saved with the model")


def keep_both_entities(body: List[int], first: int, second: int, budget: int) -> List[int]:
    """``body`` cut to ``budget`` ids keeping positions ``first < second`` (the two markers)."""
    if len(body) <= budget:
        return body
    if second - first + 1 <= budget:  # one window, centred on the pair
        start = max(0, first - (budget - (second - first + 1)) // 2)
        start = min(start, len(body) - budget)
        return body[start: start + budget]
    left = budget // 2  # a window around each marker; the middle is dropped
    right = budget - left
    start_left = max(0, first - (left - 1) // 2)
    start_right = min(second - right // 2, len(body) - right)  # past the left window: the gap exceeds budget
    return body[start_left: start_left + left] + body[start_right: start_right + right]


def encode_examples(examples: Sequence[RelationExample], tokenizer, marker_ids: Dict[str, int],
                    max_length: int, path: str) -> Tuple[List[List[int]], int]:
    """``[CLS] words-with-markers [SEP]`` ids of each example, at most ``max_length``; also the
    number of examples that were cut. A marker missing from ``marker_ids`` is an InputFileError."""
    if max_length < 4:
        raise ValueError(f"max_length must be at least 4 ([CLS], two markers, [SEP]), got {max_length}")
    specials = special_ids(tokenizer)
    segments = []  # three runs of context words per example: before, between, after the entities
    for example in examples:
        spans = sorted([(example.subj_start, example.subj_end), (example.obj_start, example.obj_end)])
        (a_start, a_end), (b_start, b_end) = spans
        segments += [example.words[:a_start], example.words[a_end + 1: b_start], example.words[b_end + 1:]]
    encoded = tokenizer.encode_batch(segments, is_pretokenized=True, add_special_tokens=False) if segments else []
    reserved = set(marker_ids.values())
    sequences, cut = [], 0
    for index, example in enumerate(examples):
        for field, marker in zip(("subj_type", "obj_type"), example.markers):
            if marker not in marker_ids:
                raise InputFileError(path, example.line, f"example {example.id!r}: field {field!r}: the model has "
                                                         f"no marker {marker} (markers: {', '.join(marker_ids)})")
        subject_first = example.subj_start < example.obj_start
        first, second = example.markers if subject_first else example.markers[::-1]
        before, between, after = ([specials.unk if i in reserved else i for i in e.ids]
                                  for e in encoded[3 * index: 3 * index + 3])
        ids = before + [marker_ids[first]] + between + [marker_ids[second]] + after
        body = keep_both_entities(ids, len(before), len(before) + 1 + len(between), max_length - 2)
        cut += len(body) < len(ids)
        sequences.append([specials.cls] + body + [specials.sep])
    return sequences, cut


# --------------------------------------------------------------------------- TACRED score
def _percent(numerator: int, denominator: int, empty: float) -> float:
    return 100.0 * numerator / denominator if denominator else empty


def _prf(correct: int, predicted: int, gold: int) -> Dict[str, float]:
    precision, recall = _percent(correct, predicted, 100.0), _percent(correct, gold, 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def tacred_scores(gold: Sequence[str], predicted: Sequence[str], negative: str = NO_RELATION) -> dict:
    """TACRED's official micro precision/recall/F1 (percent; see the module docstring), the counts,
    ``total`` examples, and a row per relation found in gold or predictions (same rules per
    relation; the published scorer prints rows only for gold relations)."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold relations but {len(predicted)} predictions")
    counts: Dict[str, List[int]] = {}  # relation -> [correct, predicted, gold]
    for gold_relation, guess in zip(gold, predicted):
        if guess != negative:
            counts.setdefault(guess, [0, 0, 0])[1] += 1
        if gold_relation != negative:
            row = counts.setdefault(gold_relation, [0, 0, 0])
            row[2] += 1
            row[0] += guess == gold_relation
    totals = [sum(row[i] for row in counts.values()) for i in range(3)]
    scores = {**_prf(*totals), "correct": totals[0], "predicted": totals[1], "gold": totals[2], "total": len(gold)}
    scores["per_relation"] = {relation: {**_prf(*row), "correct": row[0], "predicted": row[1], "gold": row[2]}
                              for relation, row in sorted(counts.items())}
    return scores


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
           "tacred_scores", "NO_RELATION"]
