"""Using a SpanBERT model: fill-mask, embeddings, and fine-tuning heads.

==============================  ==========================================================
``fill_mask``                   top-k MLM predictions for each ``[MASK]`` (:mod:`.fill_mask`)
``embed``                       [CLS]/mean/per-token embeddings of any layer range (:mod:`.embeddings`)
==============================  ==========================================================
"""
from spanbert_fast.tasks.classification import SpanBertForSequenceClassification
from spanbert_fast.tasks.embeddings import embed, load_ragged, save_embeddings
from spanbert_fast.tasks.fill_mask import fill_mask
from spanbert_fast.tasks.patch_hf import patch_hf_bert
from spanbert_fast.tasks.qa import SpanBertForQuestionAnswering, squad_metrics
from spanbert_fast.tasks.ner import SpanBertForTokenClassification, entity_scores

__all__ = ["SpanBertForQuestionAnswering", "squad_metrics", "SpanBertForSequenceClassification", "SpanBertForTokenClassification", "entity_scores", "embed", "fill_mask", "patch_hf_bert", "load_ragged", "save_embeddings"]
