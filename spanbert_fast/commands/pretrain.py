"""``spanbert-fast pretrain``: SpanBERT pre-training on a prepared corpus, or the CPU demo.

    spanbert-fast pretrain --preset base --data DIR --out runs/base --batch-size 32 --max-steps 100000
    spanbert-fast pretrain --init-from spanbert-base-cased/ --data DIR --out runs/continued
    torchrun --nproc-per-node 8 -m spanbert_fast pretrain --preset large --data DIR --out runs/large
    spanbert-fast pretrain --demo        # tokenizer + corpus + tiny model on CPU, a few minutes
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

from spanbert_fast.commands.training_options import add_loop_arguments, fill_defaults, loop_settings

DEMO_OUT = os.path.join("runs", "demo")
# Defaults of a real run (DESIGN §3 scaled to one node) and of the CPU demo.
PRETRAIN_DEFAULTS = dict(preset="base", batch_size=32, max_steps=10000, save_every=1000, eval_blocks=0)
DEMO_DEFAULTS = dict(preset="tiny", batch_size=16, max_steps=600, lr=2e-3, warmup_steps=30, save_every=0,
                     eval_blocks=64)
# Peak learning rate when --lr is not given, by --preset: the paper's 1e-4 for base and large;
# a tiny model barely moves at 1e-4 in a few hundred steps, so tiny gets the demo's.
PRESET_LEARNING_RATES = dict(tiny=DEMO_DEFAULTS["lr"], base=1e-4, large=1e-4)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The shared loop options plus pre-training's own; ``None`` ones get filled by ``run``."""
    group = parser.add_argument_group("training")
    group.add_argument("--out", help="output folder: checkpoints, log.csv, training.png")
    add_loop_arguments(group)
    group.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps (default: 1%% of max-steps)")
    group.add_argument("--adam-eps", type=float, default=1e-8)


def training_args_from(args: argparse.Namespace, out_dir: str):
    """:class:`TrainingArgs` from the parsed options."""
    from spanbert_fast.training import TrainingArgs

    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, args.max_steps // 100)
    return TrainingArgs(out_dir=out_dir, max_steps=args.max_steps, warmup_steps=warmup, adam_eps=args.adam_eps,
                        cuda_graphs=args.cuda_graphs, **loop_settings(args))


def build_model(args, vocab_size: int, max_positions: int):
    """The model to train: ``--init-from`` a checkpoint, or a fresh ``--preset`` / ``--config``."""
    from spanbert_fast import SpanBertConfig, SpanBertForPreTraining

    if args.init_from:
        model = SpanBertForPreTraining.from_pretrained(args.init_from, backend=args.backend)
        if model.config.vocab_size != vocab_size:
            raise ValueError(
                f"--init-from {args.init_from}: vocab_size {model.config.vocab_size} differs from the corpus "
                f"tokenizer's {vocab_size}; prepare the corpus with the checkpoint's vocab.txt"
            )
        print(model.load_report.message(args.init_from))
    else:
        if args.config:
            config = SpanBertConfig.load(args.config)
        else:
            config = SpanBertConfig.preset(args.preset)
        config = dataclasses.replace(config, vocab_size=vocab_size)
        model = SpanBertForPreTraining(config).set_backend(args.backend)
    if model.config.max_position_embeddings < max_positions:
        raise ValueError(
            f"the corpus has blocks of {max_positions - 2} tokens (+[CLS]/[SEP]) but the model has only "
            f"{model.config.max_position_embeddings} positions; prepare with a smaller --block-size"
        )
    return model


def packed_batches(args: argparse.Namespace, device) -> bool:
    """``--batch-layout auto``: packed (no padding, no unpad sync) where the Triton kernels run."""
    if args.cuda_graphs:
        if args.batch_layout == "padded":
            raise ValueError("--cuda-graphs needs --batch-layout packed (fixed-shape packed batches)")
        return True
    if args.batch_layout != "auto":
        return args.batch_layout == "packed"
    return device.type == "cuda" and args.backend != "torch"


def run_pretraining(args: argparse.Namespace, data_dir: str, out_dir: str):
    """Build data, model and trainer from ``args`` and train; returns ``(TrainResult, held-out summary)``.

    The summary (``None`` without ``--eval-blocks``) holds the final model's held-out ``mlm_acc``,
    the number of ``blocks`` and masked ``targets``, and ``most_frequent``: the accuracy of always
    guessing the most frequent target token (the unigram baseline the model must beat)."""
    import torch

    from spanbert_fast.data.loader import PretrainingBatches, split_held_out
    from spanbert_fast.data.prepare import BlockDataset
    from spanbert_fast.tasks.common import write_json_atomic
    from spanbert_fast.tasks.finetune import EVAL_RESULTS, CheckpointEvaluatingTrainer, describe_evaluation
    from spanbert_fast.training import Trainer, evaluate_batches, init_distributed, seed_everything

    ctx = init_distributed(args.device)
    dataset = BlockDataset(data_dir)
    training_blocks, held_out = dataset, None
    if args.eval_blocks:
        training_blocks, held_out = split_held_out(dataset, args.eval_blocks, args.seed)
    batches = PretrainingBatches(
        training_blocks, batch_size=args.batch_size, seed=args.seed, masking=args.masking,
        rank=ctx.rank, world_size=ctx.world_size, num_workers=args.num_workers,
        unigram_replacement=args.unigram_replacement, packed=packed_batches(args, ctx.device),
        static_shapes=args.cuda_graphs,
    )
    seed_everything(args.seed)  # same initial weights on every rank and every run
    model = build_model(args, dataset.vocab_size, dataset.block_size + 2)
    model.validate_targets = False  # SpanMasker checked every id against the vocabulary: no host syncs
    if ctx.is_main:
        n = model.num_parameters(exclude_embeddings=True)
        print(f"model: {model.config.num_hidden_layers} layers, d={model.config.hidden_size}, "
              f"{n / 1e6:.1f}M non-embedding parameters; data: {len(dataset)} blocks from {data_dir}")
    from spanbert_fast.data.tokenizer import TOKENIZER_FILE

    # The corpus may name its copy g2-tokenizer.json (prepare --overwrite); checkpoints hold tokenizer.json.
    tokenizer_file = os.path.join(data_dir, dataset.meta["files"]["tokenizer"])
    options = dict(dist_ctx=ctx, checkpoint_files=[(tokenizer_file, TOKENIZER_FILE)])
    if held_out is None:
        return Trainer(model, batches, training_args_from(args, out_dir), **options).train(), None

    # Held-out blocks, masked once (the same masks at every evaluation), padded like training's.
    source = PretrainingBatches(held_out, batch_size=min(args.batch_size, len(held_out)), seed=args.seed,
                                masking=args.masking, unigram_replacement=args.unigram_replacement,
                                packed=packed_batches(args, ctx.device))
    eval_batches = [source.make_batch(0, step) for step in range(source.steps_per_epoch)]

    def evaluate(trained_model) -> dict:
        return evaluate_batches(trained_model, eval_batches, trainer.device, trainer.autocast)

    trainer = CheckpointEvaluatingTrainer(model, batches, training_args_from(args, out_dir), evaluate=evaluate,
                                          **options)
    result = trainer.train()
    if ctx.is_main:  # the final model (checkpoints before it were evaluated as they were saved)
        metrics = evaluate(model)
        if result.checkpoint is not None:
            write_json_atomic(os.path.join(result.checkpoint, EVAL_RESULTS), metrics)
        trainer.record_evaluation(metrics)
        print(f"held-out ({len(eval_batches) * source.batch_size} blocks): {describe_evaluation(trainer.evaluations[-1])}")
    targets = torch.cat([batch["mlm_labels"] for batch in eval_batches])
    summary = dict(mlm_acc=float(metrics["mlm_acc"]) if ctx.is_main else None, targets=len(targets),
                   blocks=len(eval_batches) * source.batch_size,
                   most_frequent=float(torch.bincount(targets).max()) / max(1, len(targets)))
    return result, summary


def prepare_demo(out_dir: str) -> str:
    """Tokenizer + prepared corpus from Python's own help topics (no download); returns the data dir."""
    from spanbert_fast.data.corpus import Document, demo_corpus_texts
    from spanbert_fast.data.prepare import META_FILE, prepare_documents
    from spanbert_fast.data.tokenizer import train_tokenizer

    data_dir = os.path.join(out_dir, "data")
    if os.path.isfile(os.path.join(data_dir, META_FILE)):
        return data_dir
    texts = demo_corpus_texts()
    print(f"demo: training a WordPiece tokenizer on {len(texts)} Python help topics")
    tokenizer = train_tokenizer(texts, vocab_size=4000)
    documents = (Document(text=text, source=f"pydoc_data.topics[{i}]") for i, text in enumerate(texts))
    prepare_documents(documents, tokenizer, data_dir, block_size=126, overwrite=True)
    return data_dir


def run(args: argparse.Namespace) -> int:
    started = time.time()
    if args.demo and (args.config or args.init_from):
        raise SystemExit("pretrain: --demo trains its own tiny model; drop --config/--init-from")
    fill_defaults(args, DEMO_DEFAULTS if args.demo else PRETRAIN_DEFAULTS)  # preset unused with --config/--init-from
    fill_defaults(args, dict(lr=PRESET_LEARNING_RATES[args.preset]))
    if args.demo:
        out_dir = args.out or DEMO_OUT
        data_dir = prepare_demo(out_dir)
    else:
        if not args.data or not args.out:
            raise SystemExit("pretrain: --data DIR and --out DIR are required (or use --demo)")
        out_dir, data_dir = args.out, args.data
    try:
        result, held_out = run_pretraining(args, data_dir, out_dir)
    except (OSError, ValueError) as error:  # bad data/checkpoint/settings: one line naming the path
        raise SystemExit(f"pretrain: error: {error}") from error
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only rank 0 reports
    if result.history:
        first, last = result.history[0], result.history[-1]
        print(f"loss {float(first['loss']):.3f} -> {float(last['loss']):.3f} over {result.step} steps "
              f"({time.time() - started:.0f} s)")
    if held_out:
        print(f"held-out MLM accuracy {held_out['mlm_acc']:.3f} on {held_out['blocks']} blocks "
              f"({held_out['targets']} masked tokens; always guessing the most frequent one: "
              f"{held_out['most_frequent']:.3f})")
    print(f"checkpoint: {result.checkpoint}")
    print(f"log:        {os.path.join(result.out_dir, 'log.csv')}")
    if result.plot:
        print(f"plot:       {result.plot}")
    print(f"everything is in {os.path.abspath(result.out_dir)}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrain", help="pre-train SpanBERT (MLM + SBO) on a prepared corpus",
        description="Pre-train SpanBERT (MLM + SBO) on a corpus made by `spanbert-fast prepare`.",
    )
    parser.add_argument("--demo", action="store_true",
                        help="CPU demo: tokenizer, corpus and tiny model from Python's help topics")
    parser.add_argument("--data", help="prepared corpus folder (from `spanbert-fast prepare`)")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--preset", choices=["tiny", "base", "large"], default=None)
    model.add_argument("--config", help="a config.json to build a fresh model from")
    model.add_argument("--init-from", help="continue pre-training from an HF BERT / SpanBERT checkpoint folder")
    parser.add_argument("--masking", choices=["span", "word", "subword"], default="span",
                        help="span (SpanBERT), word (whole-word) or subword masking (the paper's ablation)")
    parser.add_argument("--unigram-replacement", action="store_true",
                        help="draw the 10%% random replacement tokens from the corpus unigram counts "
                             "(default: uniform over non-special ids)")
    parser.add_argument("--batch-layout", choices=["auto", "padded", "packed"], default="auto",
                        help="packed: real tokens only, for the varlen kernels (auto: packed on CUDA "
                             "unless --backend torch; padded on CPU, where the reference attention is padded)")
    parser.add_argument("--eval-blocks", type=int, default=None,
                        help="hold out this many blocks (drawn with --seed) and report their loss and MLM/SBO "
                             "accuracy at each checkpoint and at the end, in eval_log.csv (default: none; demo: 64)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="capture the whole training step as one CUDA graph (single GPU; packed batches "
                             "padded to fixed sizes; not with --compile or --grad-accum > 1)")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="processes that mask and collate batches (0: in the training process; "
                             "batches are the same either way)")
    add_training_arguments(parser)
    parser.set_defaults(func=run)
