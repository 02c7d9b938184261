"""Checkpoint files in the HF layout (``config.json`` + ``model.safetensors``) and their key names.

Reads HF BERT and SpanBERT checkpoint folders (``model.safetensors``, a sharded
``model.safetensors.index.json``, or ``pytorch_model.bin``; keys with or without the
``bert.`` prefix; old TF-era ``gamma``/``beta`` LayerNorm names; fp16 weights are
cast), and writes folders that ``transformers.BertModel`` / ``BertForPreTraining``
load. Key remapping is a handful of small pure functions (tested on their own).

Our parameter names already are the HF names (``bert.encoder.layer.0.attention.self.
query.weight``, ``cls.predictions.transform.dense.weight``, and the reference SBO
names ``cls.pair_target_predictions.mlp_layer_norm.linear1.weight`` ...). The decoders
of both heads are tied to ``bert.embeddings.word_embeddings.weight`` and are not saved.

Everything here works on state dicts (name -> tensor), file names and folders, and imports no
model class: ``from_pretrained`` / ``save_pretrained`` (:class:`spanbert_fast.pretrained.
SpanBertPreTrainedModel`) call these functions with the model's own state dict.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Dict, List

import torch

from spanbert_fast.io import atomic_path

logger = logging.getLogger(__name__)

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PYTORCH_NAME = "pytorch_model.bin"

ENCODER_PREFIX = "bert."
# Top-level names of the encoder's own keys (what a bare BertModel checkpoint starts with).
_ENCODER_ROOTS = ("embeddings.", "encoder.", "pooler.")

# Checkpoint keys we know and deliberately do not load: tied aliases of the word
# embeddings / head biases, the pooler and NSP head SpanBERT has no use for, buffers.
_IGNORED_KEY_PATTERNS = (
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
    "cls.pair_target_predictions.decoder.weight",
    "bert.pooler.",
    "cls.seq_relationship.",
    "bert.embeddings.position_ids",
)


# --------------------------------------------------------------------------- key remapping
def rename_legacy_layernorm(key: str) -> str:
    """TF-era names: ``...LayerNorm.gamma`` -> ``.weight``, ``.beta`` -> ``.bias``."""
    if key.endswith(".gamma"):
        return key[: -len(".gamma")] + ".weight"
    if key.endswith(".beta"):
        return key[: -len(".beta")] + ".bias"
    return key


def add_encoder_prefix(key: str) -> str:
    """Bare-encoder keys (``embeddings.``, ``encoder.``, ``pooler.``) get the ``bert.`` prefix."""
    return ENCODER_PREFIX + key if key.startswith(_ENCODER_ROOTS) else key


def canonical_key(key: str) -> str:
    """Any BERT/SpanBERT checkpoint key -> the key of :class:`SpanBertForPreTraining`."""
    return add_encoder_prefix(rename_legacy_layernorm(key))


def is_ignored_key(key: str) -> bool:
    """True for checkpoint keys we skip on purpose (tied aliases, pooler, NSP, buffers)."""
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in _IGNORED_KEY_PATTERNS)


# --------------------------------------------------------------------------- reading files
def find_weights_file(directory: str) -> str:
    """The weights file of a checkpoint folder, preferring safetensors."""
    for name in (SAFETENSORS_NAME, SAFETENSORS_INDEX_NAME, PYTORCH_NAME):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"{directory}: no weights file; expected one of {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME} "
        f"or {PYTORCH_NAME} (an HF BERT/SpanBERT checkpoint folder)"
    )


def _read_safetensors(path: str) -> Dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"{path}: cannot read safetensors file ({err}); it may be truncated or corrupt: "
            "re-download or re-save the checkpoint"
        ) from err


def index_shards(path: str) -> List[str]:
    """The shard files a sharded ``model.safetensors.index.json`` names (its ``weight_map``
    values), each a plain file name inside the index's folder; ValueError naming ``path`` otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a JSON safetensors index ({err})") from err
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{path}: no \"weight_map\" (tensor name -> shard file); not a safetensors index")
    folder = os.path.dirname(os.path.abspath(path))
    shards = []
    for shard in sorted(set(map(str, weight_map.values()))):
        inside = os.path.normpath(os.path.join(folder, shard))
        if os.path.isabs(shard) or os.path.dirname(os.path.normpath(shard)) or os.path.dirname(inside) != folder:
            raise ValueError(f"{path}: weight_map names {shard!r}, outside the checkpoint folder; "
                             "shards must be file names in the index's folder")
        shards.append(inside)
    return shards


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Tensors of one weights file (``.safetensors``, sharded index, or ``.bin``) on CPU."""
    if path.endswith(".index.json"):
        state: Dict[str, torch.Tensor] = {}
        for shard in index_shards(path):
            state.update(_read_safetensors(shard))
        return state
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated zip, ...
        raise ValueError(f"{path}: cannot read PyTorch weights ({err}); the file may be truncated or corrupt") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return state.get("state_dict", state)  # some trainers nest the weights


# --------------------------------------------------------------------------- loading
@dataclasses.dataclass
class LoadReport:
    """What :func:`load_state_dict_into` did: keys the model lacked, kept, or skipped."""

    missing: List[str]  # model parameters not in the checkpoint (left at their initialisation)
    unexpected: List[str]  # checkpoint keys the model has no place for
    ignored: List[str]  # checkpoint keys skipped on purpose (tied aliases, pooler, NSP)
    cast_from: List[str]  # dtypes converted, e.g. ["torch.float16"]

    def message(self, source: str) -> str:
        lines = [f"loaded {source}"]
        if self.missing:
            lines.append(f"  missing (freshly initialised): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (not loaded): {', '.join(self.unexpected)}")
        if self.ignored:
            lines.append(f"  ignored on purpose (tied / pooler / NSP): {len(self.ignored)} keys")
        if self.cast_from:
            lines.append(f"  cast to the model dtype from: {', '.join(self.cast_from)}")
        return "\n".join(lines)


def load_state_dict_into(params: Dict[str, torch.Tensor], checkpoint: Dict[str, torch.Tensor],
                         source: str = "checkpoint", strict: bool = False) -> LoadReport:
    """Copy ``checkpoint`` tensors into the tensors of ``params`` (a model's state dict under the
    canonical HF key names, ``keep_vars=True``), matching keys by :func:`canonical_key`.

    Shape mismatches always raise (naming key and both shapes); missing/unexpected keys
    raise only with ``strict=True`` and are otherwise reported in the returned
    :class:`LoadReport` (and logged).
    """
    has_heads = any(k.startswith("cls.") for k in params)  # a bare encoder skips head keys
    renamed: Dict[str, torch.Tensor] = {}
    ignored, unexpected = [], []
    for key, tensor in checkpoint.items():
        key = canonical_key(key)
        if key in params:
            renamed[key] = tensor
        elif is_ignored_key(key) or (key.startswith("cls.") and not has_heads):
            ignored.append(key)
        else:
            unexpected.append(key)
    # A checkpoint that only has the tied decoder (no word embeddings) still defines them.
    word_key = "bert.embeddings.word_embeddings.weight"
    if word_key in params and word_key not in renamed and "cls.predictions.decoder.weight" in checkpoint:
        renamed[word_key] = checkpoint["cls.predictions.decoder.weight"]
    for key, tensor in renamed.items():
        if tuple(tensor.shape) != tuple(params[key].shape):
            raise ValueError(
                f"{source}: shape mismatch for {key}: checkpoint has {tuple(tensor.shape)}, "
                f"model expects {tuple(params[key].shape)}; does config.json match these weights?"
            )
    missing = sorted(k for k in params if k not in renamed)
    report = LoadReport(
        missing=missing, unexpected=sorted(unexpected), ignored=sorted(ignored),
        cast_from=sorted({str(t.dtype) for k, t in renamed.items() if t.dtype != params[k].dtype}),
    )
    if strict and (report.missing or report.unexpected):
        raise ValueError(report.message(source) + "\n(strict=True: every key must match)")
    with torch.no_grad():
        for key, tensor in renamed.items():
            params[key].copy_(tensor)  # copy_ casts fp16/bf16 weights to the model dtype
    logger.log(logging.WARNING if (missing or unexpected) else logging.INFO, report.message(source))
    return report


# What a checkpoint download needs: config, weights (either format), tokenizer files.
HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
             "vocab.txt", "tokenizer.json", "tokenizer_config.json", "task.json"]


def resolve_checkpoint(path: str) -> str:
    """A local checkpoint folder for ``path``: the folder itself, or an HF hub repo id
    (``"SpanBERT/spanbert-base-cased"``) downloaded with ``huggingface_hub`` (cached)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return path
    looks_like_repo_id = re.fullmatch(r"[\w.-]+/[\w.-]+", path) is not None and not os.path.exists(path)
    if not looks_like_repo_id:
        raise FileNotFoundError(f"{path}: checkpoint folder not found (expected config.json + model.safetensors)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:
        raise FileNotFoundError(
            f"{path}: no such folder; to download it from the HF hub install huggingface_hub "
            "(pip install 'spanbert-fast[hf]')"
        ) from error
    try:
        return snapshot_download(path, allow_patterns=HUB_FILES)
    except Exception as error:  # offline, unknown repo, gated model ...
        raise FileNotFoundError(f"{path}: no such folder, and downloading it from the HF hub failed ({error})") from error


# --------------------------------------------------------------------------- saving
def save_state_dict(state: Dict[str, torch.Tensor], directory: str) -> str:
    """Write ``state`` (HF key names) as ``directory/model.safetensors`` atomically; returns its path.

    The tensors are copied to contiguous CPU memory; tied tensors (the decoders) must not be in
    ``state`` (transformers re-ties them on load).
    """
    from safetensors.torch import save_file

    path = os.path.join(directory, SAFETENSORS_NAME)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp, metadata={"format": "pt"})
    return path
