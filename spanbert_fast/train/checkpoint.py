"""Checkpoints of a training run: the one home of their save, load, prune and resume.

Layout (``out_dir/checkpoints/step-00000100/``):

* ``config.json`` + ``model.safetensors``: the model in the HF layout (``from_pretrained`` loads it);
* ``trainer_state.pt``: ``format`` (1), ``step``, the ``optimizer``, ``scheduler`` and ``scaler``
  state dicts, ``rng`` (one RNG state per rank, each a dict of tensors and numbers: see
  :func:`rng_state`), ``batches`` (the batch source's position, or None) and ``args`` (the run's
  :class:`~spanbert_fast.train.loop.TrainingArgs` as a dict). Only tensors, numbers, strings,
  lists and dicts: it loads with ``torch.load(..., weights_only=True)``, so a crafted file cannot
  run code. Files written before ``format`` 1 hold NumPy's RNG state as an array; they load with
  just NumPy's array constructor allowed (:func:`read_trainer_state`);
* files the run asked for (e.g. ``tokenizer.json``), copied in.

Guarantees:

* A folder is written under a temporary name (``step-N.<random>.tmp``) and renamed when complete
  (:func:`spanbert_fast.io.atomic_directory`), so a crash never leaves a half-written one, and an
  existing ``step-N`` is replaced only once its successor is complete. Stale temporaries of a
  killed run are removed when the next run starts (:func:`remove_stale_temporaries`).
* Nothing non-finite is saved: before each save one fused reduction checks every parameter
  (:func:`weights_are_finite`, one host sync per save); diverged weights stop the run with
  :class:`FloatingPointError` naming the step and the last good checkpoint.
* Pruning (``keep_checkpoints``) never deletes the checkpoint just written.
* ``--resume`` continues from the newest checkpoint that reads completely and holds finite
  weights (:func:`resume_checkpoint`); a newer unusable one is renamed ``step-N.unusable`` (kept
  for inspection, never listed again) with a warning naming it and why.
A write that fails (a full disk) raises :class:`OSError` naming the folder, and leaves nothing.

The functions below read and write the parts of a :class:`~spanbert_fast.train.loop.Trainer`
(``model``, ``optimizer``, ``scheduler``, ``scaler``, ``batches``, ``args``, ``ctx``, ``step``,
``last_checkpoint``).
"""
from __future__ import annotations

import dataclasses
import errno
import os
import random
import re
import shutil
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from spanbert_fast.hub import find_weights_file, read_state_dict
from spanbert_fast.io import atomic_directory

CHECKPOINT_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.pt"
STATE_FORMAT = 1
CHECKPOINT_NAME = re.compile(r"step-(\d+)")  # a complete folder (fullmatch)
STALE_TEMPORARY = re.compile(r"step-\d+\.[A-Za-z0-9_]+(\.old)?\.tmp")  # atomic_directory's names (fullmatch)
UNUSABLE_SUFFIX = ".unusable"
# Settings whose change on --resume makes the run differ from an uninterrupted one.
RESUME_CHECKED = ("max_steps", "lr", "warmup_steps", "weight_decay", "grad_accum", "grad_clip", "precision")


class UnusableCheckpoint(ValueError):
    """A checkpoint folder that does not read completely or holds non-finite weights."""


# --------------------------------------------------------------------------- RNG states
def rng_state() -> dict:
    """This process's RNG states as tensors and numbers (what ``weights_only`` loading accepts)."""
    version, python_state, gauss = random.getstate()
    _, numpy_keys, numpy_pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(numpy_keys.astype(np.int64)), "pos": int(numpy_pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`'s result (or a state saved before format 1: tuples and an array)."""
    python, numpy_state = state["python"], state["numpy"]
    if isinstance(python, dict):
        python = (python["version"], tuple(python["state"].tolist()), python["gauss"])
    if isinstance(numpy_state, dict):
        numpy_state = ("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                       numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    random.setstate(python)
    np.random.set_state(numpy_state)
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
    """Complete checkpoint folders (``step-N`` holding ``trainer_state.pt``) under ``out_dir``, oldest first."""
    root = os.path.join(out_dir, CHECKPOINT_DIR)
    if not os.path.isdir(root):
        return []
    steps = sorted((int(m.group(1)), m.string) for m in map(CHECKPOINT_NAME.fullmatch, os.listdir(root)) if m)
    return [os.path.join(root, name) for _, name in steps if os.path.isfile(os.path.join(root, name, TRAINER_STATE))]


def remove_stale_temporaries(out_dir: str) -> List[str]:
    """Delete the ``checkpoints/step-N.<random>.tmp`` folders a killed run left (call it holding the
    run folder's lock: no live run is writing them); returns what was removed."""
    root = os.path.join(out_dir, CHECKPOINT_DIR)
    if not os.path.isdir(root):
        return []
    stale = [os.path.join(root, n) for n in sorted(os.listdir(root)) if STALE_TEMPORARY.fullmatch(n)]
    stale = [path for path in stale if os.path.isdir(path) and not os.path.islink(path)]
    for path in stale:
        shutil.rmtree(path)
    return stale


def prune_checkpoints(out_dir: str, keep: int, current: Optional[str] = None) -> None:
    """Remove all but the newest ``keep`` checkpoints (``keep=0``: keep all); ``current`` (the one
    just written) is always kept."""
    if keep <= 0:
        return
    checkpoints = list_checkpoints(out_dir)
    kept = set(checkpoints[-keep:]) | {current}
    for old in checkpoints:
        if old not in kept:
            shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- finite weights
def weights_are_finite(tensors) -> bool:
    """Whether every value of ``tensors`` is finite: one fused max-abs reduction per tensor list
    (NaN and inf propagate through it) and one host sync."""
    tensors = [t.detach() for t in tensors if t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack(torch._foreach_norm(tensors, float("inf"))).isfinite().all())


def last_good_checkpoint(trainer) -> str:
    """Where to go back to after a divergence, for its one-line message."""
    if trainer.last_checkpoint is None:
        return "no checkpoint of this run was saved (start again with a lower --lr)"
    return f"the last good checkpoint is {trainer.last_checkpoint} (--resume from it with a lower --lr)"


def check_finite_weights(trainer) -> None:
    """Raise :class:`FloatingPointError` (one line: the step and the last good checkpoint) when
    the parameters hold a NaN or an infinity; every rank calls it (same weights under DDP)."""
    if not weights_are_finite(list(trainer.model.parameters())):
        raise FloatingPointError(
            f"step {trainer.step}: the weights are not finite (training diverged), not saving them; "
            f"{last_good_checkpoint(trainer)}"
        )


# --------------------------------------------------------------------------- save
def _disk_is_full(path: str) -> bool:
    try:
        stats = os.statvfs(path)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < (1 << 20)


def _write_error(folder: str, tmp: str, error: Exception) -> OSError:
    """The one-line :class:`OSError` for a failed checkpoint write. torch.save and safetensors
    report a full disk as RuntimeError/SafetensorError without an errno, so the free space of the
    folder is looked at (before the partial folder is removed)."""
    code = getattr(error, "errno", None)
    if code is None and _disk_is_full(tmp):
        code = errno.ENOSPC
    reason = os.strerror(code) if code is not None else str(error).strip().splitlines()[0]
    return OSError(code or errno.EIO, f"cannot write checkpoint {folder}: {reason}; nothing of it was kept")


def save_checkpoint(trainer, files: Sequence[Tuple[str, str]] = ()) -> Optional[str]:
    """Write ``trainer``'s ``checkpoints/step-N`` atomically (rank 0 writes; every rank must call:
    the weights are checked and the RNG states gathered) and prune old ones; returns the folder
    (None on other ranks). ``files``: ``(path, name in the checkpoint)`` pairs copied in."""
    check_finite_weights(trainer)
    rng_states = gather_rng_states(trainer.ctx.world_size)  # a collective: every rank takes part
    if not trainer.ctx.is_main:
        return None
    batches = trainer.batches
    final = checkpoint_path(trainer.args.out_dir, trainer.step)
    with atomic_directory(final) as tmp:
        try:
            trainer.model.save_pretrained(tmp)
            for path, name in files:
                shutil.copyfile(path, os.path.join(tmp, name))  # the umask's permissions, not the source's
            state = {
                "format": STATE_FORMAT,
                "step": trainer.step,
                "optimizer": trainer.optimizer.state_dict(),
                "scheduler": trainer.scheduler.state_dict(),
                "scaler": trainer.scaler.state_dict(),
                "rng": rng_states,  # one per rank
                "batches": batches.state_dict() if hasattr(batches, "state_dict") else None,
                "args": dataclasses.asdict(trainer.args),
            }
            torch.save(state, os.path.join(tmp, TRAINER_STATE))
        except Exception as error:  # noqa: BLE001 -- any write failure: one line, the partial folder removed
            raise _write_error(final, tmp, error) from error
    prune_checkpoints(trainer.args.out_dir, trainer.args.keep_checkpoints, current=final)
    return final


# --------------------------------------------------------------------------- load and resume
def _numpy_array_globals() -> list:
    """What unpickling a NumPy array needs (RNG states saved before format 1), nothing more."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def read_trainer_state(path: str) -> dict:
    """``path/trainer_state.pt`` loaded with ``weights_only=True`` (tensors, numbers, strings,
    containers; plus NumPy arrays for files saved before format 1). Anything else in it (code
    to run) is refused with :class:`pickle.UnpicklingError`."""
    file = os.path.join(path, TRAINER_STATE)
    allowed = _numpy_array_globals()
    if hasattr(torch.serialization, "safe_globals"):  # torch >= 2.5: allowed for this load only
        with torch.serialization.safe_globals(allowed):
            return torch.load(file, map_location="cpu", weights_only=True)
    torch.serialization.add_safe_globals(allowed)  # torch 2.4
    return torch.load(file, map_location="cpu", weights_only=True)


def read_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], dict]:
    """The weights and trainer state of the folder ``path``; raises :class:`UnusableCheckpoint`
    (naming the file and why) when one does not read completely or the weights are not finite."""
    try:
        weights_file = find_weights_file(path)
        weights = read_state_dict(weights_file)
    except Exception as error:  # noqa: BLE001 -- truncated or garbled: safetensors, OSError, JSON ...
        raise UnusableCheckpoint(f"{path}: the weights do not read ({_first_line(error)})") from error
    if not weights_are_finite(list(weights.values())):
        raise UnusableCheckpoint(f"{path}: {os.path.basename(weights_file)} holds non-finite weights")
    try:
        state = read_trainer_state(path)
    except Exception as error:  # noqa: BLE001 -- truncated, or objects other than tensors and numbers
        raise UnusableCheckpoint(f"{path}: {TRAINER_STATE} does not load safely ({_first_line(error)})") from error
    missing = [k for k in ("step", "optimizer", "scheduler", "scaler", "rng", "args") if not isinstance(state, dict) or k not in state]
    if missing:
        raise UnusableCheckpoint(f"{path}: {TRAINER_STATE} lacks {', '.join(missing)}")
    return weights, state


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


def resume_checkpoint(out_dir: str, is_main: bool = True) -> Tuple[str, Dict[str, torch.Tensor], dict]:
    """The newest usable checkpoint under ``out_dir``: ``(folder, weights, trainer state)``.

    Newer unusable ones are skipped with a warning naming each and why; the main process renames
    them ``step-N.unusable`` (so pruning and later resumes never count them). Raises
    FileNotFoundError when there is no checkpoint, :class:`UnusableCheckpoint` when none is usable.
    """
    checkpoints = list_checkpoints(out_dir)
    if not checkpoints:
        raise FileNotFoundError(
            f"--resume: no checkpoint under {os.path.join(out_dir, CHECKPOINT_DIR)}; "
            "run without --resume to start fresh"
        )
    reasons = []
    for path in reversed(checkpoints):
        try:
            weights, state = read_checkpoint(path)
        except UnusableCheckpoint as error:
            reasons.append(str(error))
            if is_main:
                aside = path + UNUSABLE_SUFFIX
                if os.path.exists(aside):
                    aside = f"{aside}-{os.getpid()}"
                os.replace(path, aside)
                warnings.warn(f"--resume: skipping {error}; renamed it {os.path.basename(aside)}")
            continue
        return path, weights, state
    raise UnusableCheckpoint(f"--resume: no usable checkpoint under {out_dir}: {'; '.join(reasons)}")


def load_checkpoint(trainer, path: str, weights: Optional[Dict[str, torch.Tensor]] = None,
                    state: Optional[dict] = None) -> None:
    """Restore ``trainer``'s weights, optimizer, scheduler, scaler, RNG, batch position and step
    from the folder ``path`` (or from its ``weights`` and ``state`` already read by
    :func:`read_checkpoint`). The optimizer keeps the settings of its own run: the trainer
    re-applies them after this."""
    if weights is None or state is None:
        weights, state = read_checkpoint(path)
    trainer.model.load_weights(weights, source=path, strict=True)
    # This run's peak learning rate and weight decay per group (a resume may change --lr or
    # --weight-decay: the warning below says so); load_state_dict would restore the saved ones.
    settings = [(float(group["initial_lr"]), group["weight_decay"]) for group in trainer.optimizer.param_groups]
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scheduler.base_lrs = [peak for peak, _ in settings]
    multipliers = [schedule(trainer.scheduler.last_epoch) for schedule in trainer.scheduler.lr_lambdas]
    for group, (peak, weight_decay), multiplier in zip(trainer.optimizer.param_groups, settings, multipliers):
        group["initial_lr"], group["lr"], group["weight_decay"] = peak, peak * multiplier, weight_decay
    trainer.scaler.load_state_dict(state["scaler"])
    if state.get("batches") is not None:
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
    trainer.last_checkpoint = path
    changed = {k: (v, getattr(trainer.args, k)) for k, v in state["args"].items()
               if k in RESUME_CHECKED and v != getattr(trainer.args, k)}
    if changed and ctx.is_main:
        listed = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in changed.items())
        warnings.warn(f"resuming {path} with changed settings ({listed}); the run will differ "
                      "from an uninterrupted one")
