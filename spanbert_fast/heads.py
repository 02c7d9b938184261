"""The two pre-training heads of SpanBERT, each gathering the rows it predicts first.

    MLM head    = LN(GeLU(h W_t + b_t)) E^T + b                        (E = word embeddings, tied)
    SBO head    = LN2(GeLU(LN1(GeLU([h_{s-1}; h_{e+1}; p_i] W_1 + b_1)) W_2 + b_2)) E^T + b'

Each head gathers its rows (masked tokens; span boundaries), transforms only those, then calls
the masked-position loss (:func:`spanbert_fast.ops.masked_lm_loss`, which never builds the
``[M, V]`` logits on the Triton path). Module names are those of HF ``BertForPreTraining``
(``cls.predictions``) and of the SpanBERT reference code (``cls.pair_target_predictions``).
``backend`` is passed in by the model on every call (see :mod:`spanbert_fast.ops`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from spanbert_fast import ops
from spanbert_fast.config import SpanBertConfig


class PredictionTransform(nn.Module):
    """MLM transform: ``LayerNorm(GeLU(h W_t + b_t))`` on the gathered rows."""

    def __init__(self, config: SpanBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, rows: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        return ops.bias_gelu_layernorm(
            F.linear(rows, self.dense.weight), self.dense.bias, self.LayerNorm.weight, self.LayerNorm.bias,
            self.LayerNorm.eps, backend=backend,
        )


class MLMHead(nn.Module):
    """Masked-LM head: transform, then the decoder tied to the word embeddings + own bias."""

    def __init__(self, config: SpanBertConfig):
        super().__init__()
        self.transform = PredictionTransform(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def loss(self, hidden_flat, positions, labels, decoder_weight, validate: bool = True, backend: str = "auto"):
        """``(mean CE, n_correct)`` at ``positions``, rows of ``hidden_flat`` ([B*L, d], [T, d] or [R, d])."""
        rows = self.transform(hidden_flat[positions], backend)
        return ops.masked_lm_loss(rows, labels, decoder_weight, self.bias, validate=validate, backend=backend)

    def logits(self, rows: torch.Tensor, decoder_weight: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """Full-vocabulary logits ``[M, V]`` for already-gathered rows (fill-mask, tests)."""
        return F.linear(self.transform(rows, backend), decoder_weight, self.bias)


class SBOMLP(nn.Module):
    """The SBO MLP: two (Linear -> GeLU -> LayerNorm) layers, reference key names."""

    def __init__(self, config: SpanBertConfig):
        super().__init__()
        d = config.hidden_size
        self.linear1 = nn.Linear(2 * d + config.sbo_position_embedding_size, d)
        self.layer_norm1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.linear2 = nn.Linear(d, d)
        self.layer_norm2 = nn.LayerNorm(d, eps=config.layer_norm_eps)


class SpanBoundaryHead(nn.Module):
    """Span Boundary Objective: predict each span token from its two boundaries + position.

    ``W_1`` acts on ``[h_left; h_right; p_i]``; we split it so the position part is a
    ``[sbo_max_targets, d]`` table computed once per step (``p W_1p^T + b_1``) and the
    boundary part is one GEMM over the gathered ``[K, 2d]`` rows, instead of a
    ``(2d + 200)``-wide concatenation per target. Same math as the reference head.
    """

    def __init__(self, config: SpanBertConfig):
        super().__init__()
        self.position_embeddings = nn.Embedding(config.sbo_max_targets, config.sbo_position_embedding_size)
        self.mlp_layer_norm = SBOMLP(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.hidden_size = config.hidden_size

    def transform(self, left: torch.Tensor, right: torch.Tensor, rel_pos: torch.Tensor,
                  backend: str = "auto") -> torch.Tensor:
        """``[K, d]`` boundary rows and ``[K]`` positions -> the ``[K, d]`` SBO representation."""
        mlp, d = self.mlp_layer_norm, self.hidden_size
        w1 = mlp.linear1.weight  # [d, 2d + P]: boundary columns, then position columns
        position_table = F.linear(self.position_embeddings.weight, w1[:, 2 * d:], mlp.linear1.bias)  # [T, d]
        pre1 = F.linear(torch.cat([left, right], dim=-1), w1[:, : 2 * d]) + position_table[rel_pos]
        h1 = ops.bias_gelu_layernorm(
            pre1, None, mlp.layer_norm1.weight, mlp.layer_norm1.bias, mlp.layer_norm1.eps, backend=backend
        )
        return ops.bias_gelu_layernorm(
            F.linear(h1, mlp.linear2.weight), mlp.linear2.bias, mlp.layer_norm2.weight, mlp.layer_norm2.bias,
            mlp.layer_norm2.eps, backend=backend,
        )

    def loss(self, hidden_flat, left, right, rel_pos, labels, decoder_weight, validate: bool = True,
             backend: str = "auto"):
        """``(mean CE, n_correct)`` of the SBO targets; indices are flat rows of ``hidden_flat``."""
        rows = self.transform(hidden_flat[left], hidden_flat[right], rel_pos, backend)
        return ops.masked_lm_loss(rows, labels, decoder_weight, self.bias, validate=validate, backend=backend)


class PreTrainingHeads(nn.Module):
    def __init__(self, config: SpanBertConfig):
        super().__init__()
        self.predictions = MLMHead(config)
        self.pair_target_predictions = SpanBoundaryHead(config)
