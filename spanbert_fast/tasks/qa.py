"""Extractive question answering (SQuAD v1.1 and v2.0): the model and the fine-tuning task.

Model: ``start_logits, end_logits = split(h W + b)`` over every token (``qa_outputs``,
``d -> 2``); padding gets ``-inf``-like logits; loss = mean of the start and end
cross-entropies. A window without the answer (and every window of an impossible v2
question) points both at ``[CLS]`` (position 0).

The task's parts, each in its own module: :mod:`.squad_files` (reading SQuAD JSON into
:class:`SquadExample`), :mod:`.squad_windows` (question + context windows, BERT's max-context
rule), :mod:`.squad_decoding` (n-best spans, whole-word answer text, the v2.0 null answer) and
:mod:`.squad_scoring` (the official scripts' EM/F1). Their public names are re-exported here.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from spanbert_fast.config import SpanBertConfig
from spanbert_fast.io import write_json
from spanbert_fast.model import SpanBertModel
from spanbert_fast.tasks.prediction import progress_bar
from spanbert_fast.tasks.squad_decoding import ScoredWindow, decode_answers, decode_examples, score_windows
from spanbert_fast.tasks.squad_files import SquadExample, read_squad, squad_version_of
from spanbert_fast.tasks.squad_scoring import exact_match_score, f1_score, normalize_answer, squad_metrics
from spanbert_fast.tasks.squad_windows import (
    ContextTokens,
    answer_token_span,
    make_features,
    max_context_flags,
    tokenize_context,
    window_starts,
)
from spanbert_fast.tasks.task_model import SpanBertTaskModel

__all__ = [  # this module's own names, then those re-exported from the squad_* modules
    "QuestionAnsweringOutput", "QuestionAnsweringTask", "SpanBertForQuestionAnswering",
    "ContextTokens", "ScoredWindow", "SquadExample", "answer_token_span", "decode_answers", "decode_examples",
    "exact_match_score", "f1_score", "make_features", "max_context_flags", "normalize_answer", "read_squad",
    "score_windows", "squad_metrics", "squad_version_of", "tokenize_context", "window_starts",
]


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
