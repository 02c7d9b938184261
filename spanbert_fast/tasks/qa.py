"""Extractive question answering (SQuAD v1.1 and v2.0): windows, n-best decoding, EM/F1.

Model: ``start_logits, end_logits = split(h W + b)`` over every token (``qa_outputs``,
``d -> 2``); padding gets ``-inf``-like logits; loss = mean of the start and end
cross-entropies. A window without the answer (and every window of an impossible v2
question) points both at ``[CLS]`` (position 0).

Features: ``[CLS] question [SEP] context-window [SEP]`` with token types 0 / 1. The
question is cut to ``max_query_length`` tokens; the context is tokenised once and cut into
windows of ``max_length - len(question) - 3`` tokens whose starts are ``doc_stride`` tokens
apart (the original BERT meaning of doc stride: the step between windows). Each context
token remembers its character span in the context (the tokenizer's offsets), so an answer
is ``context[start_char:end_char]`` of its first and last token. A token is scored only in
the window where it has the most context on both sides (BERT's "max context" rule).

Decoding: per example, over all its windows, the ``n_best`` best start and end positions
are paired into spans inside the context with ``start <= end`` and at most
``max_answer_length`` tokens, scored ``start_logit + end_logit``. The answer text is the
original context (its casing, accents and spacing, as BERT's and SpanBERT's ``get_final_text``
return it) from the start of the first token's word to the end of the last token's word, words
as the tokenizer pre-tokenizes them: a span ending at ``G`` of ``G ##erman ##y`` answers
``Germany``, never ``G``; spans widening to the same text count once. v1.1 answers with the best
span. v2.0 also scores the null answer, ``min`` over windows of ``start[0] + end[0]``, and
answers ``""`` when ``null_score - best_span_score > null_threshold``. Prediction streams:
windows are made, scored and decoded example by example (an example's windows are
consecutive), so only one example's logits are held, whatever the size of the file.

Evaluation (:func:`squad_metrics`): the official script of the file's SQuAD version (v1.1
for a file without ``is_impossible`` or with ``"version": "1.1"``) -- answers are normalised
(lower case, punctuation removed, articles a/an/the removed, whitespace collapsed); EM and
token-overlap F1 take the maximum over the gold answers. They differ on golds that normalise
to ``""``: v1.1 keeps them (F1 0 there), v2.0 drops them and scores an impossible question's
only gold ``""`` 1 for an empty prediction. Scores are percentages; v2.0 also reports the
``HasAns_*`` and ``NoAns_*`` subsets.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import logging
import os
import re
import string
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from spanbert_fast.config import SpanBertConfig
from spanbert_fast.model import SpanBertModel
from spanbert_fast.io import write_json
from spanbert_fast.tasks.prediction import predict_batches, progress_bar
from spanbert_fast.tasks.task_model import SpanBertTaskModel
from spanbert_fast.tasks.text_files import InputFileError, line_of, read_utf8

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- model
@dataclasses.dataclass
class QuestionAnsweringOutput:
    loss: Optional[torch.Tensor]  # (CE(start) + CE(end)) / 2, None without positions
    start_logits: torch.Tensor  # [B, L] fp32, padding very negative
    end_logits: torch.Tensor  # [B, L]
    start_positions: Optional[torch.Tensor] = None  # [B]
    end_positions: Optional[torch.Tensor] = None  # [B]

    def metrics(self) -> Dict[str, torch.Tensor]:
        """Accuracy of the start and of the end position (tensors, logged by the trainer)."""
        if self.start_positions is None:
            return {}
        return {
            "start_acc": (self.start_logits.argmax(-1) == self.start_positions).float().mean(),
            "end_acc": (self.end_logits.argmax(-1) == self.end_positions).float().mean(),
        }


class SpanBertForQuestionAnswering(SpanBertTaskModel):
    """SpanBERT encoder + start/end logits for extractive QA."""

    task = "question-answering"

    def __init__(self, config: SpanBertConfig):
        super().__init__(config)
        self.bert = SpanBertModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.init_weights()

    def head_settings(self) -> dict:
        return {}

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, start_positions=None,
                end_positions=None, **unused):
        """``start_positions`` / ``end_positions`` [B] token indices (0 = no answer here)."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        logits = self.qa_outputs(hidden).float()  # [B, L, 2]
        if attention_mask is not None:
            logits = logits.masked_fill(~attention_mask.bool()[..., None], -1e9)
        start_logits, end_logits = logits.unbind(-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = (F.cross_entropy(start_logits, start_positions) + F.cross_entropy(end_logits, end_positions)) / 2
        return QuestionAnsweringOutput(loss, start_logits, end_logits, start_positions, end_positions)


# --------------------------------------------------------------------------- SQuAD files
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


# --------------------------------------------------------------------------- windows
@dataclasses.dataclass
class ContextTokens:
    ids: List[int]
    offsets: List[Tuple[int, int]]  # character span of each token in the context
    # The tokenizer's word of each token (``Encoding.word_ids``); None when its words are unknown.
    word_ids: Optional[List[Optional[int]]] = None

    def answer_chars(self, first: int, last: int) -> Tuple[int, int]:
        """Characters ``[start, end)`` of tokens ``first..last`` widened to whole words: from the
        first token of ``first``'s word to the last token of ``last``'s word (a span never stops
        inside a word, e.g. at ``G`` of ``G ##erman ##y``). Words are the tokenizer's own
        pre-tokenization (BERT: split at spaces and punctuation, so ``Smith's`` is three words)."""
        words = self.word_ids
        if words is not None and words[first] is not None:
            while first > 0 and words[first - 1] == words[first]:
                first -= 1
        if words is not None and words[last] is not None:
            while last + 1 < len(words) and words[last + 1] == words[last]:
                last += 1
        return self.offsets[first][0], self.offsets[last][1]


def tokenize_context(tokenizer, context: str) -> ContextTokens:
    from spanbert_fast.data.tokenizer import word_boundaries_known

    encoding = tokenizer.encode(context, add_special_tokens=False)
    words = list(encoding.word_ids) if word_boundaries_known(tokenizer) else None
    return ContextTokens(list(encoding.ids), [tuple(o) for o in encoding.offsets], words)


def answer_token_span(context: ContextTokens, start_char: int, end_char: int) -> Optional[Tuple[int, int]]:
    """First and last context token overlapping the characters ``[start_char, end_char)``."""
    tokens = [i for i, (s, e) in enumerate(context.offsets) if s < end_char and e > start_char]
    return (tokens[0], tokens[-1]) if tokens else None


def window_starts(n_tokens: int, window: int, stride: int) -> List[int]:
    """Starts of windows of ``window`` tokens, ``stride`` apart, the last one reaching the end."""
    if stride < 1 or window < 1:
        raise ValueError(f"windows need a stride and a size of at least 1 token, got stride {stride}, "
                         f"window {window}")
    starts, start = [], 0
    while True:
        starts.append(start)
        if start + window >= n_tokens:
            return starts
        start += stride


def max_context_flags(starts: Sequence[int], window: int, n_tokens: int) -> List[List[bool]]:
    """``flags[w][i]``: window ``w`` is the one where its ``i``-th token has the most context."""
    best: Dict[int, Tuple[float, int]] = {}
    for w, start in enumerate(starts):
        length = min(window, n_tokens - start)
        for i in range(length):
            score = min(i, length - 1 - i) + 0.01 * length
            token = start + i
            if token not in best or score > best[token][0]:
                best[token] = (score, w)
    return [[best[start + i][1] == w for i in range(min(window, n_tokens - start))] for w, start in enumerate(starts)]


def make_features(example: SquadExample, tokenizer, max_length: int, doc_stride: int,
                  max_query_length: int, context: Optional[ContextTokens] = None) -> List[dict]:
    """The windows of one example, each with its training target and decoding metadata.

    Feature keys: ``input_ids``, ``token_type_ids``, ``start_positions``, ``end_positions``
    (model inputs) and ``context_start`` (position of the first context token), ``token_start``
    (index of that token in the whole context), ``max_context`` (flags per window token).
    """
    from spanbert_fast.data.tokenizer import special_ids

    ids = special_ids(tokenizer)
    question = tokenizer.encode(example.question, add_special_tokens=False).ids[:max_query_length]
    context = context or tokenize_context(tokenizer, example.context)
    window = max_length - len(question) - 3
    if window <= 0:
        raise ValueError(f"max_length {max_length} leaves no room for the context after a "
                         f"{len(question)}-token question; raise max_length or lower max_query_length")
    starts = window_starts(len(context.ids), window, min(doc_stride, window))
    flags = max_context_flags(starts, window, len(context.ids))
    target = None
    if example.answers:
        text, start_char = example.answers[0]
        target = answer_token_span(context, start_char, start_char + len(text))
    features = []
    context_start = len(question) + 2
    for start, max_context in zip(starts, flags):
        piece = context.ids[start: start + window]
        start_position = end_position = 0
        if target is not None and start <= target[0] and target[1] < start + len(piece):
            start_position, end_position = target[0] - start + context_start, target[1] - start + context_start
        features.append({
            "input_ids": [ids.cls] + question + [ids.sep] + piece + [ids.sep],
            "token_type_ids": [0] * context_start + [1] * (len(piece) + 1),
            "start_positions": start_position, "end_positions": end_position,
            "context_start": context_start, "token_start": start, "max_context": max_context,
        })
    return features


# --------------------------------------------------------------------------- decoding
def decode_answers(example: SquadExample, context: ContextTokens, features: Sequence[dict],
                   start_logits: Sequence[Sequence[float]], end_logits: Sequence[Sequence[float]], *,
                   n_best: int = 20, max_answer_length: int = 30, version_2: bool = False,
                   null_threshold: float = 0.0) -> Tuple[str, List[dict], float]:
    """(answer text, n-best list of ``{text, score, start, end}``, null-score difference).

    ``start_logits[w]`` / ``end_logits[w]`` are the logits of window ``features[w]`` (its
    real tokens). The null-score difference is ``null_score - best_span_score``
    (``+inf``-like when no span is valid); v2.0 answers ``""`` when it exceeds ``null_threshold``.
    """
    candidates, null_score = [], float("inf")
    for feature, starts, ends in zip(features, start_logits, end_logits):
        null_score = min(null_score, starts[0] + ends[0])
        first, count = feature["context_start"], len(feature["max_context"])
        best_starts = sorted(range(first, first + count), key=lambda i: -starts[i])[:n_best]
        best_ends = sorted(range(first, first + count), key=lambda i: -ends[i])[:n_best]
        for s in best_starts:
            if not feature["max_context"][s - first]:
                continue
            for e in best_ends:
                if e < s or e - s + 1 > max_answer_length:
                    continue
                token_s, token_e = feature["token_start"] + s - first, feature["token_start"] + e - first
                char_s, char_e = context.answer_chars(token_s, token_e)
                candidates.append({"text": example.context[char_s:char_e], "score": starts[s] + ends[e],
                                   "start": char_s, "end": char_e})
    candidates.sort(key=lambda c: -c["score"])
    nbest, seen = [], set()
    for candidate in candidates:  # the same span from two windows counts once
        if (candidate["start"], candidate["end"]) not in seen:
            seen.add((candidate["start"], candidate["end"]))
            nbest.append(candidate)
        if len(nbest) == n_best:
            break
    best_score = nbest[0]["score"] if nbest else -1e30
    null_diff = null_score - best_score
    if version_2:
        nbest.append({"text": "", "score": null_score, "start": -1, "end": -1})
        nbest.sort(key=lambda c: -c["score"])
        answer = "" if (not candidates or null_diff > null_threshold) else candidates[0]["text"]
    else:
        answer = candidates[0]["text"] if candidates else ""
    return answer, nbest, null_diff


@dataclasses.dataclass
class ScoredWindow:
    """One window after the model: its decoding metadata and the logits of its real tokens."""

    example: int  # index of its example in the list being predicted
    context: ContextTokens  # its example's context tokens
    feature: dict  # the window from make_features (context_start, token_start, max_context)
    start_logits: List[float]
    end_logits: List[float]


def score_windows(model, windows: Iterable[dict], pad_id: int, batch_size: int) -> Iterator[ScoredWindow]:
    """Run ``model`` over ``windows`` (:meth:`QuestionAnsweringTask.prediction_windows`), lazily:
    one batch of windows is made and scored at a time, its windows yielded in order."""
    for chunk, output in predict_batches(model, windows, pad_id, batch_size):
        starts, ends = output.start_logits.tolist(), output.end_logits.tolist()  # one copy per batch
        for row, item in enumerate(chunk):
            example, context, feature = item["window"]
            length = len(item["input_ids"])
            yield ScoredWindow(example, context, feature, starts[row][:length], ends[row][:length])


def decode_examples(examples: Sequence[SquadExample], scored_windows: Iterable[ScoredWindow],
                    **decoding) -> Iterator[Tuple[int, str, List[dict], float]]:
    """``(example index, answer, n-best, null-score difference)`` of each example, decoded
    (:func:`decode_answers` with ``decoding``) as soon as its last window has been scored.

    ``scored_windows`` come example by example, in example order (an example's windows
    consecutive); only the current example's windows are held -- the next example's first
    window is what closes it.
    """
    previous = -1
    for index, windows in itertools.groupby(scored_windows, key=lambda window: window.example):
        if index <= previous:
            raise ValueError(f"the windows of example {index} come after those of example {previous}; "
                             "windows must come example by example, in order")
        previous = index
        windows = list(windows)
        yield (index, *decode_answers(examples[index], windows[0].context, [w.feature for w in windows],
                                      [w.start_logits for w in windows], [w.end_logits for w in windows],
                                      **decoding))


# --------------------------------------------------------------------------- official metrics
def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace (SQuAD rules)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str, squad_version: str = "2.0") -> float:
    """Token-overlap F1 of the normalised answers. v2.0: when either is empty, 1 only if both
    are; v1.1: no common token is 0, so two empty answers score 0 too."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if squad_version == "2.0" and (not pred_tokens or not gold_tokens):
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _rules_of(examples: Sequence[SquadExample], squad_version: Optional[str]) -> str:
    if squad_version is not None:
        if squad_version not in ("1.1", "2.0"):
            raise ValueError(f'squad_version must be "1.1" or "2.0", got {squad_version!r}')
        return squad_version
    versions = {example.squad_version for example in examples} - {None}
    if versions:
        return "2.0" if "2.0" in versions else "1.1"
    return "2.0" if any(example.is_impossible for example in examples) else "1.1"


def squad_metrics(examples: Sequence[SquadExample], predictions: Dict[str, str],
                  squad_version: Optional[str] = None) -> dict:
    """EM and F1 (percentages) of ``predictions`` {qid: text}, as the official SQuAD script of
    ``squad_version`` computes them; a missing prediction scores 0.

    ``squad_version`` None: the examples' own (:func:`squad_version_of`, set by :func:`read_squad`),
    else v2.0 when a question is impossible. Both take the maximum over the gold answer texts the
    file lists (:meth:`SquadExample.scored_answers`, even for an ``is_impossible`` question):

    * v1.1 (``evaluate-v1.1.py``): every gold is kept, also one that normalises to ``""`` (then
      any prediction normalising to ``""`` is an exact match, and F1 is 0: no common token).
      A question without gold answers (the official script fails there) scores 0.
    * v2.0 (``evaluate-v2.0.py``): golds normalising to ``""`` are dropped; without any left the
      only gold is ``""``; F1 with an empty side is 1 only when both are empty. The
      ``HasAns_*`` / ``NoAns_*`` subsets split on whether the file lists answers.
    """
    rules = _rules_of(examples, squad_version)
    rows = []
    for example in examples:
        listed = example.scored_answers()
        golds = listed if rules == "1.1" else [text for text in listed if normalize_answer(text)] or [""]
        if example.qid not in predictions or not golds:
            rows.append((example, 0.0, 0.0, bool(listed)))
            continue
        prediction = predictions[example.qid]
        rows.append((example, max(exact_match_score(prediction, g) for g in golds),
                     max(f1_score(prediction, g, rules) for g in golds), bool(listed)))

    def summary(subset, prefix=""):
        n = len(subset)
        return {f"{prefix}exact": 100.0 * sum(r[1] for r in subset) / n if n else 0.0,
                f"{prefix}f1": 100.0 * sum(r[2] for r in subset) / n if n else 0.0,
                f"{prefix}total": n}

    metrics = summary(rows)
    if rules == "2.0":
        for prefix, subset in (("HasAns_", [r for r in rows if r[3]]), ("NoAns_", [r for r in rows if not r[3]])):
            if subset:  # as the official script: each subset reported when it has questions
                metrics.update(summary(subset, prefix))
    metrics["squad_version"] = rules
    return metrics


# --------------------------------------------------------------------------- fine-tuning task
class QuestionAnsweringTask:
    """What :func:`spanbert_fast.tasks.finetune.finetune` needs for SQuAD-style QA."""

    name = "qa"

    def __init__(self, max_length: int = 384, doc_stride: int = 128, max_query_length: int = 64,
                 max_answer_length: int = 30, n_best: int = 20, null_threshold: float = 0.0,
                 version_2: Optional[bool] = None):
        for option, value in (("doc_stride", doc_stride), ("max_query_length", max_query_length),
                              ("max_answer_length", max_answer_length), ("n_best", n_best)):
            if not isinstance(value, int) or value < 1:
                flag = "--" + option.replace("_", "-")
                raise ValueError(f"{option} ({flag}) must be an integer >= 1, got {value!r}")
        self.max_length, self.doc_stride, self.max_query_length = max_length, doc_stride, max_query_length
        self.max_answer_length, self.n_best, self.null_threshold = max_answer_length, n_best, null_threshold
        self.version_2 = version_2  # None: v2.0 when the data has impossible questions

    def read(self, path: str) -> List[SquadExample]:
        return read_squad(path)

    def build_model(self, init: str, examples: List[SquadExample], backend: str):
        if self.version_2 is None and any(e.is_impossible for e in examples):
            self.version_2 = True
        return SpanBertForQuestionAnswering.from_pretrained(init, backend=backend)

    def features(self, examples, tokenizer, model, path: str) -> List[dict]:
        keys = ("input_ids", "token_type_ids", "start_positions", "end_positions")
        return [{k: f[k] for k in keys} for e in examples for f in self._windows(e, tokenizer)]

    def _windows(self, example: SquadExample, tokenizer, context: Optional[ContextTokens] = None) -> List[dict]:
        return make_features(example, tokenizer, self.max_length, self.doc_stride, self.max_query_length, context)

    def prediction_windows(self, examples: Sequence[SquadExample], tokenizer) -> Iterator[dict]:
        """Model inputs of every window, example by example, made lazily; ``"window"`` holds
        ``(example index, context tokens, window)`` for decoding (see :func:`score_windows`)."""
        for index, example in enumerate(examples):
            context = tokenize_context(tokenizer, example.context)
            for feature in self._windows(example, tokenizer, context):
                yield {"input_ids": feature["input_ids"], "token_type_ids": feature["token_type_ids"],
                       "window": (index, context, feature)}

    def predict(self, model, tokenizer, examples: List[SquadExample], version_2: bool, batch_size: int = 64,
                progress: bool = False) -> Tuple[Dict[str, str], Dict[str, List[dict]], Dict[str, float]]:
        """(predictions {qid: text}, n-best lists, null-score differences) for ``examples``.

        One pass: windows are made, scored and decoded example by example
        (:func:`score_windows`, :func:`decode_examples`), so the logits held at any time are one
        batch's and one example's. ``progress``: a bar over the questions decoded.
        """
        from spanbert_fast.data.tokenizer import special_ids

        windows = self.prediction_windows(examples, tokenizer)
        scored = score_windows(model, windows, special_ids(tokenizer).pad, batch_size)
        decoded = decode_examples(examples, scored, n_best=self.n_best, max_answer_length=self.max_answer_length,
                                  version_2=version_2, null_threshold=self.null_threshold)
        predictions, nbest, null_diffs = {}, {}, {}
        with progress_bar(len(examples), "question", progress) as bar:
            for index, answer, candidates, null_diff in decoded:
                qid = examples[index].qid
                predictions[qid], nbest[qid], null_diffs[qid] = answer, candidates, null_diff
                bar.update(1)
        return predictions, nbest, null_diffs

    def read_eval(self, path: str, model=None) -> List[SquadExample]:
        """The questions of ``path`` (answers optional: unanswered ones score 0; answer offsets
        that do not match are warnings, since only the answer text is scored)."""
        return read_squad(path, require_answers=False, check_offsets=False)

    def evaluate(self, model, tokenizer, path: str, out_dir: Optional[str], batch_size: int = 64,
                 examples: Optional[List[SquadExample]] = None, progress: bool = False) -> dict:
        """EM/F1 on ``path``; writes ``predictions.json``, ``nbest_predictions.json`` (and v2.0
        ``null_odds.json``) into ``out_dir`` (``progress``: a bar while predicting)."""
        examples = self.read_eval(path, model) if examples is None else examples
        version_2 = bool(self.version_2) or any(e.is_impossible for e in examples)
        predictions, nbest, null_diffs = self.predict(model, tokenizer, examples, version_2, batch_size, progress)
        metrics = squad_metrics(examples, predictions)
        if out_dir is not None:
            write_json(os.path.join(out_dir, "predictions.json"), predictions)
            write_json(os.path.join(out_dir, "nbest_predictions.json"), nbest)
            if version_2:
                write_json(os.path.join(out_dir, "null_odds.json"), null_diffs)
        return metrics
