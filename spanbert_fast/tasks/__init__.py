"""Using a SpanBERT model: fill-mask, embeddings, and fine-tuning heads.

==============================  ==========================================================
``fill_mask``                   top-k MLM predictions for each ``[MASK]`` (:mod:`.fill_mask`)
==============================  ==========================================================
"""
from spanbert_fast.tasks.fill_mask import fill_mask

__all__ = ["fill_mask"]
