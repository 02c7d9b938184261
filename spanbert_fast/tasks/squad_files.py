"""SQuAD v1.1 / v2.0 JSON files → :class:`SquadExample` questions, every error naming ``file:line``.

Answers are checked against their context (``answer_start`` and text); an evaluation file only
warns about answer offsets, since only the answer text is scored. Each example records which
official script scores it (:func:`squad_version_of`; scoring in :mod:`.squad_scoring`).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from spanbert_fast.tasks.text_files import InputFileError, line_of, read_utf8

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SquadExample:
    qid: str
    question: str
    context: str
    answers: List[Tuple[str, int]]  # (text, answer_start); empty for impossible questions
    is_impossible: bool
    line: Optional[int]  # line of the question's "id" in its file
    # Every answer text the file lists for the question, impossible or not: what the official
    # scripts score against (None: the texts of ``answers``).
    gold_texts: Optional[List[str]] = None
    squad_version: Optional[str] = None  # "1.1" / "2.0": whose scoring rules apply (squad_version_of)

    def scored_answers(self) -> List[str]:
        return [text for text, _ in self.answers] if self.gold_texts is None else list(self.gold_texts)


def squad_version_of(version_field, impossible_keys: bool, impossible_true: bool) -> str:
    """Which official script scores a SQuAD file: ``"2.0"`` when a question is marked
    ``is_impossible: true``; else the file's ``version`` (``"1.1"``, ``"v2.0"``, ...); else
    ``"2.0"`` when questions carry an ``is_impossible`` key at all, ``"1.1"`` when none does."""
    if impossible_true:
        return "2.0"
    text = str(version_field or "").strip().lower().lstrip("v")
    if text.startswith("1"):
        return "1.1"
    if text.startswith("2"):
        return "2.0"
    return "2.0" if impossible_keys else "1.1"


_ID_KEY = re.compile(r'"id"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+)')


def _id_lines(raw: str) -> Dict[str, List[int]]:
    """``{qid: [line, ...]}`` of every ``"id": ...`` in ``raw``, in file order (one regex pass).

    The id is decoded from the raw JSON literal, so non-ASCII ids match however they are
    written (as is or ``\\uXXXX``-escaped). Line numbers come from one running count.
    """
    lines: Dict[str, List[int]] = collections.defaultdict(list)
    line, counted = 1, 0
    for match in _ID_KEY.finditer(raw):
        try:
            qid = str(json.loads(match.group(1)))
        except json.JSONDecodeError:
            continue
        line += raw.count("\n", counted, match.start())
        counted = match.start()
        lines[qid].append(line)
    return lines


_SPACE = re.compile(r"[ \t\n\r]*")


def _offset_of(raw: str, keys: Sequence) -> Optional[int]:
    """Character offset in the JSON text ``raw`` of the value at ``keys`` (object keys and list
    indices, e.g. ``["data", 0, "paragraphs", 2]``); None when it cannot be followed. Used only
    to put a line number on an error, so it may be slow."""
    decoder, pos = json.JSONDecoder(), _SPACE.match(raw, 0).end()

    def skip_space(at: int) -> int:
        return _SPACE.match(raw, at).end()

    try:
        for key in keys:
            if isinstance(key, str):
                if raw[pos] != "{":
                    return None
                pos = skip_space(pos + 1)
                while True:
                    name, pos = decoder.raw_decode(raw, pos)
                    pos = skip_space(skip_space(pos) + 1)  # past the ':'
                    if name == key:
                        break
                    _, pos = decoder.raw_decode(raw, pos)
                    pos = skip_space(skip_space(pos) + 1)  # past the ','
            else:
                if raw[pos] != "[":
                    return None
                pos = skip_space(pos + 1)
                for _ in range(key):
                    _, pos = decoder.raw_decode(raw, pos)
                    pos = skip_space(skip_space(pos) + 1)
        return pos
    except (ValueError, IndexError):
        return None


def _take_line(lines: Dict[str, List[int]], qid: str) -> Optional[int]:
    """The line of the next question ``qid`` (duplicated ids: in file order, then the last one)."""
    found = lines.get(qid)
    if not found:
        return None
    return found.pop(0) if len(found) > 1 else found[0]


def read_squad(path: str, require_answers: bool = True, check_offsets: bool = True) -> List[SquadExample]:
    """Questions of a SQuAD v1.1 / v2.0 JSON file, with their answers checked against the context.

    Raises :class:`InputFileError` (``path:line:``) for malformed JSON, a missing field, an
    article, paragraph, question or answer that is not an object (or their lists not lists), an
    answer whose offsets fall outside its context or whose text is not at ``answer_start``,
    and (``require_answers``) an answerable question without answers.

    With ``check_offsets=False`` (evaluation files: only the answer *text* is scored) an
    answer outside its context or not at its ``answer_start`` is logged as a warning
    (``path:line``) and kept, instead of being an error.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found")
    raw = read_utf8(path)
    try:
        dataset = json.loads(raw)
    except json.JSONDecodeError as err:
        raise InputFileError(path, err.lineno, f"not valid JSON ({err.msg}, column {err.colno})") from err
    if not isinstance(dataset, dict) or not isinstance(dataset.get("data"), list):
        raise InputFileError(path, 1, 'not a SQuAD file: expected {"data": [{"paragraphs": [...]}, ...]}')
    id_lines = _id_lines(raw)

    def expect(value, kind: type, keys: Sequence):
        """``value`` when it is a ``kind``; else an error at the line of ``keys`` in the file."""
        if isinstance(value, kind):
            return value
        offset = _offset_of(raw, keys)
        where = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).lstrip(".")
        raise InputFileError(path, None if offset is None else line_of(raw, offset),
                             f"{where} must be {'an object' if kind is dict else 'a list'}, "
                             f"got {type(value).__name__}")

    examples, misplaced, impossible_keys = [], [], False
    for a, article in enumerate(dataset["data"]):
        at = ["data", a]
        article = expect(article, dict, at)
        for p, paragraph in enumerate(expect(article.get("paragraphs", []), list, at + ["paragraphs"])):
            at_p = at + ["paragraphs", p]
            paragraph = expect(paragraph, dict, at_p)
            context = paragraph.get("context")
            for q, qa in enumerate(expect(paragraph.get("qas", []), list, at_p + ["qas"])):
                at_q = at_p + ["qas", q]
                qa = expect(qa, dict, at_q)
                qid = str(qa.get("id"))
                line = _take_line(id_lines, qid)
                if not isinstance(context, str) or "question" not in qa:
                    raise InputFileError(path, line, f"question {qid}: missing 'context' or 'question'")
                impossible = bool(qa.get("is_impossible", False))
                impossible_keys = impossible_keys or "is_impossible" in qa
                answers = []
                given = expect(qa.get("answers", []), list, at_q + ["answers"])
                gold_texts = [answer["text"] for answer in given
                              if isinstance(answer, dict) and isinstance(answer.get("text"), str)]
                for m, answer in enumerate([] if impossible else given):
                    answer = expect(answer, dict, at_q + ["answers", m])
                    text, start = answer.get("text"), answer.get("answer_start")
                    if not isinstance(text, str) or not isinstance(start, int):
                        raise InputFileError(path, line, f"question {qid}: an answer needs 'text' and an "
                                                         "integer 'answer_start'")
                    problem = None
                    if start < 0 or start + len(text) > len(context):
                        problem = (f"question {qid}: answer {text!r} at {start}...{start + len(text)} lies "
                                   f"outside its context ({len(context)} characters)")
                    elif context[start: start + len(text)] != text:
                        problem = (f"question {qid}: answer {text!r} is not at answer_start {start} "
                                   f"(context there: {context[start: start + len(text)]!r})")
                    if problem is not None and check_offsets:
                        raise InputFileError(path, line, problem)
                    if problem is not None:
                        misplaced.append(f"{path}:{line}: {problem}")
                    answers.append((text, start))
                if require_answers and not impossible and not answers:
                    raise InputFileError(path, line, f"question {qid} has no answers; mark it "
                                                     '"is_impossible": true (SQuAD 2.0) or add one')
                examples.append(SquadExample(qid, qa["question"], context, answers, impossible, line, gold_texts))
    if not examples:
        raise InputFileError(path, None, "no questions")
    version = squad_version_of(dataset.get("version"), impossible_keys, any(e.is_impossible for e in examples))
    for example in examples:
        example.squad_version = version
    if misplaced:
        shown = "; ".join(misplaced[:5]) + ("; ..." if len(misplaced) > 5 else "")
        logger.warning("%s: %d answers do not match their answer_start (kept: only their text is scored): %s",
                       path, len(misplaced), shown)
    return examples

