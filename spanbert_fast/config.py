"""``SpanBertConfig``: one dataclass for the encoder and both pre-training heads.

Field names are those of HF ``BertConfig``, so a BERT or SpanBERT ``config.json``
maps one to one; the SBO head adds ``sbo_*`` fields (ignored by transformers).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional

from spanbert_fast.io import write_json

SUPPORTED_ACTIVATIONS = ("gelu",)


@dataclasses.dataclass
class SpanBertConfig:
    """Hyper-parameters of a SpanBERT encoder and its MLM + SBO heads; the field names and
    defaults are those of HF ``BertConfig`` / SpanBERT-base-cased (BERT-cased vocabulary)."""

    vocab_size: int = 28996
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # exact (erf) GeLU
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # Span Boundary Objective head ("pair target predictions" in the reference code).
    sbo_max_targets: int = 15  # rows of the relative-position table; tokens past it get no SBO target
    sbo_position_embedding_size: int = 200
    sbo_loss_weight: float = 1.0
    # Optional symmetric local attention: each token sees keys within ±window (None = full).
    attention_window: Optional[int] = None
    # Pre-training: the last layer's output projection, residual + LayerNorm and feed-forward run
    # only at the rows the MLM and SBO heads read (same loss and gradients, less work).
    last_layer_subset: bool = True

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; SpanBERT uses 'gelu' (erf)")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size",
                     "max_position_embeddings", "sbo_max_targets"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, **overrides) -> "SpanBertConfig":
        """``tiny`` (CPU demo and tests), ``base`` or ``large`` (the paper's models)."""
        presets = {
            "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
            "base": dict(),
            "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    # ------------------------------------------------------------------ config.json
    def to_dict(self) -> Dict[str, Any]:
        """The HF ``config.json`` content: BERT fields, our SBO fields, and model_type."""
        fields = dataclasses.asdict(self)
        return {"architectures": ["BertForPreTraining"], "model_type": "bert", **fields}

    @classmethod
    def from_dict(cls, values: Dict[str, Any], source: str = "config") -> "SpanBertConfig":
        """Build from a ``config.json`` dict; fields we do not use (HF extras) are ignored."""
        if values.get("model_type", "bert") != "bert":
            raise ValueError(f"{source}: model_type {values['model_type']!r} is not a BERT model")
        if values.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"{source}: position_embedding_type {values['position_embedding_type']!r} is not supported "
                "(SpanBERT uses learned absolute positions)"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def save(self, directory: str) -> str:
        """Write ``directory/config.json`` atomically; returns its path."""
        return write_json(os.path.join(directory, "config.json"), self.to_dict(), sort_keys=True)

    @classmethod
    def load(cls, path: str) -> "SpanBertConfig":
        """Read a ``config.json`` file, or ``config.json`` inside a checkpoint folder."""
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no config.json found; is this a BERT/SpanBERT checkpoint folder?")
        try:
            with open(path) as f:
                values = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        return cls.from_dict(values, source=path)
