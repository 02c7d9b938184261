"""Running a task model on text: its tokenizer, truncation, batched inference, pooling."""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, List, Optional, Tuple

import torch

from spanbert_fast.tasks.batching import batched, collate_features


def masked_mean(hidden: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of ``hidden`` [B, L, d] over the real tokens of each row (``attention_mask`` 1) -> [B, d]."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def progress_bar(total: int, unit: str, enabled: bool, desc: str = "predict"):
    """A tqdm bar over ``total`` items (``unit``) for prediction, shown by the rule of the
    training loop's bar: on stderr whenever ``enabled``, terminal or not (``--no-progress`` and
    the Python API's default turn it off). It stays on screen only when no other bar is open."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, leave=None)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict_batches(model, inputs: Iterable[dict], pad_id: int, batch_size: int) -> Iterator[Tuple[List[dict], object]]:
    """Run ``model`` in eval mode over ``inputs`` (dicts of ``input_ids`` [+ ``token_type_ids``]),
    ``batch_size`` at a time, in order; yields ``(chunk, output)`` per batch.

    ``inputs`` may be a generator (read one batch at a time); other keys of an input dict are
    not read by the model and ride along in ``chunk`` (e.g. what decoding needs)."""
    model.eval()
    device = model_device(model)
    for chunk in batched(inputs, batch_size):
        batch = collate_features(chunk, pad_id)
        with inference_context(device):
            output = model(**{k: v.to(device) for k, v in batch.items()})
        yield chunk, output


def resolve_tokenizer(checkpoint: str, tokenizer_path: Optional[str] = None):
    """The tokenizer at ``tokenizer_path``, else the one saved in the ``checkpoint`` folder."""
    from spanbert_fast.data.tokenizer import load_tokenizer
    from spanbert_fast.hub import resolve_checkpoint

    path = tokenizer_path or resolve_checkpoint(checkpoint)  # a hub repo id: its downloaded folder
    try:
        return load_tokenizer(path)
    except FileNotFoundError as err:
        hint = "" if tokenizer_path else "; pass --tokenizer PATH (a tokenizer.json, vocab.txt or a folder with one)"
        raise FileNotFoundError(f"{err}{hint}") from err


def check_length(n_tokens: int, model: torch.nn.Module, what: str) -> None:
    """Raise when a sequence is longer than the model's position table."""
    limit = model.config.max_position_embeddings
    if n_tokens > limit:
        raise ValueError(f"{what} has {n_tokens} tokens with [CLS]/[SEP]; the model takes at most {limit}")


def inference_context(device: torch.device):
    """bf16 autocast on CUDA (as training uses), nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class truncation:
    """``with truncation(tokenizer, max_length):`` encodes cut to ``max_length`` tokens
    (longest-first for pairs), then restores the tokenizer's own truncation setting."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __enter__(self):
        self.saved = self.tokenizer.truncation
        self.tokenizer.enable_truncation(self.max_length)
        return self.tokenizer

    def __exit__(self, *exc):
        if self.saved is None:
            self.tokenizer.no_truncation()
        else:
            self.tokenizer.enable_truncation(**self.saved)
        return False
