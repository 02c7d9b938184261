"""SQuAD scoring: exact match and F1 as the official ``evaluate-v1.1.py`` / ``evaluate-v2.0.py`` compute them.

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
import re
import string
from typing import Dict, Optional, Sequence

from spanbert_fast.tasks.squad_files import SquadExample


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

