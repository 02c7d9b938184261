"""The one fine-tuning driver every task shares: data -> features -> Trainer -> save -> evaluate.

A *task* object (``ClassificationTask``, ``NerTask``, ``QuestionAnsweringTask``) supplies
the task-specific parts:

* ``max_length`` -> tokens per sequence (cut to the model's positions when larger);
* ``read(path)`` -> examples (clear ``path:line:`` errors on bad input);
* ``build_model(init, examples, backend)`` -> a :class:`SpanBertTaskModel` loaded from
  ``init`` (an encoder checkpoint gets a fresh head; the load report says so);
* ``features(examples, tokenizer, model, path)`` -> feature dicts for
  :func:`~spanbert_fast.tasks.common.collate_features`;
* ``read_eval(path, model)`` -> the evaluation examples, checked against ``model`` (its
  labels); called **before** training, so a bad evaluation file fails fast;
* ``evaluate(model, tokenizer, path, out_dir, batch_size, examples=None, progress=False)`` ->
  metrics dict (and writes its predictions into ``out_dir``); ``examples`` are those
  ``read_eval`` returned; ``progress`` shows a prediction bar (on with the training bar).

:func:`finetune` does the rest the same way for all of them: tokenizer resolution, seeded
epoch batches, :class:`spanbert_fast.training.Trainer` (AdamW, warm-up + linear decay, bf16
on GPU, checkpoints, progress bar, CSV log), then writes the final model, its ``task.json``
and the tokenizer into ``out_dir`` (a folder ``from_pretrained`` and the CLI reload) and the
evaluation metrics into ``out_dir/eval_results.json``.

With an evaluation file, every checkpoint is evaluated too (:class:`CheckpointEvaluatingTrainer`,
at each ``save_every`` steps; the final model by :func:`finetune` itself): its metrics go into
the checkpoint folder as ``eval_results.json`` and, scalars only, as one row per evaluation of
``out_dir/eval_log.csv`` (``step`` first).
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import logging
import math
import os
from typing import Callable, List, Optional

import torch

from spanbert_fast.io import atomic_write, write_json
from spanbert_fast.tasks.common import EpochBatches, collate_features, resolve_tokenizer
from spanbert_fast.training import Trainer, TrainingArgs, seed_everything

logger = logging.getLogger(__name__)

EVAL_RESULTS = "eval_results.json"
EVAL_LOG = "eval_log.csv"


@dataclasses.dataclass
class FineTuneResult:
    model: object  # the fine-tuned task model (in eval mode)
    out_dir: str
    metrics: Optional[dict]  # evaluation metrics of the final model, None without an eval file
    train: object  # spanbert_fast.training.TrainResult
    evaluations: List[dict] = dataclasses.field(default_factory=list)  # this run's eval_log.csv rows


# --------------------------------------------------------------------------- evaluation at checkpoints
def scalar_metrics(step: int, metrics: dict) -> dict:
    """``{"step": step, ...}`` with the number-valued metrics (nested ones, e.g. per type, left out)."""
    return {"step": step, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}


def describe_evaluation(row: dict) -> str:
    """``"step 200: exact 71.2, f1 80.05, total 1000"`` for a :func:`scalar_metrics` row."""
    return f"step {row['step']}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "step")


def log_evaluation(out_dir: str, row: dict) -> str:
    """Write ``row`` (:func:`scalar_metrics`) into ``out_dir/eval_log.csv``, atomically.

    Rows of the same step or later are dropped first: they come from a run that was resumed
    from an earlier checkpoint, whose evaluations are being done again.
    """
    path = os.path.join(out_dir, EVAL_LOG)
    rows = []
    if os.path.isfile(path):
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) < row["step"]]
    rows.append(row)
    with atomic_write(path) as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


class CheckpointEvaluatingTrainer(Trainer):
    """The :class:`~spanbert_fast.training.Trainer`, evaluating each checkpoint it saves before
    the last: ``evaluate(model) -> metrics`` (the task's evaluation of the eval file), written to
    ``eval_results.json`` in the checkpoint folder and a row of ``eval_log.csv``.

    The evaluation leaves training as it was: the model goes back to training mode and the RNG
    states are restored, so the run (and a resume from any checkpoint) is the same as one
    without evaluations. Only the main process evaluates; under torchrun the others wait for it
    in the next step's all-reduce, so an evaluation must finish within the process-group timeout.
    """

    def __init__(self, *args, evaluate: Callable[[torch.nn.Module], dict], **kwargs):
        super().__init__(*args, **kwargs)
        self.evaluate_model = evaluate
        self.evaluations: List[dict] = []  # eval_log.csv rows written by this run
        stale_log = os.path.join(self.args.out_dir, EVAL_LOG)
        if self.ctx.is_main and not self.args.resume and os.path.isfile(stale_log):
            os.remove(stale_log)  # a fresh run's evaluations start a fresh log

    def save_checkpoint(self) -> Optional[str]:
        """The Trainer's checkpoint (``Trainer.train`` saves every ``save_every`` steps and at the
        end), then the evaluation of the intermediate ones."""
        path = super().save_checkpoint()
        if path is not None and self.step < self.args.max_steps:  # the final model: finetune() evaluates it
            self.evaluate_checkpoint(path)
        return path

    def evaluate_checkpoint(self, path: str) -> dict:
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            metrics = self.evaluate_model(self.model)
        self.train_model.train()
        write_json(os.path.join(path, EVAL_RESULTS), metrics)
        self.record_evaluation(metrics)
        return metrics

    def record_evaluation(self, metrics: dict) -> None:
        """Add ``metrics`` at the current step to ``eval_log.csv`` (and log them)."""
        row = scalar_metrics(self.step, metrics)
        log_evaluation(self.args.out_dir, row)
        self.evaluations.append(row)
        logger.info("evaluation at %s", describe_evaluation(row))


# --------------------------------------------------------------------------- the driver
def finetune(task, *, train_path: str, init: str, out_dir: str, eval_path: Optional[str] = None,
             tokenizer_path: Optional[str] = None, batch_size: int = 16, eval_batch_size: int = 64,
             epochs: float = 3.0, max_steps: Optional[int] = None, warmup_ratio: float = 0.1,
             backend: str = "auto", **training_args) -> FineTuneResult:
    """Fine-tune ``task``'s model from the checkpoint ``init`` on ``train_path``.

    ``max_steps`` (optimizer steps) wins over ``epochs``; ``warmup_ratio`` of them warm up.
    ``training_args`` are further :class:`~spanbert_fast.training.TrainingArgs` fields
    (``lr``, ``weight_decay``, ``grad_accum``, ``precision``, ``seed``, ``save_every``,
    ``log_every``, ``progress``, ``resume``, ``device`` ...). With ``eval_path`` and
    ``save_every``, each checkpoint is evaluated as well (see the module docstring).
    """
    from spanbert_fast.data.tokenizer import save_tokenizer, special_ids

    if eval_batch_size < 1:  # checked now, not at the first evaluation
        raise ValueError(f"eval_batch_size (--eval-batch-size) must be at least 1, got {eval_batch_size}")
    tokenizer = resolve_tokenizer(init, tokenizer_path)
    pad_id = special_ids(tokenizer).pad
    examples = task.read(train_path)
    seed = training_args.get("seed", 0)
    seed_everything(seed)  # the new head's initial weights follow --seed, not the process's history
    model = task.build_model(init, examples, backend)
    positions = model.config.max_position_embeddings
    if task.max_length > positions:
        logger.warning("max_length %d exceeds the %d positions of the model in %s; using %d",
                       task.max_length, positions, init, positions)
        task.max_length = positions
    # The evaluation file is read and checked now, not after the whole training run.
    eval_examples = task.read_eval(eval_path, model) if eval_path is not None else None
    features = task.features(examples, tokenizer, model, train_path)
    batches = EpochBatches(features, batch_size, functools.partial(collate_features, pad_id=pad_id), seed=seed)
    grad_accum = training_args.get("grad_accum", 1)
    if max_steps is None:
        max_steps = max(1, math.ceil(epochs * batches.batches_per_epoch / grad_accum))
    args = TrainingArgs(out_dir=out_dir, max_steps=max_steps, warmup_steps=int(warmup_ratio * max_steps),
                        **{"plot": False, **training_args})
    logger.info("fine-tuning %s: %d examples -> %d features, %d steps of batch %d",
                task.name, len(examples), len(features), max_steps, batch_size)

    def evaluate(trained_model, predictions_dir: Optional[str] = None) -> dict:
        return task.evaluate(trained_model, tokenizer, eval_path, predictions_dir, eval_batch_size,
                             examples=eval_examples, progress=args.progress)

    if eval_path is None:
        trainer = Trainer(model, batches, args)
    else:
        trainer = CheckpointEvaluatingTrainer(model, batches, args, evaluate=evaluate)
    train_result = trainer.train()
    model.eval()
    if not trainer.ctx.is_main:
        return FineTuneResult(model, out_dir, None, train_result)
    model.save_pretrained(out_dir)
    save_tokenizer(tokenizer, out_dir)
    if eval_path is None:
        return FineTuneResult(model, out_dir, None, train_result)
    metrics = evaluate(model, out_dir)
    write_json(os.path.join(out_dir, EVAL_RESULTS), metrics)
    if train_result.checkpoint is not None:
        write_json(os.path.join(train_result.checkpoint, EVAL_RESULTS), metrics)
    trainer.record_evaluation(metrics)
    return FineTuneResult(model, out_dir, metrics, train_result, trainer.evaluations)
