"""TACRED's official scorer: micro precision, recall and F1 over the relations that are not ``no_relation``.

Score (:func:`tacred_scores`, TACRED's published scorer): over the examples whose gold or
predicted relation is not ``no_relation``, ``correct`` = predicted relation equals the gold
one, ``predicted`` = examples predicted as a relation, ``gold`` = examples with a gold relation;
precision = correct / predicted (100 when nothing is predicted, as the scorer does), recall =
correct / gold (0 without gold relations), F1 their harmonic mean, all in percent. Predicting
``no_relation`` for a gold relation only lowers recall; a wrong relation lowers both.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

NO_RELATION = "no_relation"


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
