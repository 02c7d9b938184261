"""Token classification (NER): CoNLL reader, first-subword labelling, entity-level scoring.

Model: ``logits = classifier(dropout(h))`` for every token; loss = mean cross-entropy over
labelled tokens. A word's label sits on its **first** subword; its other subwords, ``[CLS]``,
``[SEP]`` and padding get ``-100`` (ignored). A word's prediction is its first subword's.

Data: CoNLL format -- one token per line, columns separated by spaces or tabs (only those:
other Unicode separators such as ``\\x1c``, ``\\x85``, ``\\xa0`` or ``\\u2028`` belong to the
token), the token first and its tag in the **last** column (CoNLL-2003's ``word POS chunk NER``
works as is); a blank line (or one of spaces and tabs) ends a sentence; ``-DOCSTART-`` lines are
skipped. Every token line of a file must have the same number of columns.

Scoring (:func:`entity_scores`): entities are read from BIO / IOB2 tags as conlleval does:
an entity starts at ``B-X``, or at ``I-X`` after ``O`` or after a tag of another type, and
continues over the following ``I-X``. Precision/recall/F1 count exactly matching
(type, start, end) entities, micro-averaged over all types, plus per type.

Checks (:class:`NerTask`): every tag of a training or evaluation file must be ``O``,
``B-TYPE`` or ``I-TYPE`` (IO tags like ``PER`` are an error naming the file and line). An
evaluation tag the model was not trained on is *not* an error -- gold tags are only used for
scoring, so its entities count as missed -- but it is logged (file, line, tag) before
training starts.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from spanbert_fast.config import SpanBertConfig
from spanbert_fast.model import SpanBertModel
from spanbert_fast.io import atomic_write
from spanbert_fast.tasks.batching import IGNORE_INDEX
from spanbert_fast.tasks.prediction import predict_batches, progress_bar, truncation
from spanbert_fast.tasks.task_model import SpanBertTaskModel, saved_labels
from spanbert_fast.tasks.text_files import InputFileError, read_utf8

logger = logging.getLogger(__name__)

OUTSIDE = "O"


# --------------------------------------------------------------------------- model
@dataclasses.dataclass
class TokenClassifierOutput:
    loss: Optional[torch.Tensor]  # mean CE over labelled tokens (None without labels)
    logits: torch.Tensor  # [B, L, num_labels]
    labels: Optional[torch.Tensor] = None  # [B, L], -100 = not scored

    def metrics(self) -> Dict[str, torch.Tensor]:
        """Accuracy over labelled tokens (a tensor, logged by the trainer)."""
        if self.labels is None:
            return {}
        scored = self.labels != IGNORE_INDEX
        correct = (self.logits.argmax(-1) == self.labels) & scored
        return {"token_acc": correct.sum() / scored.sum().clamp(min=1)}


class SpanBertForTokenClassification(SpanBertTaskModel):
    """SpanBERT encoder + a linear tag classifier on every token."""

    task = "token-classification"

    def __init__(self, config: SpanBertConfig, *, labels: Sequence[str] = (OUTSIDE,),
                 classifier_dropout: Optional[float] = None):
        super().__init__(config)
        if not labels or len(set(labels)) != len(labels):
            raise ValueError(f"labels must be distinct tag names, got {list(labels)}")
        self.labels = [str(x) for x in labels]
        self.classifier_dropout = config.hidden_dropout_prob if classifier_dropout is None else classifier_dropout
        self.bert = SpanBertModel(config)
        self.dropout = nn.Dropout(self.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, len(self.labels))
        self.init_weights()

    def head_settings(self) -> dict:
        return {"labels": list(self.labels), "classifier_dropout": self.classifier_dropout}

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, **unused):
        """``labels`` [B, L] int64 with -100 where not scored -> :class:`TokenClassifierOutput`."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        logits = self.classifier(self.dropout(hidden))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
        return TokenClassifierOutput(loss, logits, labels)


# --------------------------------------------------------------------------- CoNLL data
_COLUMN_SEPARATOR = re.compile(r"[ \t]+")


def conll_columns(line: str) -> List[str]:
    """The columns of one CoNLL line, split on runs of spaces and tabs only (``[]`` when blank).

    Not ``str.split()``: that also splits on ``\\x1c``-``\\x1f``, ``\\x85``, ``\\xa0``, ``\\u2028`` ...,
    which may be part of a token.
    """
    stripped = line.rstrip("\r\n").strip(" \t")
    return _COLUMN_SEPARATOR.split(stripped) if stripped else []


@dataclasses.dataclass
class ConllSentence:
    words: List[str]
    tags: List[str]
    lines: List[int]  # 1-based line of each token in its file


def read_conll(path: str) -> List[ConllSentence]:
    """Sentences of a CoNLL file (see the module docstring for the format)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found")
    sentences: List[ConllSentence] = []
    current = ConllSentence([], [], [])
    columns: Optional[Tuple[int, int]] = None  # (count, line where it was set)
    for number, line in enumerate(io.StringIO(read_utf8(path), newline=None), start=1):
        fields = conll_columns(line)
        if not fields:
            if current.words:
                sentences.append(current)
            current = ConllSentence([], [], [])
            continue
        if fields[0] == "-DOCSTART-":
            continue
        if columns is None:
            if len(fields) < 2:
                raise InputFileError(path, number, "a token line needs at least two columns: token ... tag")
            columns = (len(fields), number)
        elif len(fields) != columns[0]:
            raise InputFileError(path, number, f"{len(fields)} columns, but line {columns[1]} has {columns[0]}; "
                                               "every token line needs the same columns (token first, tag last)")
        current.words.append(fields[0])
        current.tags.append(fields[-1])
        current.lines.append(number)
    if current.words:
        sentences.append(current)
    if not sentences:
        raise InputFileError(path, None, "no sentences")
    return sentences


def _bio_parts(tag: str) -> Optional[Tuple[str, Optional[str]]]:
    """``(prefix, type)`` of a BIO / IOB2 tag (``("O", None)`` for ``O``); None when not BIO."""
    if tag == OUTSIDE:
        return OUTSIDE, None
    if len(tag) > 2 and tag[1] == "-" and tag[0] in "BI":
        return tag[0], tag[2:]
    return None


def check_bio(sentences: Sequence[ConllSentence], path: str) -> None:
    """Raise :class:`InputFileError` at the first tag that is not ``O``, ``B-TYPE`` or ``I-TYPE``."""
    for sentence in sentences:
        for tag, line in zip(sentence.tags, sentence.lines):
            if _bio_parts(tag) is None:
                raise InputFileError(path, line, f"tag {tag!r} is not BIO/IOB2 (O, B-TYPE or I-TYPE); "
                                                 "convert IO or BIOES tags first")


def encode_sentence(sentence: ConllSentence, tokenizer, max_length: int, label2id: Optional[Dict[str, int]],
                    path: str) -> dict:
    """``[CLS] subwords [SEP]`` ids with the tag id on each word's first subword (else -100).

    ``first_subword[w]`` is the position of word ``w``'s first subword (for reading predictions
    back). With ``label2id=None`` (prediction) the tags are not looked at and ``token_labels``
    is left out.
    """
    for tag, line in zip(sentence.tags, sentence.lines) if label2id is not None else ():
        if tag not in label2id:
            raise InputFileError(path, line, f"tag {tag!r} is not one of the model's labels {sorted(label2id)}")
    with truncation(tokenizer, max_length):
        encoding = tokenizer.encode(sentence.words, is_pretokenized=True)
    token_labels, first_subword, previous = [], {}, None
    for position, word in enumerate(encoding.word_ids):
        if word is not None and word != previous:
            token_labels.append(label2id[sentence.tags[word]] if label2id is not None else IGNORE_INDEX)
            first_subword[word] = position
        else:
            token_labels.append(IGNORE_INDEX)
        previous = word
    feature = {"input_ids": encoding.ids, "first_subword": first_subword, "n_words": len(sentence.words)}
    if label2id is not None:
        feature["token_labels"] = token_labels
    return feature


# --------------------------------------------------------------------------- entity scoring
def entity_spans(tags: Sequence[str]) -> Set[Tuple[str, int, int]]:
    """Entities ``(type, first word, last word)`` in a BIO / IOB2 tag sequence (conlleval rules)."""
    spans, start, kind = set(), None, None
    for index, tag in enumerate(list(tags) + [OUTSIDE]):
        parts = _bio_parts(tag)
        if parts is None:
            raise ValueError(f"tag {tag!r} at position {index} is not BIO/IOB2 (O, B-TYPE or I-TYPE)")
        prefix, tag_type = parts
        continues = prefix == "I" and tag_type == kind
        if start is not None and not continues:
            spans.add((kind, start, index - 1))
            start, kind = None, None
        if prefix != OUTSIDE and not continues:
            start, kind = index, tag_type
    return spans


def _prf(correct: int, predicted: int, gold: int) -> Dict[str, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """Entity-level micro precision/recall/F1 over sentences, and the same per entity type."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted")
    counts: Dict[str, List[int]] = {}  # type -> [correct, predicted, gold]
    for number, (gold_tags, pred_tags) in enumerate(zip(gold, predicted)):
        if len(gold_tags) != len(pred_tags):
            raise ValueError(f"sentence {number}: {len(gold_tags)} gold tags but {len(pred_tags)} predicted")
        gold_spans, pred_spans = entity_spans(gold_tags), entity_spans(pred_tags)
        for span in gold_spans | pred_spans:
            row = counts.setdefault(span[0], [0, 0, 0])
            row[0] += span in gold_spans and span in pred_spans
            row[1] += span in pred_spans
            row[2] += span in gold_spans
    totals = [sum(row[i] for row in counts.values()) for i in range(3)]
    result = _prf(*totals)
    result.update(correct=totals[0], predicted=totals[1], gold=totals[2])
    result["per_type"] = {kind: {**_prf(*row), "support": row[2]} for kind, row in sorted(counts.items())}
    return result


# --------------------------------------------------------------------------- fine-tuning task
class NerTask:
    """What :func:`spanbert_fast.tasks.finetune.finetune` needs for token classification."""

    name = "ner"

    def __init__(self, max_length: int = 256):
        self.max_length = max_length

    def read(self, path: str) -> List[ConllSentence]:
        """Sentences of ``path``; every tag must be BIO / IOB2 (an error naming file and line)."""
        sentences = read_conll(path)
        check_bio(sentences, path)
        return sentences

    def read_eval(self, path: str, model) -> List[ConllSentence]:
        """Sentences of ``path``; tags the model lacks are logged (their entities count as missed)."""
        sentences = self.read(path)
        unknown: Dict[str, int] = {}
        for sentence in sentences:
            for tag, line in zip(sentence.tags, sentence.lines):
                if tag not in model.label2id:
                    unknown.setdefault(tag, line)
        if unknown:
            where = ", ".join(f"{tag!r} (line {line})" for tag, line in unknown.items())
            logger.warning("%s: tags the model was not trained on: %s; it cannot predict them, so their "
                           "entities count as missed", path, where)
        return sentences

    def build_model(self, init: str, sentences: List[ConllSentence], backend: str):
        tags = {tag for s in sentences for tag in s.tags}
        labels = (saved_labels(init, SpanBertForTokenClassification.task, tags)
                  or [OUTSIDE] * (OUTSIDE in tags) + sorted(tags - {OUTSIDE}))
        return SpanBertForTokenClassification.from_pretrained(init, backend=backend, labels=labels)

    def features(self, sentences, tokenizer, model, path: str) -> List[dict]:
        features = [encode_sentence(s, tokenizer, self.max_length, model.label2id, path) for s in sentences]
        cut = sum(len(f["first_subword"]) < f["n_words"] for f in features)
        if cut:
            logger.warning("%s: %d sentences are longer than %d tokens; their last words are not seen",
                           path, cut, self.max_length)
        return [{"input_ids": f["input_ids"], "token_labels": f["token_labels"]} for f in features]

    def predict(self, model, tokenizer, sentences: List[ConllSentence], path: str,
                batch_size: int = 64, progress: bool = False) -> List[List[str]]:
        """Predicted tag of every word (``O`` for words cut by ``max_length``); ``progress``: a
        bar over the sentences."""
        from spanbert_fast.data.tokenizer import special_ids

        encoded = [encode_sentence(s, tokenizer, self.max_length, None, path) for s in sentences]
        inputs = [{"input_ids": f["input_ids"]} for f in encoded]
        predictions = []
        with progress_bar(len(inputs), "sentence", progress) as bar:
            for chunk, output in predict_batches(model, inputs, special_ids(tokenizer).pad, batch_size):
                for best in output.logits.argmax(-1).tolist():
                    feature = encoded[len(predictions)]
                    tags = [OUTSIDE] * feature["n_words"]
                    for word, position in feature["first_subword"].items():
                        tags[word] = model.labels[best[position]]
                    predictions.append(tags)
                bar.update(len(chunk))
        return predictions

    def evaluate(self, model, tokenizer, path: str, out_dir: Optional[str], batch_size: int = 64,
                 examples: Optional[List[ConllSentence]] = None, progress: bool = False) -> dict:
        """Entity P/R/F1 on ``path``; writes ``predictions.conll`` (word gold predicted) into
        ``out_dir`` (``progress``: a bar while predicting)."""
        sentences = self.read_eval(path, model) if examples is None else examples
        predicted = self.predict(model, tokenizer, sentences, path, batch_size, progress)
        scores = entity_scores([s.tags for s in sentences], predicted)
        if out_dir is not None:
            with atomic_write(os.path.join(out_dir, "predictions.conll")) as f:
                for sentence, tags in zip(sentences, predicted):
                    f.writelines(f"{w} {g} {p}\n" for w, g, p in zip(sentence.words, sentence.tags, tags))
                    f.write("\n")
        return scores
