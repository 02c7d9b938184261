"""The output folder of a training run (``--out``): one run at a time, no run lost to another.

    with open_run_folder(out_dir, "pretrain", resume=False, overwrite=False) as folder:
        Trainer(..., run_folder=folder).train()

:func:`open_run_folder`, on the main process:

* **locks** the folder for the run (:func:`spanbert_fast.run_lock.lock_folder`): a second run on it
  gets :class:`~spanbert_fast.run_lock.FolderLockedError`, one line naming the owner (command, pid,
  host); a lock left by a killed run is stale and taken over;
* removes the ``checkpoints/step-N.<random>.tmp`` folders a killed run left
  (:func:`~spanbert_fast.train.checkpoint.remove_stale_temporaries`);
* refuses a **fresh run into a folder that holds a run** (checkpoints, ``log.csv`` or ``eval_log.csv``) with
  :class:`RunFolderInUse`, unless ``resume`` (continue it) or ``overwrite`` (replace it) is given;
* with ``overwrite``, moves the old run's files (:func:`run_files`, one rename each) into
  ``replaced-run-<time>/`` in the folder, deleted once the new run's first checkpoint exists
  (:meth:`RunFolder.checkpoint_saved`). A run killed before that leaves it there, whole.

Other files in the folder (a corpus, the user's notes, a fine-tuned model's files, which the new
run's end replaces) are not touched.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from typing import Iterator, List, Optional

from spanbert_fast.run_lock import FolderLock, lock_folder
from spanbert_fast.train.checkpoint import CHECKPOINT_DIR, remove_stale_temporaries
from spanbert_fast.train.logging import EVAL_LOG, EVAL_RESULTS, LOG_CSV, PLOT_PNG, TENSORBOARD_DIR

REPLACED_PREFIX = "replaced-run-"


def run_files() -> tuple:
    """``(markers, files)``: a folder holding one of the markers holds a run; ``overwrite`` moves
    the files (the checkpoints, logs, evaluations, plot and TensorBoard events of a run)."""
    return (CHECKPOINT_DIR, LOG_CSV, EVAL_LOG), (CHECKPOINT_DIR, LOG_CSV, EVAL_LOG, EVAL_RESULTS, PLOT_PNG, TENSORBOARD_DIR)


class RunFolderInUse(ValueError):
    """A fresh run into a folder that holds a run, without ``resume`` or ``overwrite``."""


class RunFolder:
    """A claimed run folder (from :func:`open_run_folder`)."""

    def __init__(self, out_dir: str, lock: FolderLock, replaced: Optional[str]):
        self.out_dir = out_dir
        self.lock = lock
        self.replaced = replaced  # where overwrite moved the previous run, until this run's first checkpoint

    def checkpoint_saved(self) -> None:
        """This run has a checkpoint: the run it replaced is deleted now."""
        if self.replaced is not None:
            shutil.rmtree(self.replaced, ignore_errors=True)
            self.replaced = None


def run_markers(out_dir: str) -> List[str]:
    """The run markers (:func:`run_files`) present in ``out_dir`` (``checkpoints`` only when it holds a ``step-N``)."""
    found = []
    for name in run_files()[0]:
        path = os.path.join(out_dir, name)
        if name == CHECKPOINT_DIR:
            if os.path.isdir(path) and any(n.startswith("step-") for n in os.listdir(path)):
                found.append(name)
        elif os.path.exists(path):
            found.append(name)
    return found


def move_run_aside(out_dir: str) -> str:
    """Move the run in ``out_dir`` (its :func:`run_files`) into a new ``replaced-run-<time>`` folder
    there, one rename per file (nothing is copied or deleted); returns that folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = os.path.join(out_dir, f"{REPLACED_PREFIX}{stamp}")
    suffix = 0
    while os.path.exists(aside):
        suffix += 1
        aside = os.path.join(out_dir, f"{REPLACED_PREFIX}{stamp}-{suffix}")
    os.mkdir(aside)
    for name in run_files()[1]:
        if os.path.lexists(os.path.join(out_dir, name)):
            os.replace(os.path.join(out_dir, name), os.path.join(aside, name))
    return aside


@contextlib.contextmanager
def open_run_folder(out_dir: str, command: str, *, resume: bool, overwrite: bool,
                    is_main: bool = True) -> Iterator[Optional[RunFolder]]:
    """Lock and claim ``out_dir`` for a run of ``command`` (see the module docstring); yields the
    :class:`RunFolder` (None on other processes than the main one, which only read)."""
    if not is_main:
        yield None
        return
    with lock_folder(out_dir, command) as lock:
        remove_stale_temporaries(out_dir)
        replaced = None
        markers = run_markers(out_dir)
        if markers and not resume:
            if not overwrite:
                raise RunFolderInUse(
                    f"{out_dir} holds a run ({', '.join(markers)}); pass --resume to continue it or "
                    "--overwrite to replace it (or choose another --out)"
                )
            replaced = move_run_aside(out_dir)
        yield RunFolder(out_dir, lock, replaced)
