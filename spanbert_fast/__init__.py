"""spanbert-fast: SpanBERT pre-training and fine-tuning with Triton kernels on the hot path.

Public API::

    from spanbert_fast import SpanBertConfig, SpanBertModel, SpanBertForPreTraining
    model = SpanBertForPreTraining(SpanBertConfig.preset("base"))
    model = SpanBertForPreTraining.from_pretrained("path/to/spanbert-base-cased")
    model.save_pretrained("out/")

Layers, each importing only those below it::

    commands/   argument parsing; each subcommand calls one library function
    tasks/      fill-mask, embeddings, classification, NER, QA, patch_hf, fine-tuning driver
    train/      Trainer loop, checkpoints, logging, CUDA graphs, the pre-training driver
    model.py    encoder (+ heads.py, pretrained.py: from_pretrained / save_pretrained)
    ops.py      backend switch + fp32 references -> spanbert_fast.kernels (Triton)
    data/ hub.py io.py config.py packing.py: below whoever uses them

The names below are imported on first use, so ``import spanbert_fast.ops`` (or the model) does
not import the task, training or command-line modules.
"""
import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "SpanBertConfig": "spanbert_fast.config",
    "SpanBertModel": "spanbert_fast.model",
    "SpanBertForPreTraining": "spanbert_fast.model",
    "EncoderOutput": "spanbert_fast.model",
    "PreTrainingOutput": "spanbert_fast.model",
    "SpanBertForQuestionAnswering": "spanbert_fast.tasks.qa",
    "SpanBertForRelationExtraction": "spanbert_fast.tasks.relation",
    "SpanBertForSequenceClassification": "spanbert_fast.tasks.classification",
    "SpanBertForTokenClassification": "spanbert_fast.tasks.ner",
    "embed": "spanbert_fast.tasks.embeddings",
    "fill_mask": "spanbert_fast.tasks.fill_mask",
    "patch_hf_bert": "spanbert_fast.tasks.patch_hf",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'spanbert_fast' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
