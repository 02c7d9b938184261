"""Evaluation during and after training, shared by pre-training and fine-tuning.

* :func:`evaluate_batches`: mean loss and ``metrics()`` of a model over held-out batches;
* :class:`CheckpointEvaluatingTrainer`: the :class:`~spanbert_fast.train.loop.Trainer`, evaluating
  each checkpoint it saves (``eval_results.json`` in the folder, a row of ``out_dir/eval_log.csv``)
  and, with ``evaluate_every``, the model every that many steps (a row of ``eval_log.csv``);
* :func:`finish_evaluation`: the same for the final model, after training (and ``training.png``
  drawn again, with every evaluation over the training curves).
"""
from __future__ import annotations

import contextlib
import csv
import logging
import os
from typing import Callable, Dict, Iterable, List, Optional

import torch

from spanbert_fast.io import atomic_write, write_json
from spanbert_fast.train.distributed import move_batch
from spanbert_fast.train.logging import EVAL_LOG, EVAL_RESULTS, PLOT_PNG, output_values, plot_history
from spanbert_fast.train.loop import Trainer

logger = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_batches(model: torch.nn.Module, batches: Iterable[Dict[str, object]], device,
                     autocast=contextlib.nullcontext) -> Dict[str, float]:
    """Mean ``loss`` and ``metrics()`` of ``model`` over ``batches`` (eval mode, no dropout); the
    caller puts the model back in training mode. One host sync at the end."""
    model.eval()
    sums: Dict[str, torch.Tensor] = {}
    count = 0
    for batch in batches:
        batch = move_batch(batch, device)
        with autocast():
            output = model(**batch)
        for key, value in output_values(output).items():
            sums[key] = sums.get(key, 0) + value
        count += 1
    if count == 0:
        raise ValueError("evaluate_batches: no batch to evaluate")
    names = sorted(sums)
    return {name: value / count for name, value in zip(names, torch.stack([sums[n] for n in names]).tolist())}


def scalar_metrics(step: int, metrics: dict) -> dict:
    """``{"step": step, ...}`` with the number-valued metrics (nested ones, e.g. per type, left out)."""
    return {"step": step, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}


def describe_evaluation(row: dict) -> str:
    """``"step 200: exact 71.2, f1 80.05, total 1000"`` for a :func:`scalar_metrics` row."""
    return f"step {row['step']}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "step")


def read_evaluation_log(out_dir: str) -> List[dict]:
    """The rows of ``out_dir/eval_log.csv`` (values as strings), none when there is no such file."""
    path = os.path.join(out_dir, EVAL_LOG)
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def log_evaluation(out_dir: str, row: dict) -> str:
    """Write ``row`` (:func:`scalar_metrics`) into ``out_dir/eval_log.csv``, atomically.

    Rows of the same step or later are dropped first: they come from a run that was resumed
    from an earlier checkpoint, whose evaluations are being done again.
    """
    path = os.path.join(out_dir, EVAL_LOG)
    rows = [r for r in read_evaluation_log(out_dir) if int(r["step"]) < row["step"]]
    rows.append(row)
    with atomic_write(path) as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


class CheckpointEvaluatingTrainer(Trainer):
    """The :class:`~spanbert_fast.train.loop.Trainer`, evaluating each checkpoint it saves before
    the last, and every ``evaluate_every`` steps besides (0: at checkpoints only; no checkpoint
    is saved for these): ``evaluate(model) -> metrics`` (the task's evaluation of its held-out
    data), written to a row of ``eval_log.csv`` and, for a checkpoint, its ``eval_results.json``.
    ``unigram_baselines`` (``{"mlm_acc": 0.075}``: the accuracy of always guessing the most
    frequent held-out target) are drawn in ``training.png`` as labelled horizontal lines.

    The evaluation leaves training as it was: the model goes back to training mode and the RNG
    states are restored, so the run (and a resume from any checkpoint) is the same as one
    without evaluations; its time is left out of the logged throughput. Only the main process
    evaluates; under torchrun the others wait for it in the next step's all-reduce, so an
    evaluation must finish within the process-group timeout.
    """

    def __init__(self, *args, evaluate: Callable[[torch.nn.Module], dict], evaluate_every: int = 0,
                 unigram_baselines: Optional[Dict[str, float]] = None, **kwargs):
        if evaluate_every < 0:
            raise ValueError(f"evaluate_every must be 0 (at checkpoints only) or more, got {evaluate_every}")
        super().__init__(*args, **kwargs)
        self.evaluate_model = evaluate
        self.evaluate_every = evaluate_every
        self.unigram_baselines = dict(unigram_baselines or {})
        self.evaluations: List[dict] = []  # eval_log.csv rows written by this run
        # A fresh run starts without an eval_log.csv: the run folder refuses one holding a run's
        # and overwrite moves it aside (spanbert_fast.train.run_folder).

    def save_checkpoint(self) -> Optional[str]:
        """The Trainer's checkpoint (``Trainer.train`` saves every ``save_every`` steps and at the
        end), then the evaluation of the intermediate ones."""
        path = super().save_checkpoint()
        if path is not None and self.step < self.args.max_steps:  # the final model: the caller evaluates it
            self.evaluate_now(path)
        return path

    def between_steps(self) -> None:
        """The checkpoint when one is due (evaluated as it is saved), then the evaluation every
        ``evaluate_every`` steps when that step has none yet; not at the last step."""
        super().between_steps()
        every, step = self.evaluate_every, self.step
        evaluated = bool(self.evaluations) and self.evaluations[-1]["step"] == step
        if every and step % every == 0 and step < self.args.max_steps and self.ctx.is_main and not evaluated:
            self.evaluate_now()

    def evaluate_now(self, checkpoint: Optional[str] = None) -> dict:
        """Evaluate the model as it is now; record the metrics (and write them into ``checkpoint``)."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            metrics = self.evaluate_model(self.model)
        self.train_model.train()
        if checkpoint is not None:
            write_json(os.path.join(checkpoint, EVAL_RESULTS), metrics)
        self.record_evaluation(metrics)
        return metrics

    def plot(self) -> Optional[str]:
        """``training.png`` with the evaluations of ``eval_log.csv`` drawn over the training curves."""
        if not self.history:
            return None
        return plot_history(self.history, os.path.join(self.args.out_dir, PLOT_PNG),
                            read_evaluation_log(self.args.out_dir), self.unigram_baselines)

    def record_evaluation(self, metrics: dict) -> None:
        """Add ``metrics`` at the current step to ``eval_log.csv`` (and log them)."""
        row = scalar_metrics(self.step, metrics)
        log_evaluation(self.args.out_dir, row)
        self.evaluations.append(row)
        logger.info("evaluation at %s", describe_evaluation(row))


def finish_evaluation(trainer: CheckpointEvaluatingTrainer, metrics: dict, checkpoint: Optional[str],
                      *folders: str) -> dict:
    """Record the final model's ``metrics``: ``eval_results.json`` in its ``checkpoint`` folder and
    in each of ``folders``, and the last row of ``eval_log.csv``. Returns that row."""
    for folder in (*folders, checkpoint):
        if folder is not None:
            write_json(os.path.join(folder, EVAL_RESULTS), metrics)
    trainer.record_evaluation(metrics)
    if trainer.args.plot:  # drawn again with this last evaluation
        trainer.plot()
    return trainer.evaluations[-1]
