"""Using a SpanBERT model: fill-mask, embeddings, fine-tuning heads, and patching HF BERT.

=========================================  ==============================================================
``fill_mask(model, tokenizer, text)``      top-k MLM predictions for each ``[MASK]`` (:mod:`.fill_mask`)
``embed(model, tokenizer, texts)``         [CLS] / mean / per-token vectors of a layer or layer range
                                           (:mod:`.embeddings`; ``.npy`` or ragged ``.npz`` files)
``SpanBertForSequenceClassification``      [CLS]- or mean-pooled classifier, CSV/JSONL data
                                           (:mod:`.classification`)
``SpanBertForTokenClassification``         per-token tagger, CoNLL data, entity P/R/F1 (:mod:`.ner`)
``SpanBertForQuestionAnswering``           start/end logits, SQuAD v1.1/v2.0, EM/F1 (:mod:`.qa`)
``SpanBertForRelationExtraction``          entity-masked TACRED JSON/JSONL, official micro P/R/F1
                                           (:mod:`.relation`)
``finetune(task, ...)``                    the one fine-tuning driver over ``spanbert_fast.train.Trainer``
                                           (:mod:`.finetune`)
``patch_hf_bert(model)``                   run a transformers BERT on our ops, in place (:mod:`.patch_hf`)
=========================================  ==============================================================

What the tasks share, one concept per module: :mod:`.task_model` (``SpanBertTaskModel``, the base
of the task models, and ``task.json``), :mod:`.batching` (padding, ``collate_features``,
resumable ``EpochBatches``), :mod:`.prediction` (tokenizer lookup, truncation, batched inference)
and :mod:`.text_files` (UTF-8 reading, ``path:line:`` errors).

Every task model has ``from_pretrained`` (an encoder or pre-training checkpoint gets a fresh head,
listed in ``model.load_report.missing``) and ``save_pretrained`` (HF layout + ``task.json`` with
the head settings and ``id2label``), and returns outputs with ``.loss`` and ``.metrics()``.
"""
from spanbert_fast.tasks.classification import ClassificationTask, SpanBertForSequenceClassification
from spanbert_fast.tasks.embeddings import embed, load_ragged, save_embeddings
from spanbert_fast.tasks.fill_mask import fill_mask
from spanbert_fast.tasks.finetune import finetune
from spanbert_fast.tasks.ner import NerTask, SpanBertForTokenClassification, entity_scores
from spanbert_fast.tasks.patch_hf import patch_hf_bert
from spanbert_fast.tasks.qa import QuestionAnsweringTask, SpanBertForQuestionAnswering, squad_metrics
from spanbert_fast.tasks.relation import RelationExtractionTask, SpanBertForRelationExtraction, tacred_scores

__all__ = [
    "fill_mask",
    "embed",
    "save_embeddings",
    "load_ragged",
    "SpanBertForSequenceClassification",
    "SpanBertForTokenClassification",
    "SpanBertForQuestionAnswering",
    "SpanBertForRelationExtraction",
    "ClassificationTask",
    "NerTask",
    "QuestionAnsweringTask",
    "RelationExtractionTask",
    "finetune",
    "entity_scores",
    "squad_metrics",
    "tacred_scores",
    "patch_hf_bert",
]
