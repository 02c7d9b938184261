"""What every SpanBERT model class shares: weight init, the backend setting, and checkpoint
folders (``from_pretrained`` / ``save_pretrained``, the one home of both).

A checkpoint folder is ``config.json`` + ``model.safetensors`` in the HF layout
(:mod:`spanbert_fast.hub` reads and writes the files and maps key names), plus the files a
subclass adds through :meth:`SpanBertPreTrainedModel.checkpoint_files` (a task model's
``task.json``). Keyword-only arguments of a subclass's constructor (``validate_targets``,
a task head's ``labels`` ...) are passed through ``from_pretrained``; the folder's own
:meth:`saved_arguments` supply the ones not given.

The backend (``"auto"`` | ``"torch"`` | ``"triton"``, see :mod:`spanbert_fast.ops`) is one
setting of the encoder, :attr:`SpanBertModel.backend`; a model wrapping an encoder as
``self.bert`` reads and sets it there, and passes it to its heads on every call.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn

from spanbert_fast import hub
from spanbert_fast.backend import check_backend
from spanbert_fast.config import SpanBertConfig
from spanbert_fast.io import write_json


class SpanBertPreTrainedModel(nn.Module):
    """Base of every model: ``config``, weight init, backend, checkpoint load/save."""

    # What this model's state-dict keys lack in front of the HF names ("bert." for a bare encoder).
    checkpoint_prefix: str = ""

    def __init__(self, config: SpanBertConfig):
        super().__init__()
        self.config = config
        self.load_report: Optional[hub.LoadReport] = None  # set by from_pretrained

    def init_weights(self):
        """BERT's initialisation: normal(0, initializer_range) weights, zero biases, LayerNorm (1, 0).
        (The heads' output biases are created as zeros.)"""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ backend
    @property
    def backend(self) -> str:
        """The hot-op backend of the encoder ``self.bert``."""
        return self.bert.backend

    def set_backend(self, backend: str) -> "SpanBertPreTrainedModel":
        """Route every hot op through ``"auto"``, ``"torch"`` or ``"triton"``; returns the model."""
        self.bert.set_backend(backend)
        return self

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (tied weights once); ``exclude_embeddings`` drops embedding tables."""
        params = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            for module in self.modules():
                if isinstance(module, nn.Embedding):
                    params.pop(id(module.weight), None)
        return sum(p.numel() for p in params.values())

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> Dict[str, torch.Tensor]:
        """The state dict under the HF key names (``checkpoint_prefix`` added), tensors as they are."""
        return {self.checkpoint_prefix + k: v for k, v in self.state_dict(keep_vars=True).items()}

    def load_weights(self, checkpoint: Dict[str, torch.Tensor], source: str = "checkpoint",
                     strict: bool = False) -> hub.LoadReport:
        """Copy a checkpoint's tensors (any BERT/SpanBERT key names) into this model."""
        return hub.load_state_dict_into(self.checkpoint_state(), checkpoint, source=source, strict=strict)

    def checkpoint_files(self) -> Dict[str, dict]:
        """JSON files a subclass adds to its checkpoint folder: ``{file name: values}``."""
        return {}

    @classmethod
    def saved_arguments(cls, path: str) -> dict:
        """Constructor arguments a checkpoint folder saved for this class (a task head's)."""
        return {}

    @classmethod
    def constructor_argument_names(cls) -> Sequence[str]:
        """Keyword-only arguments of the constructor (settings that are not config fields)."""
        params = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in params if p.kind == p.KEYWORD_ONLY]

    @classmethod
    def from_pretrained(cls, path: str, *, strict: bool = False, backend: str = "auto",
                        config: Optional[SpanBertConfig] = None, **kwargs):
        """Build this class from a checkpoint folder (or an HF hub repo id) and load its weights.

        Keyword arguments that name keyword-only constructor arguments build the model (e.g.
        ``validate_targets``, a task head's ``labels``); the others override config fields (e.g.
        ``hidden_dropout_prob=0.0``; fields that define weight shapes must match the checkpoint).
        Parameters the checkpoint lacks (e.g. a fresh task head) keep their initialisation and are
        listed in ``model.load_report.missing``.
        """
        path = hub.resolve_checkpoint(path)
        names = set(cls.constructor_argument_names()) - {"backend"}
        arguments = {k: v for k, v in cls.saved_arguments(path).items() if k in names}
        arguments.update({k: v for k, v in kwargs.items() if k in names})
        config_overrides = {k: v for k, v in kwargs.items() if k not in names}
        config = config if config is not None else SpanBertConfig.load(path)
        if config_overrides:
            config = dataclasses.replace(config, **config_overrides)
        weights_path = hub.find_weights_file(path)
        model = cls(config, **arguments).set_backend(check_backend(backend))
        model.load_report = model.load_weights(hub.read_state_dict(weights_path), source=weights_path, strict=strict)
        return model

    def save_pretrained(self, directory: str) -> str:
        """Write ``config.json`` + ``model.safetensors`` (that transformers' BERT classes load) and
        the :meth:`checkpoint_files`, each atomically. Returns ``directory``."""
        os.makedirs(directory, exist_ok=True)
        hub.save_state_dict(self.checkpoint_state(), directory)
        self.config.save(directory)
        for name, values in self.checkpoint_files().items():
            write_json(os.path.join(directory, name), values)
        return directory
