"""The one fine-tuning driver every task shares: data -> features -> Trainer -> save -> evaluate.

A *task* object (``ClassificationTask``, ``NerTask``, ``QuestionAnsweringTask``) supplies
the task-specific parts:

* ``max_length`` -> tokens per sequence (cut to the model's positions when larger);
* ``read(path)`` -> examples (clear ``path:line:`` errors on bad input);
* ``build_model(init, examples, backend)`` -> a :class:`SpanBertTaskModel` loaded from
  ``init`` (an encoder checkpoint gets a fresh head; the load report says so);
* ``features(examples, tokenizer, model, path)`` -> feature dicts for
  :func:`~spanbert_fast.tasks.batching.collate_features`;
* ``read_eval(path, model)`` -> the evaluation examples, checked against ``model`` (its
  labels); called **before** training, so a bad evaluation file fails fast;
* ``evaluate(model, tokenizer, path, out_dir, batch_size, examples=None, progress=False)`` ->
  metrics dict (and writes its predictions into ``out_dir``); ``examples`` are those
  ``read_eval`` returned; ``progress`` shows a prediction bar (on with the training bar).

:func:`finetune` does the rest the same way for all of them: tokenizer resolution, seeded
epoch batches, :class:`spanbert_fast.train.Trainer` (AdamW, warm-up + linear decay, bf16
on GPU, checkpoints, progress bar, CSV log), then writes the final model, its ``task.json``
and the tokenizer into ``out_dir`` (a folder ``from_pretrained`` and the CLI reload) and the
evaluation metrics into ``out_dir/eval_results.json``. Each checkpoint folder
(``out_dir/checkpoints/step-N``) holds the tokenizer too, so it is a complete ``--init``.

With an evaluation file, every checkpoint is evaluated too
(:class:`spanbert_fast.train.evaluation.CheckpointEvaluatingTrainer`,
at each ``save_every`` steps; the final model by :func:`finetune` itself): its metrics go into
the checkpoint folder as ``eval_results.json`` and, scalars only, as one row per evaluation of
``out_dir/eval_log.csv`` (``step`` first).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from typing import List, Optional

from spanbert_fast.tasks.batching import EpochBatches, collate_features
from spanbert_fast.tasks.prediction import resolve_tokenizer
from spanbert_fast.train import (
    CheckpointEvaluatingTrainer,
    Trainer,
    TrainingArgs,
    finish_evaluation,
    init_distributed,
    seed_everything,
)
from spanbert_fast.train.run_folder import open_run_folder

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class FineTuneResult:
    model: object  # the fine-tuned task model (in eval mode)
    out_dir: str
    metrics: Optional[dict]  # evaluation metrics of the final model, None without an eval file
    train: object  # spanbert_fast.train.TrainResult
    evaluations: List[dict] = dataclasses.field(default_factory=list)  # this run's eval_log.csv rows

    def summary(self, seconds: float) -> str:
        """What ``spanbert-fast finetune-*`` prints at the end: the training line, where the model,
        checkpoint and log are, each checkpoint's evaluation and the final metrics (JSON)."""
        from spanbert_fast.train import EVAL_LOG, describe_evaluation, describe_training

        train = self.train
        lines = [describe_training(train.history, train.step, seconds),
                 f"model:      {os.path.abspath(self.out_dir)} (config.json, model.safetensors, task.json, tokenizer)"]
        if train.checkpoint:
            lines.append(f"checkpoint: {train.checkpoint}")
        lines.append(f"log:        {os.path.join(self.out_dir, 'log.csv')}")
        if len(self.evaluations) > 1:  # checkpoints were evaluated too
            lines.append(f"evaluations at each checkpoint ({os.path.join(self.out_dir, EVAL_LOG)}):")
            lines += [f"  {describe_evaluation(row)}" for row in self.evaluations]
        if self.metrics is not None:
            lines.append(json.dumps(self.metrics, indent=2, ensure_ascii=False))
        return "\n".join(lines)


# --------------------------------------------------------------------------- the driver
def finetune(task, *, train_path: str, init: str, out_dir: str, eval_path: Optional[str] = None,
             tokenizer_path: Optional[str] = None, batch_size: int = 16, eval_batch_size: int = 64,
             epochs: float = 3.0, max_steps: Optional[int] = None, warmup_ratio: float = 0.1,
             backend: str = "auto", **training_args) -> FineTuneResult:
    """Fine-tune ``task``'s model from the checkpoint ``init`` on ``train_path``.

    ``max_steps`` (optimizer steps) wins over ``epochs``; ``warmup_ratio`` of them warm up.
    ``training_args`` are further :class:`~spanbert_fast.train.TrainingArgs` fields
    (``lr``, ``weight_decay``, ``grad_accum``, ``precision``, ``seed``, ``save_every``,
    ``log_every``, ``progress``, ``resume``, ``overwrite``, ``device`` ...). With ``eval_path`` and
    ``save_every``, each checkpoint is evaluated as well (see the module docstring). Once the
    inputs are read, ``out_dir`` is locked for the rest of the run, and a fresh run into one that
    holds a run needs ``overwrite=True`` (:mod:`spanbert_fast.train.run_folder`).
    """
    from spanbert_fast.data.tokenizer import special_ids

    if eval_batch_size < 1:  # checked now, not at the first evaluation
        raise ValueError(f"eval_batch_size (--eval-batch-size) must be at least 1, got {eval_batch_size}")
    if not 0 <= warmup_ratio <= 1:
        raise ValueError(f"warmup_ratio (--warmup-ratio) must be between 0 and 1, got {warmup_ratio}")
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
    ctx = init_distributed(args.device)
    # The inputs are read and checked: now the output folder is locked and claimed, until the end.
    with open_run_folder(out_dir, f"finetune ({task.name})", resume=args.resume, overwrite=args.overwrite,
                         is_main=ctx.is_main) as run_folder:
        return _train_save_evaluate(task, model, batches, args, ctx, run_folder, tokenizer, eval_path,
                                    eval_examples, eval_batch_size)


def _train_save_evaluate(task, model, batches, args, ctx, run_folder, tokenizer, eval_path, eval_examples,
                         eval_batch_size) -> FineTuneResult:
    """The part of :func:`finetune` that writes into ``args.out_dir`` (locked, claimed)."""
    from spanbert_fast.data.tokenizer import TOKENIZER_FILE, VOCAB_FILE, save_tokenizer

    out_dir = args.out_dir

    def evaluate(trained_model, predictions_dir: Optional[str] = None) -> dict:
        return task.evaluate(trained_model, tokenizer, eval_path, predictions_dir, eval_batch_size,
                             examples=eval_examples, progress=args.progress)

    # The tokenizer goes into out_dir first and from there into every checkpoint folder, so each
    # one reloads (and continues fine-tuning) without --tokenizer.
    tokenizer_files = [os.path.join(out_dir, name) for name in (TOKENIZER_FILE, VOCAB_FILE)]
    options = dict(dist_ctx=ctx, checkpoint_files=tokenizer_files, run_folder=run_folder)
    if eval_path is None:
        trainer = Trainer(model, batches, args, **options)
    else:
        trainer = CheckpointEvaluatingTrainer(model, batches, args, evaluate=evaluate, **options)
    if trainer.ctx.is_main:
        save_tokenizer(tokenizer, out_dir)
    train_result = trainer.train()
    model.eval()
    if not trainer.ctx.is_main:
        return FineTuneResult(model, out_dir, None, train_result)
    model.save_pretrained(out_dir)
    if eval_path is None:
        return FineTuneResult(model, out_dir, None, train_result)
    metrics = evaluate(model, out_dir)
    finish_evaluation(trainer, metrics, train_result.checkpoint, out_dir)
    return FineTuneResult(model, out_dir, metrics, train_result, trainer.evaluations)
