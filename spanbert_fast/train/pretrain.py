"""The library pre-training driver: ``pretrain(config, data_dir, out_dir, ...)`` -> :class:`PretrainResult`.

    from spanbert_fast.train import pretrain
    result = pretrain("tiny", "data/", "runs/tiny", max_steps=600, lr=2e-3, batch_size=16)
    result = pretrain(None, "data/", "runs/continued", init_from="spanbert-base-cased/")

What it wires together (``spanbert-fast pretrain`` only parses options and calls it):

* the corpus (:class:`~spanbert_fast.data.prepare.BlockDataset`, made by ``spanbert-fast prepare``)
  -> span masking and batches (:class:`~spanbert_fast.data.loader.PretrainingBatches`, each rank
  its own slice), packed where the Triton kernels run, fixed-shape under ``cuda_graphs``;
* the model: ``config`` (a :class:`SpanBertConfig`, a preset name or a ``config.json``) with the
  corpus's vocabulary, or ``init_from`` a checkpoint; ``validate_targets=False`` (the masker checked
  every id, the collator every ``head_rows``: no host syncs);
* the :class:`~spanbert_fast.train.loop.Trainer` (checkpoints carry the corpus tokenizer as
  ``tokenizer.json``) and, with ``eval_blocks``, the held-out evaluation at every checkpoint,
  every ``eval_every`` steps and at the end (``eval_log.csv``, ``eval_results.json``; ``training.png``
  draws it over the training curves, with the unigram baseline).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, List, Optional, Union

import torch

from spanbert_fast.config import SpanBertConfig
from spanbert_fast.model import SpanBertForPreTraining
from spanbert_fast.train.distributed import init_distributed, seed_everything
from spanbert_fast.train.evaluation import CheckpointEvaluatingTrainer, evaluate_batches, finish_evaluation
from spanbert_fast.train.loop import Trainer, TrainingArgs, TrainResult
from spanbert_fast.train.run_folder import open_run_folder

logger = logging.getLogger(__name__)

BATCH_LAYOUTS = ("auto", "padded", "packed")
DEMO_VOCAB_SIZE = 4000  # the demo tokenizer's vocabulary
DEMO_BLOCK_SIZE = 126  # tokens per block of the demo corpus (128 with [CLS] and [SEP])


@dataclasses.dataclass
class PretrainResult:
    train: TrainResult  # step, history, out_dir, last checkpoint, plot
    model: SpanBertForPreTraining
    evaluations: List[dict] = dataclasses.field(default_factory=list)  # eval_log.csv rows of this run
    held_out_blocks: int = 0  # blocks in each held-out evaluation
    held_out_targets: int = 0  # masked tokens the MLM head predicts in each held-out evaluation
    # accuracy of always guessing the held-out targets' most frequent token: the unigram baseline
    # the model's held-out ``mlm_acc`` must beat
    unigram_baseline: Optional[float] = None

    @property
    def metrics(self) -> Optional[dict]:
        """The held-out evaluation of the final model (None without ``eval_blocks``)."""
        return self.evaluations[-1] if self.evaluations else None

    def summary(self, seconds: float) -> str:
        """What ``spanbert-fast pretrain`` prints at the end: the held-out evaluation, the training
        line, and where the checkpoint, log and plot are."""
        from spanbert_fast.train.evaluation import describe_evaluation
        from spanbert_fast.train.logging import describe_training

        train, lines = self.train, []
        if self.metrics is not None:
            lines.append(f"held-out ({self.held_out_blocks} blocks): {describe_evaluation(self.metrics)}")
            lines.append(f"held-out MLM accuracy {float(self.metrics['mlm_acc']):.3f} on {self.held_out_blocks} "
                         f"blocks ({self.held_out_targets} masked tokens; always guessing the most frequent one: "
                         f"{self.unigram_baseline:.3f})")
            if len(self.evaluations) > 1:  # the held-out curve (eval_log.csv, training.png), in one line
                lines.append("held-out MLM accuracy by step: " + ", ".join(
                    f"{row['step']}: {float(row['mlm_acc']):.3f}" for row in self.evaluations))
        lines += [describe_training(train.history, train.step, seconds),
                  f"checkpoint: {train.checkpoint}",
                  f"log:        {os.path.join(train.out_dir, 'log.csv')}"]
        if train.plot:
            lines.append(f"plot:       {train.plot}")
        lines.append(f"everything is in {os.path.abspath(train.out_dir)}")
        return "\n".join(lines)


def uses_packed_batches(batch_layout: str, backend: str, device, cuda_graphs: bool) -> bool:
    """``batch_layout="auto"``: packed (no padding, no unpad sync) where the Triton kernels run."""
    if batch_layout not in BATCH_LAYOUTS:
        raise ValueError(f"batch_layout must be one of {BATCH_LAYOUTS}, got {batch_layout!r}")
    if cuda_graphs:
        if batch_layout == "padded":
            raise ValueError("--cuda-graphs needs --batch-layout packed (fixed-shape packed batches)")
        return True
    if batch_layout != "auto":
        return batch_layout == "packed"
    return device.type == "cuda" and backend != "torch"


def build_model(config: Union[SpanBertConfig, str, None], init_from: Optional[str], vocab_size: int,
                max_positions: int, backend: str, report: Callable[[str], None]) -> SpanBertForPreTraining:
    """The model to train: ``init_from`` a checkpoint, or a fresh one from ``config`` (a
    :class:`SpanBertConfig`, a preset name, or a ``config.json`` path) with ``vocab_size``."""
    if init_from:
        model = SpanBertForPreTraining.from_pretrained(init_from, backend=backend, validate_targets=False)
        if model.config.vocab_size != vocab_size:
            raise ValueError(
                f"--init-from {init_from}: vocab_size {model.config.vocab_size} differs from the corpus "
                f"tokenizer's {vocab_size}; prepare the corpus with the checkpoint's vocab.txt"
            )
        report(model.load_report.message(init_from))
    else:
        if isinstance(config, str):
            is_file = os.path.exists(config) or config.endswith(".json")
            config = SpanBertConfig.load(config) if is_file else SpanBertConfig.preset(config)
        if not isinstance(config, SpanBertConfig):
            raise ValueError("pretrain: give a config (SpanBertConfig, preset name or config.json) or init_from")
        config = dataclasses.replace(config, vocab_size=vocab_size)
        model = SpanBertForPreTraining(config, backend=backend, validate_targets=False)
    if model.config.max_position_embeddings < max_positions:
        raise ValueError(
            f"the corpus has blocks of {max_positions - 2} tokens (+[CLS]/[SEP]) but the model has only "
            f"{model.config.max_position_embeddings} positions; prepare with a smaller --block-size"
        )
    return model


def pretrain(config: Union[SpanBertConfig, str, None], data_dir: str, out_dir: str, *,
             init_from: Optional[str] = None, batch_size: int = 32, masking: str = "span",
             unigram_replacement: bool = False, batch_layout: str = "auto", eval_blocks: int = 0,
             eval_every: int = 0, num_workers: int = 0, backend: str = "auto",
             report: Callable[[str], None] = logger.info,
             **training_args) -> PretrainResult:
    """Pre-train SpanBERT (MLM + SBO) on the prepared corpus ``data_dir``; everything goes to ``out_dir``.

    ``training_args`` are :class:`~spanbert_fast.train.loop.TrainingArgs` fields (``max_steps``
    is required; ``warmup_steps`` defaults to 1% of it). ``eval_blocks`` holds out that many
    blocks (drawn with ``seed``), evaluated at each checkpoint, every ``eval_every`` steps (0: at
    checkpoints only; no checkpoint is saved for these) and at the end. ``report`` receives
    the one-line summaries (the command prints them). Once the corpus and model are ready,
    ``out_dir`` is locked for the rest of the run, and a fresh run into one that holds a run needs
    ``overwrite=True`` (:mod:`spanbert_fast.train.run_folder`).
    """
    from spanbert_fast.data.loader import PretrainingBatches, split_held_out
    from spanbert_fast.data.prepare import BlockDataset
    from spanbert_fast.data.tokenizer import TOKENIZER_FILE

    max_steps = training_args.get("max_steps")
    if max_steps is None:
        raise ValueError("pretrain: max_steps is required")
    if training_args.get("warmup_steps") is None:
        training_args["warmup_steps"] = max(1, max_steps // 100)
    args = TrainingArgs(out_dir=out_dir, **training_args)
    if eval_every < 0:
        raise ValueError(f"eval_every (--eval-every) must be 0 (at checkpoints only) or more, got {eval_every}")
    if eval_every and not eval_blocks:
        raise ValueError("eval_every (--eval-every) needs held-out blocks to evaluate: give eval_blocks (--eval-blocks)")
    ctx = init_distributed(args.device)
    dataset = BlockDataset(data_dir)
    training_blocks, held_out = dataset, None
    if eval_blocks:
        training_blocks, held_out = split_held_out(dataset, eval_blocks, args.seed)
    packed = uses_packed_batches(batch_layout, backend, ctx.device, args.cuda_graphs)
    batches = PretrainingBatches(
        training_blocks, batch_size=batch_size, seed=args.seed, masking=masking,
        rank=ctx.rank, world_size=ctx.world_size, num_workers=num_workers,
        unigram_replacement=unigram_replacement, packed=packed, static_shapes=args.cuda_graphs,
    )
    seed_everything(args.seed)  # same initial weights on every rank and every run
    model = build_model(config, init_from, dataset.vocab_size, dataset.block_size + 2, backend, report)
    if ctx.is_main:
        n = model.num_parameters(exclude_embeddings=True)
        report(f"model: {model.config.num_hidden_layers} layers, d={model.config.hidden_size}, "
               f"{n / 1e6:.1f}M non-embedding parameters; data: {len(dataset)} blocks from {data_dir}")
    # The corpus may name its copy g2-tokenizer.json (prepare --overwrite); checkpoints hold tokenizer.json.
    tokenizer_file = os.path.join(data_dir, dataset.meta["files"]["tokenizer"])
    # The inputs are read and checked: now the output folder is locked and claimed, until the end.
    with open_run_folder(out_dir, "pretrain", resume=args.resume, overwrite=args.overwrite,
                         is_main=ctx.is_main) as run_folder:
        options = dict(dist_ctx=ctx, checkpoint_files=[(tokenizer_file, TOKENIZER_FILE)], run_folder=run_folder)
        if held_out is None:
            return PretrainResult(Trainer(model, batches, args, **options).train(), model)

        # Held-out blocks, masked once (the same masks at every evaluation), padded like training's.
        source = PretrainingBatches(held_out, batch_size=min(batch_size, len(held_out)), seed=args.seed,
                                    masking=masking, unigram_replacement=unigram_replacement, packed=packed)
        eval_batches = [source.make_batch(0, step) for step in range(source.steps_per_epoch)]
        targets = torch.cat([batch["mlm_labels"] for batch in eval_batches])
        targets = targets[targets >= 0]
        baseline = float(torch.bincount(targets).max()) / len(targets) if len(targets) else None

        def evaluate(trained_model) -> dict:
            return evaluate_batches(trained_model, eval_batches, trainer.device, trainer.autocast)

        trainer = CheckpointEvaluatingTrainer(model, batches, args, evaluate=evaluate, evaluate_every=eval_every,
                                              unigram_baselines=None if baseline is None else {"mlm_acc": baseline},
                                              **options)
        result = trainer.train()
        if ctx.is_main:  # the final model (the earlier evaluations were done during training)
            finish_evaluation(trainer, evaluate(model), result.checkpoint)
        return PretrainResult(result, model, trainer.evaluations, len(eval_batches) * source.batch_size,
                              len(targets), baseline)


def prepare_demo_corpus(out_dir: str, report: Callable[[str], None] = logger.info) -> str:
    """Tokenizer + prepared corpus from Python's own documentation (no download:
    :func:`~spanbert_fast.data.corpus.demo_corpus`) in ``out_dir/data``, unless that folder holds
    it already; returns that folder (what ``pretrain --demo`` trains on)."""
    import json

    from spanbert_fast.data.corpus import DEMO_CORPUS, demo_corpus
    from spanbert_fast.data.prepare import META_FILE, prepare_documents
    from spanbert_fast.data.tokenizer import train_tokenizer

    data_dir = os.path.join(out_dir, "data")
    meta_path = os.path.join(data_dir, META_FILE)
    if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            if json.load(f).get("demo_corpus") == DEMO_CORPUS:
                return data_dir
    documents = demo_corpus()
    report(f"demo: training a WordPiece tokenizer ({DEMO_VOCAB_SIZE} tokens) on {DEMO_CORPUS} "
           f"({len(documents)} documents, {sum(len(d.text) for d in documents) / 1e6:.1f}M characters)")
    tokenizer = train_tokenizer([document.text for document in documents], vocab_size=DEMO_VOCAB_SIZE)
    prepare_documents(documents, tokenizer, data_dir, block_size=DEMO_BLOCK_SIZE, overwrite=True,
                      extra_meta={"demo_corpus": DEMO_CORPUS})
    return data_dir
