"""TACRED examples: reading and checking the files, and encoding each example with its entity markers.

Input (the TACRED format): a ``.json`` file holding a list of objects, or the same objects one per
line (JSONL; told apart by the first character, ``[`` or not), each with ``id``, ``token`` (the
words), ``subj_start``, ``subj_end``, ``obj_start``, ``obj_end`` (inclusive word indices),
``subj_type``, ``obj_type`` and ``relation``. PTB bracket words (``-LRB-`` ...) become the brackets
they stand for, as the SpanBERT code does.

Sequences longer than ``max_length`` keep both markers: the cut keeps a window of words around
them (centred on the pair), or, when the words between them alone are too many, a window
around each marker; context is dropped, never an entity.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Dict, List, Sequence, Tuple

from spanbert_fast.data.tokenizer import special_ids
from spanbert_fast.tasks.entity_markers import ENTITY_TYPE, OBJECT, SUBJECT, marker_name
from spanbert_fast.tasks.text_files import InputFileError, read_utf8

REQUIRED_FIELDS = ("id", "token", "subj_start", "subj_end", "obj_start", "obj_end", "subj_type", "obj_type",
                   "relation")
PTB_BRACKETS = {"-lrb-": "(", "-rrb-": ")", "-lsb-": "[", "-rsb-": "]", "-lcb-": "{", "-rcb-": "}"}


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
