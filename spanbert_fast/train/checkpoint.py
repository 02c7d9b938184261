"""Checkpoints of a training run: the one home of their save, load, prune and resume.

Layout (``out_dir/checkpoints/step-00000100/``):

* ``config.json`` + ``model.safetensors``: the model in the HF layout (``from_pretrained`` loads it);
* ``trainer_state.pt``: ``step``, the ``optimizer``, ``scheduler`` and ``scaler`` state dicts,
  ``rng`` (one RNG state per rank), ``batches`` (the batch source's position, or None) and
  ``args`` (the run's :class:`~spanbert_fast.train.loop.TrainingArgs` as a dict);
* files the run asked for (e.g. ``tokenizer.json``), copied in.

A folder is written under a temporary name and renamed when complete
(:func:`spanbert_fast.io.atomic_directory`), so a crash never leaves a half-written one;
``--resume`` continues from the newest complete folder. The functions below read and write the
parts of a :class:`~spanbert_fast.train.loop.Trainer` (``model``, ``optimizer``, ``scheduler``,
``scaler``, ``batches``, ``args``, ``ctx``, ``step``).
"""
from __future__ import annotations

import dataclasses
import os
import random
import shutil
import warnings
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from spanbert_fast.hub import find_weights_file, read_state_dict
from spanbert_fast.io import atomic_directory

CHECKPOINT_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.pt"
# Settings whose change on --resume makes the run differ from an uninterrupted one.
RESUME_CHECKED = ("max_steps", "lr", "warmup_steps", "weight_decay", "grad_accum", "grad_clip", "precision")


# --------------------------------------------------------------------------- RNG states
def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states(world_size: int) -> List[dict]:
    """Every rank's RNG state, gathered on all ranks (each rank draws its own dropout)."""
    if world_size == 1:
        return [rng_state()]
    states: List[Optional[dict]] = [None] * world_size
    dist.all_gather_object(states, rng_state())
    return states


# --------------------------------------------------------------------------- folders
def checkpoint_path(out_dir: str, step: int) -> str:
    return os.path.join(out_dir, CHECKPOINT_DIR, f"step-{step:08d}")


def list_checkpoints(out_dir: str) -> List[str]:
    """Complete checkpoint folders under ``out_dir``, oldest first."""
    root = os.path.join(out_dir, CHECKPOINT_DIR)
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith("step-") and not n.endswith(".tmp"))
    return [os.path.join(root, n) for n in names if os.path.isfile(os.path.join(root, n, TRAINER_STATE))]


def prune_checkpoints(out_dir: str, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints (``keep=0``: keep all)."""
    if keep > 0:
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- save and load
def save_checkpoint(trainer, files: Sequence[Tuple[str, str]] = ()) -> Optional[str]:
    """Write ``trainer``'s ``checkpoints/step-N`` atomically (rank 0 writes; every rank must call:
    the RNG states are gathered) and prune old ones; returns the folder (None on other ranks).
    ``files``: ``(path, name in the checkpoint)`` pairs copied in."""
    rng_states = gather_rng_states(trainer.ctx.world_size)  # a collective: every rank takes part
    if not trainer.ctx.is_main:
        return None
    batches = trainer.batches
    final = checkpoint_path(trainer.args.out_dir, trainer.step)
    with atomic_directory(final) as tmp:
        trainer.model.save_pretrained(tmp)
        for path, name in files:
            shutil.copy2(path, os.path.join(tmp, name))
        state = {
            "step": trainer.step,
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "scaler": trainer.scaler.state_dict(),
            "rng": rng_states,  # one per rank
            "batches": batches.state_dict() if hasattr(batches, "state_dict") else None,
            "args": dataclasses.asdict(trainer.args),
        }
        torch.save(state, os.path.join(tmp, TRAINER_STATE))
    prune_checkpoints(trainer.args.out_dir, trainer.args.keep_checkpoints)
    return final


def load_checkpoint(trainer, path: str) -> None:
    """Restore ``trainer``'s weights, optimizer, scheduler, scaler, RNG, batch position and step
    from the folder ``path`` (the optimizer keeps the settings of its own run: the trainer
    re-applies them after this)."""
    trainer.model.load_weights(read_state_dict(find_weights_file(path)), source=path, strict=True)
    state = torch.load(os.path.join(path, TRAINER_STATE), map_location="cpu", weights_only=False)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    # tensors if saved under cuda_graphs
    trainer.scheduler.base_lrs = [float(lr) for lr in trainer.scheduler.base_lrs]
    trainer.scaler.load_state_dict(state["scaler"])
    if state["batches"] is not None:
        if not hasattr(trainer.batches, "load_state_dict"):
            raise ValueError(f"{path}: checkpoint has a data position but the batch source cannot restore it")
        trainer.batches.load_state_dict(state["batches"])
    ctx = trainer.ctx
    if len(state["rng"]) != ctx.world_size:
        raise ValueError(
            f"{path}: saved by {len(state['rng'])} processes, resumed with {ctx.world_size}; "
            "resume with the same number of processes"
        )
    set_rng_state(state["rng"][ctx.rank])
    trainer.step = state["step"]
    changed = {k: (v, getattr(trainer.args, k)) for k, v in state["args"].items()
               if k in RESUME_CHECKED and v != getattr(trainer.args, k)}
    if changed and ctx.is_main:
        listed = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in changed.items())
        warnings.warn(f"resuming {path} with changed settings ({listed}); the run will differ "
                      "from an uninterrupted one")


def latest_checkpoint(out_dir: str) -> str:
    """The newest complete checkpoint under ``out_dir`` (what ``--resume`` continues from)."""
    checkpoints = list_checkpoints(out_dir)
    if not checkpoints:
        raise FileNotFoundError(
            f"--resume: no checkpoint under {os.path.join(out_dir, CHECKPOINT_DIR)}; "
            "run without --resume to start fresh"
        )
    return checkpoints[-1]
