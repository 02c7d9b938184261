"""Fill-mask: the masked-LM head's top-k tokens for every ``[MASK]`` of a text.

The text is split at the literal mask token, each piece tokenised on its own and the
pieces joined with the mask id, so ``[MASK]`` works whether or not the tokenizer knows
it as an added special token (a bare ``vocab.txt`` does not).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch

from spanbert_fast.data.tokenizer import special_ids
from spanbert_fast.tasks.batching import collate_features
from spanbert_fast.tasks.prediction import check_length, model_device

MASK_TOKEN = "[MASK]"

Prediction = List[Tuple[str, float]]  # (token, probability), best first


def encode_with_masks(tokenizer, text: str, mask_token: str = MASK_TOKEN) -> Tuple[List[int], List[int]]:
    """``([CLS] text [SEP]`` ids, positions of the mask tokens in them)."""
    ids = special_ids(tokenizer)
    pieces = text.split(mask_token)
    input_ids, positions = [ids.cls], []
    for index, piece in enumerate(pieces):
        if index:
            positions.append(len(input_ids))
            input_ids.append(ids.mask)
        input_ids.extend(tokenizer.encode(piece, add_special_tokens=False).ids)
    input_ids.append(ids.sep)
    return input_ids, positions


@torch.no_grad()
def fill_mask(model, tokenizer, text: Union[str, Sequence[str]], top_k: int = 5,
              batch_size: int = 32) -> Union[List[Prediction], List[List[Prediction]]]:
    """Top-``top_k`` predictions for each ``[MASK]`` in ``text``.

    ``model`` is a :class:`~spanbert_fast.SpanBertForPreTraining` (its MLM head scores the
    whole vocabulary through ``mlm_logits``). For one string, returns one list per mask, in
    text order, of ``(token, probability)`` pairs, best first; for a list of strings, a
    list of those. Runs in eval mode (no dropout) and restores the previous mode.
    """
    if top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}")
    texts = [text] if isinstance(text, str) else list(text)
    encoded = []
    for number, item in enumerate(texts):
        input_ids, positions = encode_with_masks(tokenizer, item)
        if not positions:
            raise ValueError(f"text {number}: no {MASK_TOKEN} in {item!r}")
        check_length(len(input_ids), model, f"text {number}")
        encoded.append((input_ids, positions))
    pad = special_ids(tokenizer).pad
    device = model_device(model)
    k = min(top_k, model.config.vocab_size)
    was_training = model.training
    model.eval()
    results: List[List[Prediction]] = []
    try:
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start: start + batch_size]
            batch = collate_features([{"input_ids": ids} for ids, _ in chunk], pad)
            hidden = model.bert(batch["input_ids"].to(device), batch["attention_mask"].to(device)).last_hidden_state
            width = hidden.shape[1]
            flat = torch.tensor([row * width + p for row, (_, ps) in enumerate(chunk) for p in ps], device=device)
            probs = model.mlm_logits(hidden, flat).float().softmax(dim=-1)
            top_probs, top_ids = probs.topk(k, dim=-1)
            top_probs, top_ids = top_probs.tolist(), top_ids.tolist()
            cursor = 0
            for _, positions in chunk:
                per_mask = []
                for _ in positions:
                    per_mask.append([(tokenizer.id_to_token(i), p) for i, p in zip(top_ids[cursor], top_probs[cursor])])
                    cursor += 1
                results.append(per_mask)
    finally:
        model.train(was_training)
    return results[0] if isinstance(text, str) else results


def mlm_head_missing(model) -> List[str]:
    """MLM-head parameters a loaded checkpoint did not provide (then predictions are noise)."""
    report = getattr(model, "load_report", None)
    if report is None:
        return []
    return [key for key in report.missing if key.startswith("cls.predictions.")]
