"""SQuAD windows: one example → the model's ``[CLS] question [SEP] context-window [SEP]`` inputs.

Features: ``[CLS] question [SEP] context-window [SEP]`` with token types 0 / 1. The
question is cut to ``max_query_length`` tokens; the context is tokenised once and cut into
windows of ``max_length - len(question) - 3`` tokens whose starts are ``doc_stride`` tokens
apart (the original BERT meaning of doc stride: the step between windows). Each context
token remembers its character span in the context (the tokenizer's offsets), so an answer
is ``context[start_char:end_char]`` of its first and last token. A token is scored only in
the window where it has the most context on both sides (BERT's "max context" rule).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

from spanbert_fast.tasks.squad_files import SquadExample


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

