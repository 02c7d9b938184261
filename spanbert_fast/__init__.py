"""spanbert-fast: SpanBERT pre-training and fine-tuning with Triton kernels on the hot path.

Public API::

    from spanbert_fast import SpanBertConfig, SpanBertModel, SpanBertForPreTraining
    model = SpanBertForPreTraining(SpanBertConfig.preset("base"))
    model = SpanBertForPreTraining.from_pretrained("path/to/spanbert-base-cased")
    model.save_pretrained("out/")
"""
from spanbert_fast.config import SpanBertConfig
from spanbert_fast.model import (
    EncoderOutput,
    PreTrainingOutput,
    SpanBertForPreTraining,
    SpanBertModel,
)

from spanbert_fast.tasks import (  # noqa: E402  (tasks need the model imported first)
    SpanBertForQuestionAnswering,
    SpanBertForRelationExtraction,
    SpanBertForSequenceClassification,
    SpanBertForTokenClassification,
    embed,
    fill_mask,
    patch_hf_bert,
)

__version__ = "0.1.0"

__all__ = [
    "SpanBertConfig",
    "SpanBertModel",
    "SpanBertForPreTraining",
    "EncoderOutput",
    "PreTrainingOutput",
    "SpanBertForQuestionAnswering",
    "SpanBertForRelationExtraction",
    "SpanBertForSequenceClassification",
    "SpanBertForTokenClassification",
    "embed",
    "fill_mask",
    "patch_hf_bert",
    "__version__",
]
