"""Training: one loop for pre-training and fine-tuning, and the pre-training driver.

=====================  ======================================================================
module                 what lives there
=====================  ======================================================================
``loop``               :class:`Trainer`, :class:`TrainingArgs`, AdamW groups, LR schedule
``checkpoint``         checkpoint folders: save, load, prune, resume (and their layout)
``logging``            metric window, ``log.csv``, TensorBoard, progress bar, plot
``evaluation``         held-out evaluation, evaluating each checkpoint (``eval_log.csv``)
``cuda_graphs``        the whole step captured as one CUDA graph
``distributed``        torchrun rank and device, seeds, batches onto the device
``pretrain``           :func:`pretrain`: corpus + model + trainer, the library behind ``spanbert-fast pretrain``
=====================  ======================================================================

Fine-tuning's driver is :func:`spanbert_fast.tasks.finetune` (it uses this package).
"""
from spanbert_fast.train.checkpoint import list_checkpoints
from spanbert_fast.train.distributed import DistributedContext, init_distributed, move_batch, seed_everything
from spanbert_fast.train.evaluation import (
    EVAL_LOG,
    EVAL_RESULTS,
    CheckpointEvaluatingTrainer,
    describe_evaluation,
    evaluate_batches,
    finish_evaluation,
)
from spanbert_fast.train.logging import describe_training
from spanbert_fast.train.loop import Trainer, TrainingArgs, TrainResult, parameter_groups, warmup_linear_decay
from spanbert_fast.train.pretrain import PretrainResult, pretrain, prepare_demo_corpus

__all__ = [
    "Trainer", "TrainingArgs", "TrainResult", "parameter_groups", "warmup_linear_decay",
    "list_checkpoints", "DistributedContext", "init_distributed", "move_batch", "seed_everything",
    "EVAL_LOG", "EVAL_RESULTS", "CheckpointEvaluatingTrainer", "describe_evaluation", "evaluate_batches",
    "finish_evaluation", "describe_training", "pretrain", "PretrainResult", "prepare_demo_corpus",
]
