"""SpanBERT: a BERT encoder with a masked-LM head and a Span Boundary Objective head (:mod:`.heads`).

Reads like the paper (Joshi et al., 2020, "SpanBERT: Improving Pre-training by Representing and
Predicting Spans") and its reference implementation:

    embeddings  = LayerNorm(word + position + token_type) -> dropout
    each layer  = LN(dropout(attention(x) W_o + b_o) + x)            (post-LN)
                  LN(dropout(GeLU(x W_i + b_i) W_o2 + b_o2) + x)
    MLM head    = LN(GeLU(h W_t + b_t)) E^T + b                        (E = word embeddings, tied)
    SBO head    = LN2(GeLU(LN1(GeLU([h_{s-1}; h_{e+1}; p_i] W_1 + b_1)) W_2 + b_2)) E^T + b'

Both heads run **only at the rows they predict** (gather first, then transform,
then the masked-position loss), never over the whole sequence. So does the end of the
last layer: with ``config.last_layer_subset`` (the default) the last layer computes
q, k, v and attention for every token, then keeps only the ``head_rows`` the heads read
(masked tokens and SBO boundaries) for its output projection, residual + LayerNorm and
feed-forward (flash-attention's ``last_layer_subset``, MosaicBERT's ``subset_idx``).
The loss and every gradient are those of the full last layer.

Module and parameter names follow HF ``BertForPreTraining`` (``bert.encoder.layer.N.
attention.self.query`` ...) and the SpanBERT reference code for the SBO head
(``cls.pair_target_predictions.mlp_layer_norm.linear1`` ...), so checkpoints map one
to one (see :mod:`spanbert_fast.hub`; loading and saving: :mod:`spanbert_fast.pretrained`).

The hot ops go through :mod:`spanbert_fast.ops` with the encoder's ``backend`` (``"auto"`` =
Triton kernels on CUDA, PyTorch references on CPU), a constructor argument that every forward
passes down to the layers and heads.

Batch format: the keys :meth:`SpanBertForPreTraining.forward` takes are those
:mod:`spanbert_fast.data.collate` makes (its docstring has the table); flat indices address
``hidden.flatten(0, 1)``, and ``head_rows`` (the rows the heads read) lets the last layer skip
the others without a host sync.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from spanbert_fast import ops
from spanbert_fast.backend import check_backend
from spanbert_fast.config import SpanBertConfig
from spanbert_fast.heads import MLMHead, PreTrainingHeads, SpanBoundaryHead  # noqa: F401  (public here too)
from spanbert_fast.packing import VarlenLayout
from spanbert_fast.pretrained import SpanBertPreTrainedModel


# --------------------------------------------------------------------------- outputs
@dataclasses.dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor  # [B, L, d]; [T, d] for packed input; [R, d] with head_rows
    hidden_states: Optional[Tuple[torch.Tensor, ...]] = None  # embeddings + every layer, on request


@dataclasses.dataclass
class PreTrainingOutput:
    loss: torch.Tensor  # mlm_loss + sbo_loss_weight * sbo_loss
    mlm_loss: torch.Tensor  # mean CE over masked positions
    sbo_loss: torch.Tensor  # mean CE over SBO targets
    mlm_correct: torch.Tensor  # int64 count of masked positions predicted right
    sbo_correct: torch.Tensor  # int64 count of SBO targets predicted right
    mlm_count: torch.Tensor  # int64 number of masked positions
    sbo_count: torch.Tensor  # int64 number of SBO targets
    # config.last_layer_subset: [R, d], the final states at head_rows only (the last layer ran
    # nowhere else); otherwise the full [B, L, d], or [T, d] for packed input, and head_rows None.
    last_hidden_state: torch.Tensor
    head_rows: Optional[torch.Tensor] = None  # [R] flat rows (batch index space) of last_hidden_state

    def metrics(self) -> dict:
        """Per-head losses and accuracies as tensors (no host sync; the trainer logs them)."""
        return {
            "mlm_loss": self.mlm_loss.detach(),
            "sbo_loss": self.sbo_loss.detach(),
            "mlm_acc": self.mlm_correct / self.mlm_count.clamp(min=1),
            "sbo_acc": self.sbo_correct / self.sbo_count.clamp(min=1),
        }


# --------------------------------------------------------------------------- building blocks
class Embeddings(nn.Module):
    """word + learned absolute position + token type, then LayerNorm and dropout."""

    def __init__(self, config: SpanBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.max_positions = config.max_position_embeddings

    def forward(self, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``input_ids`` [B, L] (positions 0..L-1) or packed [T] with ``position_ids`` [T]."""
        if position_ids is None:
            seq_len = input_ids.shape[-1]
            if seq_len > self.max_positions:
                raise ValueError(
                    f"input_ids has {seq_len} positions but the model has {self.max_positions} position "
                    "embeddings; cut the input (blocks are at most max_position_embeddings tokens)"
                )
            position_ids = torch.arange(seq_len, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        if token_type_ids is None:
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class SublayerOutput(nn.Module):
    """``LayerNorm(dropout(x W + b) + residual)``: the post-LN end of each sublayer."""

    def __init__(self, in_features: int, config: SpanBertConfig):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout_p = config.hidden_dropout_prob

    def forward(self, x: torch.Tensor, residual: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        p = self.dropout_p if self.training else 0.0
        return ops.bias_dropout_add_layernorm(
            F.linear(x, self.dense.weight), self.dense.bias, residual,
            self.LayerNorm.weight, self.LayerNorm.bias, p=p, eps=self.LayerNorm.eps, backend=backend,
        )


class SelfAttention(nn.Module):
    """Multi-head bidirectional attention (q, k, v projections in one GEMM)."""

    def __init__(self, config: SpanBertConfig):
        super().__init__()
        d = config.hidden_size
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.dropout_p = config.attention_probs_dropout_prob
        self.window = config.attention_window

    def forward(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor],
                varlen: Optional["VarlenLayout"] = None, backend: str = "auto") -> torch.Tensor:
        """``x`` [B, L, d] with ``attention_mask`` [B, L], or packed [T, d] with ``varlen``."""
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])  # [3d, d]
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])  # [3d]
        qkv = F.linear(x, weight, bias)
        dropout_p = self.dropout_p if self.training else 0.0
        if varlen is not None:
            q, k, v = qkv.view(-1, 3, self.num_heads, self.head_dim).unbind(1)  # each [T, H, Dh]
            context = ops.attention_varlen(
                q, k, v, varlen.cu_seqlens, varlen.max_seqlen, window=self.window,
                dropout_p=dropout_p, validate=False, backend=backend,
            )
            return context.reshape(x.shape)
        batch, seq_len, d = x.shape
        q, k, v = qkv.view(batch, seq_len, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        context = ops.attention(  # q, k, v: [B, H, L, Dh]
            q, k, v, attention_mask, window=self.window, dropout_p=dropout_p, backend=backend,
        )
        return context.transpose(1, 2).reshape(batch, seq_len, d)


class Attention(nn.Module):
    def __init__(self, config: SpanBertConfig):
        super().__init__()
        self.self = SelfAttention(config)  # HF key names: attention.self.query ...
        self.output = SublayerOutput(config.hidden_size, config)

    def forward(self, x, attention_mask, varlen=None, rows: Optional[torch.Tensor] = None,
                backend: str = "auto") -> torch.Tensor:
        """``rows`` [R]: attend from every token, but continue only at these flat rows of ``x``
        (output ``[R, d]``): the output projection and everything after it skip the others."""
        context = self.self(x, attention_mask, varlen, backend)
        if rows is not None:
            d = x.shape[-1]
            context, x = context.reshape(-1, d)[rows], x.reshape(-1, d)[rows]
        return self.output(context, residual=x, backend=backend)


class Intermediate(nn.Module):
    """The feed-forward expansion ``GeLU(x W_i + b_i)``, d -> intermediate_size: the GEMM without
    its bias, then one fused bias + GeLU (on Triton it saves only the GEMM output for backward)."""

    def __init__(self, config: SpanBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        return ops.bias_gelu(F.linear(x, self.dense.weight), self.dense.bias, backend=backend)


class EncoderLayer(nn.Module):
    def __init__(self, config: SpanBertConfig):
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = SublayerOutput(config.intermediate_size, config)

    def forward(self, x, attention_mask, varlen=None, rows: Optional[torch.Tensor] = None,
                backend: str = "auto") -> torch.Tensor:
        """``rows``: see :meth:`Attention.forward`; the feed-forward then runs on those ``[R, d]`` only."""
        x = self.attention(x, attention_mask, varlen, rows, backend)
        return self.output(self.intermediate(x, backend), residual=x, backend=backend)


class Encoder(nn.Module):
    def __init__(self, config: SpanBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))


# --------------------------------------------------------------------------- models
class SpanBertModel(SpanBertPreTrainedModel):
    """The bare encoder: ``input_ids`` -> contextual hidden states ``[B, L, d]``.

    ``backend``: ``"auto"`` | ``"torch"`` | ``"triton"`` for every hot op (:mod:`spanbert_fast.ops`);
    the model's one backend setting (:meth:`set_backend` changes it).
    """

    checkpoint_prefix = "bert."  # a bare encoder's keys lack the prefix of BertForPreTraining's
    backend: str = "auto"  # an attribute of the encoder itself (other models read it here)

    def __init__(self, config: SpanBertConfig, *, backend: str = "auto"):
        super().__init__(config)
        self.backend = check_backend(backend)
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.init_weights()

    def set_backend(self, backend: str) -> "SpanBertModel":
        self.backend = check_backend(backend)
        return self

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, L] int64, or packed [T]
        attention_mask: Optional[torch.Tensor] = None,  # [B, L] 1 = real token, 0 = padding
        token_type_ids: Optional[torch.Tensor] = None,  # like input_ids
        output_hidden_states: bool = False,
        *,
        position_ids: Optional[torch.Tensor] = None,  # packed input: [T] position inside each sequence
        cu_seqlens: Optional[torch.Tensor] = None,  # packed input: [B + 1] int32 sequence offsets
        max_seqlen: Optional[int] = None,  # packed input: longest sequence
        head_rows: Optional[torch.Tensor] = None,  # [R] sorted flat rows: the last layer ends only there
    ) -> EncoderOutput:
        """Hidden states ``[B, L, d]`` of a padded batch, or ``[T, d]`` of a packed one.

        Packed input (``spanbert_fast.data.collate.pack_batch``) has no padding at all and
        needs no host sync; its ``cu_seqlens`` are trusted (not re-validated).

        ``head_rows`` (flat indices into ``[B * L]``, or ``[T]`` for packed input,
        sorted ascending): the last layer still attends over every token, but computes its
        output only at these rows; ``last_hidden_state`` is then ``[R, d]`` in that order
        (so is the last of ``hidden_states``). Pre-training passes the rows its heads read.
        """
        if cu_seqlens is not None:
            if input_ids.dim() != 1 or position_ids is None or max_seqlen is None or attention_mask is not None:
                raise ValueError("packed input: input_ids [T] with position_ids [T], cu_seqlens [B + 1] and "
                                 "max_seqlen, and no attention_mask")
            x = self.embeddings(input_ids, token_type_ids, position_ids)
            return self._encode(x, None, VarlenLayout(cu_seqlens.to(torch.int32), int(max_seqlen)),
                                output_hidden_states, head_rows)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids {tuple(input_ids.shape)}"
            )
        mask = None if attention_mask is None else attention_mask.bool()
        x = self.embeddings(input_ids, token_type_ids, position_ids)
        varlen = None
        if mask is not None and ops.resolve_attention_backend(self.backend, x, self.config.head_dim) == "triton":
            # Unpad once: every layer then runs on the [T, d] real tokens (varlen attention)
            # and the states are repadded at the end (not the [R, d] head_rows); one host
            # sync per forward.
            x, varlen = VarlenLayout.of_padded(x, mask)
        return self._encode(x, mask, varlen, output_hidden_states, head_rows)

    def _encode(self, x, mask, varlen: Optional[VarlenLayout], output_hidden_states: bool,
                head_rows: Optional[torch.Tensor] = None) -> EncoderOutput:
        """Run the layers on embeddings ``x`` (padded with ``mask``, or packed with ``varlen``);
        the last one only up to its attention outside ``head_rows``."""
        rows = None
        if head_rows is not None:  # the layers index x: unpadded tokens when varlen
            rows = head_rows if varlen is None else varlen.token_index(head_rows)
        *layers, last_layer = self.encoder.layer
        backend = self.backend
        all_states = [x] if output_hidden_states else None
        for layer in layers:
            x = layer(x, mask, varlen, backend=backend)
            if all_states is not None:
                all_states.append(x)
        if varlen is not None:
            all_states = None if all_states is None else [varlen.repad(h) for h in all_states]
        x = last_layer(x, mask, varlen, rows, backend=backend)
        if varlen is not None and rows is None:
            x = varlen.repad(x)
        if all_states is not None:
            all_states.append(x)
        return EncoderOutput(x, tuple(all_states) if all_states is not None else None)


class SpanBertForPreTraining(SpanBertPreTrainedModel):
    """Encoder + MLM head + SBO head; loss = MLM CE + ``sbo_loss_weight`` × SBO CE.

    ``validate_targets``: the Triton loss checks that every label is a vocabulary id (two host
    syncs per step), and a batch's ``head_rows`` are checked to hold every head index (three more
    on CUDA). ``spanbert_fast.train.pretrain`` passes False: its masker checked the ids, its
    collator the rows (a CUDA-graph step cannot sync at all).
    """

    def __init__(self, config: SpanBertConfig, *, backend: str = "auto", validate_targets: bool = True):
        super().__init__(config)
        self.validate_targets = validate_targets
        self.bert = SpanBertModel(config, backend=backend)
        self.cls = PreTrainingHeads(config)
        self.init_weights()

    @property
    def decoder_weight(self) -> torch.Tensor:
        """The tied decoder of both heads: the word embedding table ``[V, d]``."""
        return self.bert.embeddings.word_embeddings.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        mlm_positions: Optional[torch.Tensor] = None,
        mlm_labels: Optional[torch.Tensor] = None,
        sbo_left: Optional[torch.Tensor] = None,
        sbo_right: Optional[torch.Tensor] = None,
        sbo_rel_pos: Optional[torch.Tensor] = None,
        sbo_labels: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
        max_seqlen: Optional[int] = None,
        head_rows: Optional[torch.Tensor] = None,
        **unused,
    ) -> PreTrainingOutput:
        """One pre-training forward on a collated batch (format in the module docstring),
        padded or packed (``pack_batch``: indices then address the packed tokens).

        With ``config.last_layer_subset`` the last layer ends only at ``head_rows`` (computed
        here when the batch has none) and the heads index those ``[R, d]`` rows.
        Extra batch keys (e.g. ``unpad_index``) are accepted and ignored.
        """
        required = dict(mlm_positions=mlm_positions, mlm_labels=mlm_labels, sbo_left=sbo_left,
                        sbo_right=sbo_right, sbo_rel_pos=sbo_rel_pos, sbo_labels=sbo_labels)
        missing = [name for name, value in required.items() if value is None]
        if missing:
            raise ValueError(f"SpanBertForPreTraining.forward needs the batch keys {missing} (see spanbert_fast.model)")
        validate = self.validate_targets
        # the batch's head_rows (ours below are right by construction), unless tracing or capturing
        check_head_rows = validate and head_rows is not None and ops.host_sync_allowed(head_rows)
        if not self.config.last_layer_subset:
            head_rows = None
        elif head_rows is None:
            head_rows = torch.unique(torch.cat([mlm_positions, sbo_left, sbo_right]))  # sorted; a host sync on CUDA
        hidden = self.bert(input_ids, attention_mask, token_type_ids, position_ids=position_ids,
                           cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, head_rows=head_rows).last_hidden_state
        hidden_flat = hidden.reshape(-1, hidden.shape[-1])  # [B * L, d], packed [T, d], or [R, d] at head_rows
        if head_rows is not None:  # batch rows -> rows of last_hidden_state
            mlm_positions, sbo_left, sbo_right = (
                self._head_row_index(head_rows, index, labels, name, check_head_rows)
                for name, index, labels in (("mlm_positions", mlm_positions, mlm_labels),
                                            ("sbo_left", sbo_left, sbo_labels), ("sbo_right", sbo_right, sbo_labels))
            )
        heads, backend = self.cls, self.backend
        mlm_loss, mlm_correct = heads.predictions.loss(
            hidden_flat, mlm_positions, mlm_labels, self.decoder_weight, validate, backend
        )
        sbo_loss, sbo_correct = heads.pair_target_predictions.loss(
            hidden_flat, sbo_left, sbo_right, sbo_rel_pos, sbo_labels, self.decoder_weight, validate, backend
        )
        return PreTrainingOutput(
            loss=mlm_loss + self.config.sbo_loss_weight * sbo_loss,
            mlm_loss=mlm_loss,
            sbo_loss=sbo_loss,
            mlm_correct=mlm_correct,
            sbo_correct=sbo_correct,
            mlm_count=(mlm_labels != -100).sum(),
            sbo_count=(sbo_labels != -100).sum(),
            last_hidden_state=hidden,
            head_rows=head_rows,
        )

    @staticmethod
    def _head_row_index(head_rows: torch.Tensor, index: torch.Tensor, labels: torch.Tensor, name: str,
                      check: bool) -> torch.Tensor:
        """Where each flat row of ``index`` sits in the sorted ``head_rows`` (binary search, no sync).

        ``check`` makes sure it is really there (one host sync on CUDA): a ``head_rows`` that
        misses a head index or is not sorted would otherwise silently train on the wrong rows.
        Rows of ignored targets (label -100, e.g. fixed-capacity padding) may point anywhere;
        past the last head row they are clamped onto it.
        """
        row_index = torch.searchsorted(head_rows, index).clamp_(max=max(head_rows.numel() - 1, 0))
        if check:
            valid = labels != -100
            if head_rows.numel():
                ok = torch.equal(torch.where(valid, head_rows[row_index], index), index)
            else:
                ok = not valid.any()
            if not ok:
                raise ValueError(f"head_rows must be sorted and contain every index of {name}")
        return row_index

    def mlm_logits(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary MLM logits ``[M, V]`` at flat ``positions`` of ``hidden`` [B, L, d]."""
        return self.cls.predictions.logits(hidden.flatten(0, 1)[positions], self.decoder_weight, self.backend)
