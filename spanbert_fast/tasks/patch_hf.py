"""Run an existing ``transformers`` BERT model on spanbert-fast ops, in place (Liger style).

:func:`patch_hf_bert` swaps forward methods on the model's own module instances (no new
parameters, no copies; ``state_dict`` and ``save_pretrained`` are unchanged):

* every ``BertSelfAttention``: q/k/v projections as before, then :func:`spanbert_fast.ops.attention`
  (key-padding mask read from the mask transformers built; attention dropout inside the op).
  That mask depends on the model's ``attn_implementation``: ``eager`` / ``sdpa`` (a 4-D mask),
  ``flex_attention`` (a ``BlockMask``) and ``flash_attention_2/3/4`` (a 2-D mask) are read;
  other implementations (paged, hub kernels) are refused by :func:`patch_hf_bert`;
* every ``BertSelfOutput`` / ``BertOutput``: ``dense`` without its bias, then
  :func:`spanbert_fast.ops.bias_dropout_add_layernorm` (bias + dropout + residual + LayerNorm);
* ``BertForMaskedLM`` / ``BertForPreTraining`` called **with labels** (for pre-training: with
  ``labels`` and ``next_sentence_label``, when transformers computes a loss): the MLM transform runs
  only on the labelled rows and :func:`spanbert_fast.ops.masked_lm_loss` gives the loss without the
  full ``[B, L, V]`` logits. **Unlike transformers, ``logits`` (``prediction_logits``) is then
  ``None``**, unless the model was patched with ``keep_logits=True``: the loss stays fused and the
  full logits are computed as well, as transformers returns them. Without labels: logits as usual.

Differences from the unpatched model, by design: hidden states at **padding** positions are not
transformers' (the attention op gives padded query rows zeros; nothing reads them), so a label
on a padded position (``attention_mask`` 0) raises ``ValueError`` instead of entering the loss
(transformers scores it from those values); with no labelled token at all the MLM loss is 0
(transformers gives NaN); dropout masks come from the ops' own seeded generator. Calls that ask
for attention weights (``output_attentions``) or pass a KV cache use the original attention.
Decoder (causal) and cross-attention BERTs are refused.
"""
from __future__ import annotations

import types
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from spanbert_fast import ops
from spanbert_fast.tasks.batching import IGNORE_INDEX


# attn_implementation values whose attention mask key_padding_from_mask reads.
SUPPORTED_ATTN_IMPLEMENTATIONS: Tuple[str, ...] = (
    "eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3", "flash_attention_4")


def _supported_list() -> str:
    return ", ".join(repr(name) for name in SUPPORTED_ATTN_IMPLEMENTATIONS)


def _is_block_mask(mask) -> bool:
    try:
        from torch.nn.attention.flex_attention import BlockMask
    except ImportError:  # a torch without flex attention makes no BlockMask
        return False
    return isinstance(mask, BlockMask)


def _key_padding_from_block_mask(block_mask) -> torch.Tensor:
    """``[B|1, S]`` keep-mask of a flex-attention ``BlockMask``: its ``mask_mod`` at query 0.

    Evaluated once per mask object and kept on it (every layer of a forward gets the same one).
    """
    keep = getattr(block_mask, "_spanbert_key_padding", None)
    if keep is None:
        from torch.nn.attention.flex_attention import create_mask

        mask_batch, _, _, kv_length = block_mask.shape
        keep = create_mask(block_mask.mask_mod, mask_batch, 1, 1, kv_length,
                           device=block_mask.kv_num_blocks.device)[:, 0, 0, :]
        block_mask._spanbert_key_padding = keep
    return keep


def key_padding_from_mask(attention_mask, batch: int) -> Optional[torch.Tensor]:
    """``[B, S]`` bool keep-mask (True = real key) from a transformers attention mask.

    Accepts ``None``, a 2-D ``[B, S]`` 0/1 mask (flash-attention implementations), the 4-D
    ``[B|1, 1, Q, S]`` mask of a bidirectional encoder (eager / sdpa; bool: True = attend;
    float: 0 = attend, very negative = masked), whose rows are all the same key mask (row 0 is
    read), or a flex-attention ``BlockMask`` (its mask function at query 0). Returns ``None``
    when nothing is masked.
    """
    if attention_mask is None:
        return None
    if _is_block_mask(attention_mask):
        keep = _key_padding_from_block_mask(attention_mask).expand(batch, -1)
    elif not isinstance(attention_mask, torch.Tensor):
        raise ValueError(f"patch_hf_bert: unexpected attention mask of type {type(attention_mask).__name__}; "
                         f"the supported attn_implementation values are {_supported_list()}")
    elif attention_mask.dim() == 2:
        keep = attention_mask.bool()
    elif attention_mask.dim() == 4:
        row = attention_mask[:, 0, 0, :]
        keep = row if row.dtype == torch.bool else row > torch.finfo(row.dtype).min / 2
        keep = keep.expand(batch, -1)
    else:
        raise ValueError(f"patch_hf_bert: unexpected attention mask shape {tuple(attention_mask.shape)}")
    return None if bool(keep.all()) else keep


def _self_attention_forward(self, hidden_states, attention_mask=None, past_key_values=None, **kwargs):
    """``BertSelfAttention.forward`` on :func:`spanbert_fast.ops.attention`."""
    if past_key_values is not None or kwargs.get("output_attentions") or kwargs.get("encoder_hidden_states") is not None:
        return self._spanbert_original_forward(hidden_states, attention_mask, past_key_values, **kwargs)
    batch, seq_len, _ = hidden_states.shape
    heads, head_dim = self.num_attention_heads, self.attention_head_size

    def split(x):  # [B, S, H*D] -> [B, H, S, D]
        return x.view(batch, seq_len, heads, head_dim).transpose(1, 2)

    q, k, v = split(self.query(hidden_states)), split(self.key(hidden_states)), split(self.value(hidden_states))
    context = ops.attention(
        q, k, v, key_padding_from_mask(attention_mask, batch),
        dropout_p=self.dropout.p if self.training else 0.0, softmax_scale=self.scaling,
        backend=self._spanbert_backend,
    )
    return context.transpose(1, 2).reshape(batch, seq_len, heads * head_dim), None


def _sublayer_output_forward(self, hidden_states, input_tensor):
    """``BertSelfOutput`` / ``BertOutput.forward``: ``LN(dropout(x W + b) + residual)`` fused."""
    return ops.bias_dropout_add_layernorm(
        F.linear(hidden_states, self.dense.weight), self.dense.bias, input_tensor,
        self.LayerNorm.weight, self.LayerNorm.bias, p=self.dropout.p if self.training else 0.0,
        eps=self.LayerNorm.eps, backend=self._spanbert_backend,
    )


def fused_mlm_loss(predictions, sequence_output: torch.Tensor, labels: torch.Tensor, backend: str) -> torch.Tensor:
    """Mean MLM cross-entropy of an HF ``BertLMPredictionHead`` at the labelled rows only."""
    flat_labels = labels.reshape(-1)
    positions = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)
    rows = predictions.transform(sequence_output.flatten(0, 1)[positions])
    decoder = predictions.decoder
    bias = decoder.bias if decoder.bias is not None else predictions.bias
    loss, _ = ops.masked_lm_loss(rows, flat_labels[positions], decoder.weight, bias, backend=backend)
    return loss


def refuse_labels_on_padding(labels: torch.Tensor, attention_mask) -> None:
    """ValueError when a label (not -100) sits where ``attention_mask`` marks padding: transformers
    puts those positions in its loss, computed from hidden states the patched model does not
    reproduce there. One host sync (the fused loss syncs anyway)."""
    if not isinstance(attention_mask, torch.Tensor):
        return
    keep = key_padding_from_mask(attention_mask, labels.shape[0])
    if keep is None or keep.shape != labels.shape:
        return
    on_padding = (labels != IGNORE_INDEX) & ~keep
    if bool(on_padding.any()):
        raise ValueError(f"patch_hf_bert: {int(on_padding.sum())} label(s) sit on padded positions "
                         "(attention_mask 0), which the patched model does not score as transformers does; "
                         f"set the labels at padding to {IGNORE_INDEX} (ignored), as the HF data collators do")


def _encoder_kwargs(kwargs: dict) -> bool:
    """Pop ``return_dict``; True when the caller wants a tuple."""
    return kwargs.pop("return_dict", True) is False


def _masked_lm_forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                       inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None,
                       labels=None, **kwargs):
    """``BertForMaskedLM.forward``; with ``labels`` the loss is fused and ``logits`` is None
    (unless patched with ``keep_logits=True``)."""
    if labels is None:
        return self._spanbert_original_forward(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, inputs_embeds=inputs_embeds, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, **kwargs)
    from transformers.modeling_outputs import MaskedLMOutput

    refuse_labels_on_padding(labels, attention_mask)
    as_tuple = _encoder_kwargs(kwargs)
    outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids, inputs_embeds=inputs_embeds,
                        encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
                        return_dict=True, **kwargs)
    loss = fused_mlm_loss(self.cls.predictions, outputs[0], labels, self._spanbert_backend)
    logits = self.cls.predictions(outputs[0]) if self._spanbert_keep_logits else None
    result = MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                            attentions=outputs.attentions)
    return result.to_tuple() if as_tuple else result


def _pretraining_forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                         inputs_embeds=None, labels=None, next_sentence_label=None, **kwargs):
    """``BertForPreTraining.forward``; with both labels the MLM loss is fused (``prediction_logits``
    None unless patched with ``keep_logits=True``)."""
    if labels is None or next_sentence_label is None:
        return self._spanbert_original_forward(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, inputs_embeds=inputs_embeds, labels=labels,
            next_sentence_label=next_sentence_label, **kwargs)
    from transformers.models.bert.modeling_bert import BertForPreTrainingOutput

    refuse_labels_on_padding(labels, attention_mask)
    as_tuple = _encoder_kwargs(kwargs)
    outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids, inputs_embeds=inputs_embeds, return_dict=True, **kwargs)
    sequence_output, pooled_output = outputs[:2]
    mlm_loss = fused_mlm_loss(self.cls.predictions, sequence_output, labels, self._spanbert_backend)
    prediction_logits = self.cls.predictions(sequence_output) if self._spanbert_keep_logits else None
    relationship = self.cls.seq_relationship(pooled_output)
    nsp_loss = F.cross_entropy(relationship.view(-1, 2), next_sentence_label.view(-1))
    result = BertForPreTrainingOutput(loss=mlm_loss + nsp_loss, prediction_logits=prediction_logits,
                                      seq_relationship_logits=relationship, hidden_states=outputs.hidden_states,
                                      attentions=outputs.attentions)
    return result.to_tuple() if as_tuple else result


def _swap_forward(module, forward, backend: str) -> None:
    if not hasattr(module, "_spanbert_original_forward"):
        module._spanbert_original_forward = module.forward
    module.forward = types.MethodType(forward, module)
    module._spanbert_backend = backend


def patch_hf_bert(model, backend: str = "auto", *, attention: bool = True, sublayer_output: bool = True,
                  mlm_loss: bool = True, keep_logits: bool = False):
    """Patch a ``transformers`` BERT model in place to run on spanbert-fast ops; returns ``model``.

    ``backend``: ``"auto"`` (Triton kernels on CUDA, PyTorch references on CPU), ``"torch"``
    or ``"triton"``. The three switches choose what is replaced (see the module docstring).
    ``keep_logits``: with the fused MLM loss, still return the full ``[B, L, V]`` logits with
    the loss, as transformers does (by default they are ``None``: the point of the fused loss).
    Patching twice re-targets the backend. ``model._spanbert_patched`` counts what was replaced.
    """
    from transformers.models.bert import modeling_bert as hf

    if backend not in ops.BACKENDS:
        raise ValueError(f"backend must be one of {ops.BACKENDS}, got {backend!r}")
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) != "bert":
        raise ValueError(f"patch_hf_bert needs a transformers BERT model, got {type(model).__name__}")
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise ValueError("patch_hf_bert supports bidirectional encoders only (config.is_decoder and "
                         "config.add_cross_attention must be False)")
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    if attention and implementation not in SUPPORTED_ATTN_IMPLEMENTATIONS:
        raise ValueError(f"patch_hf_bert: attn_implementation {implementation!r} is not supported; load the "
                         f"model with attn_implementation= one of {_supported_list()} (or patch with "
                         "attention=False)")
    counts = {"attention": 0, "sublayer_output": 0, "mlm_loss": 0}
    for module in model.modules():
        if attention and isinstance(module, hf.BertSelfAttention):
            _swap_forward(module, _self_attention_forward, backend)
            counts["attention"] += 1
        elif sublayer_output and isinstance(module, (hf.BertSelfOutput, hf.BertOutput)):
            _swap_forward(module, _sublayer_output_forward, backend)
            counts["sublayer_output"] += 1
    if mlm_loss and isinstance(model, hf.BertForMaskedLM):
        _swap_forward(model, _masked_lm_forward, backend)
        counts["mlm_loss"] += 1
    elif mlm_loss and isinstance(model, hf.BertForPreTraining):
        _swap_forward(model, _pretraining_forward, backend)
        counts["mlm_loss"] += 1
    model._spanbert_keep_logits = bool(keep_logits)
    model._spanbert_patched = counts
    return model
