"""``spanbert-fast pretrain``: options for :func:`spanbert_fast.train.pretrain`, or the CPU demo.

    spanbert-fast pretrain --preset base --data DIR --out runs/base --batch-size 32 --max-steps 100000
    spanbert-fast pretrain --init-from spanbert-base-cased/ --data DIR --out runs/continued
    torchrun --nproc-per-node 8 -m spanbert_fast pretrain --preset large --data DIR --out runs/large
    spanbert-fast pretrain --demo        # tokenizer + corpus + tiny model on CPU, about 2 minutes
"""
from __future__ import annotations

import argparse
import os
import time

from spanbert_fast.commands.training_options import add_loop_arguments, fill_defaults, loop_settings

DEMO_OUT = os.path.join("runs", "demo")
# Defaults of a real run (a batch of 32 for one GPU, the paper's AdamW settings) and of the CPU demo.
PRETRAIN_DEFAULTS = dict(preset="base", batch_size=32, max_steps=10000, save_every=1000, eval_blocks=0,
                         eval_every=0)
# The demo's recipe: 1000 steps of 16 blocks (about 4 passes over its 1.3M-character corpus), peak
# lr 2e-3 after 10 % warm-up, decaying linearly to 0. Tried on this corpus (1200-step runs): held-out
# accuracy flattens after step ~1000; 1e-3 and 1.5e-3 learn less; 3e-3 and a vocabulary of 8000
# (600 steps) stay at guessing the most frequent token.
DEMO_DEFAULTS = dict(preset="tiny", batch_size=16, max_steps=1000, lr=2e-3, warmup_steps=100, save_every=0,
                     eval_blocks=64, eval_every=100)
# Peak learning rate when --lr is not given, by --preset: the paper's 1e-4 for base and large;
# a tiny model barely moves at 1e-4 in a few hundred steps, so tiny gets the demo's.
PRESET_LEARNING_RATES = dict(tiny=DEMO_DEFAULTS["lr"], base=1e-4, large=1e-4)


def run(args: argparse.Namespace) -> int:
    from spanbert_fast.run_lock import FolderLockedError
    from spanbert_fast.train import prepare_demo_corpus, pretrain

    started = time.time()
    if args.demo and (args.config or args.init_from):
        raise SystemExit("pretrain: --demo trains its own tiny model; drop --config/--init-from")
    if args.eval_blocks == 0 and args.eval_every is None:
        args.eval_every = 0  # nothing held out (--eval-blocks 0): no periodic evaluation either
    fill_defaults(args, DEMO_DEFAULTS if args.demo else PRETRAIN_DEFAULTS)  # preset unused with --config/--init-from
    fill_defaults(args, dict(lr=PRESET_LEARNING_RATES[args.preset]))
    if not args.demo and not (args.data and args.out):
        raise SystemExit("pretrain: --data DIR and --out DIR are required (or use --demo)")
    out_dir = args.out or DEMO_OUT
    if args.demo and not args.resume:
        args.overwrite = True  # rerunning the demo replaces the demo's own run (moved aside until a new checkpoint exists)
    try:
        data_dir = prepare_demo_corpus(out_dir, report=print) if args.demo else args.data
        result = pretrain(
            args.config or args.preset, data_dir, out_dir, init_from=args.init_from, batch_size=args.batch_size,
            masking=args.masking, unigram_replacement=args.unigram_replacement, batch_layout=args.batch_layout,
            eval_blocks=args.eval_blocks, eval_every=args.eval_every, num_workers=args.num_workers,
            backend=args.backend, report=print,
            max_steps=args.max_steps, warmup_steps=args.warmup_steps, adam_eps=args.adam_eps,
            cuda_graphs=args.cuda_graphs, **loop_settings(args))
    except (OSError, ValueError, FolderLockedError, FloatingPointError) as error:
        # bad data/checkpoint/settings, a locked or used --out, a full disk, divergence: one line
        raise SystemExit(f"pretrain: error: {error}") from error
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only rank 0 reports
    print(result.summary(time.time() - started))
    return 0


def _default_text(name: str) -> str:
    """What ``--help`` says of an option :func:`run` fills in: its default, and the demo's when it differs."""
    if name == "lr":
        return "by --preset: " + ", ".join(f"{preset} {lr:g}" for preset, lr in PRESET_LEARNING_RATES.items())
    run_default, demo_default = PRETRAIN_DEFAULTS[name], DEMO_DEFAULTS[name]
    text = f"{run_default:g}" if isinstance(run_default, float) else str(run_default)
    if demo_default != run_default:
        text += f"; --demo: {demo_default:g}" if isinstance(demo_default, float) else f"; --demo: {demo_default}"
    return text


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrain", help="pre-train SpanBERT (MLM + SBO) on a prepared corpus",
        description="Pre-train SpanBERT (MLM + SBO) on a corpus made by `spanbert-fast prepare`.",
    )
    parser.add_argument("--demo", action="store_true",
                        help="CPU demo: tokenizer, corpus and tiny model from Python's own documentation (help topics "
                             "and standard-library docstrings); held-out MLM accuracy every --eval-every steps")
    parser.add_argument("--data", help="prepared corpus folder (from `spanbert-fast prepare`)")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--preset", choices=["tiny", "base", "large"], default=None,
                       help="model size of a fresh model: tiny (2 layers, d=128, for CPU), base (12 layers, "
                            "d=768) or large (24 layers, d=1024) (default: "
                            f"{_default_text('preset')})")
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
                             "accuracy at each checkpoint and at the end, in eval_log.csv and training.png "
                             f"(default: {_default_text('eval_blocks')})")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="also evaluate the held-out blocks every this many steps, without saving a "
                             f"checkpoint (0: at checkpoints only) (default: {_default_text('eval_every')})")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="capture the whole training step as one CUDA graph (single GPU; packed batches "
                             "padded to fixed sizes; not with --compile or --grad-accum > 1)")
    parser.add_argument("--num-workers", type=int, default=0,
                        help="processes that mask and collate batches (0: in the training process; "
                             "batches are the same either way)")
    group = parser.add_argument_group("training")
    group.add_argument("--out", help="output folder: checkpoints, log.csv, training.png")
    add_loop_arguments(group, default_text={k: _default_text(k) for k in ("batch_size", "max_steps", "lr", "save_every")})
    group.add_argument("--warmup-steps", type=int, default=None,
                       help=f"linear warm-up steps (default: 1%% of --max-steps; --demo: {DEMO_DEFAULTS['warmup_steps']})")
    group.add_argument("--adam-eps", type=float, default=1e-8, help="AdamW epsilon")
    parser.set_defaults(func=run)
