"""SQuAD answer decoding: window logits → n-best spans → the answer text of each question.

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
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Iterable, Iterator, List, Sequence, Tuple

from spanbert_fast.tasks.prediction import predict_batches
from spanbert_fast.tasks.squad_files import SquadExample
from spanbert_fast.tasks.squad_windows import ContextTokens


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

