"""``spanbert-fast finetune-cls | finetune-ner | finetune-qa``: one driver, one set of common flags.

Each subcommand adds only its task's flags and builds its task object; training,
saving (model + ``task.json`` + tokenizer into ``--out``) and evaluation go through
:func:`spanbert_fast.tasks.finetune.finetune` and the shared ``Trainer``.
"""
from __future__ import annotations

import os
import time

from spanbert_fast.commands.training_options import add_loop_arguments, loop_settings


def add_common_arguments(parser, default_max_length: int) -> None:
    """Flags every fine-tuning command takes."""
    data = parser.add_argument_group("data and checkpoints")
    data.add_argument("--train", required=True, help="training file")
    data.add_argument("--eval", help="evaluation file (metrics and predictions written to --out; with "
                                     "--save-every, each checkpoint is evaluated too: eval_log.csv)")
    data.add_argument("--init", required=True, help="checkpoint folder to start from (encoder, pre-training "
                                                    "or fine-tuned; a missing head is initialised fresh)")
    data.add_argument("--out", required=True, help="output folder: model, task.json, tokenizer, logs, results")
    data.add_argument("--tokenizer", help="tokenizer.json, vocab.txt or folder (default: the one in --init)")
    data.add_argument("--max-length", type=int, default=default_max_length, help="tokens per sequence")
    optim = parser.add_argument_group("optimisation (spanbert_fast.train.Trainer)")
    add_loop_arguments(optim, batch_size=16, lr=3e-5, save_every=0,
                       max_steps_help="optimizer steps (overrides --epochs)")
    optim.add_argument("--eval-batch-size", type=int, default=64, help="sequences per batch when evaluating")
    optim.add_argument("--epochs", type=float, default=3.0, help="passes over the training data (may be fractional)")
    optim.add_argument("--warmup-ratio", type=float, default=0.1,
                       help="share of the steps with a linear learning-rate warm-up (then linear decay to 0)")


def run_finetune(make_task, args) -> int:
    """Build the task (``make_task()``) and the training settings from the flags, run :func:`finetune`."""
    from spanbert_fast.run_lock import FolderLockedError
    from spanbert_fast.tasks.finetune import finetune

    started = time.time()
    try:
        result = finetune(
            make_task(), train_path=args.train, eval_path=args.eval, init=args.init, out_dir=args.out,
            tokenizer_path=args.tokenizer, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
            epochs=args.epochs, max_steps=args.max_steps, warmup_ratio=args.warmup_ratio, backend=args.backend,
            **loop_settings(args))
    except (OSError, ValueError, FolderLockedError, FloatingPointError) as error:
        # a bad task flag, bad input (one line naming the file and line), a locked or used --out,
        # divergence: no traceback
        raise SystemExit(f"{args.command}: error: {error}") from error
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        print(result.summary(time.time() - started))
    return 0


def run_classification(args) -> int:
    from spanbert_fast.tasks.classification import ClassificationTask

    return run_finetune(lambda: ClassificationTask(args.max_length, args.pooling, args.use_pooler), args)


def run_ner(args) -> int:
    from spanbert_fast.tasks.ner import NerTask

    return run_finetune(lambda: NerTask(args.max_length), args)


def run_qa(args) -> int:
    from spanbert_fast.tasks.qa import QuestionAnsweringTask

    return run_finetune(lambda: QuestionAnsweringTask(
        args.max_length, args.doc_stride, args.max_query_length, args.max_answer_length, args.n_best,
        args.null_threshold, version_2=True if args.version_2 else None), args)


def register(subparsers) -> None:
    cls = subparsers.add_parser(
        "finetune-cls", help="fine-tune sequence classification on CSV/JSONL text,label data")
    add_common_arguments(cls, default_max_length=128)
    head = cls.add_argument_group("head")
    head.add_argument("--pooling", default="cls", choices=["cls", "mean"], help="[CLS] vector or mean of tokens")
    head.add_argument("--use-pooler", action="store_true", help="dense + tanh before the classifier (BERT pooler)")
    cls.set_defaults(func=run_classification)

    ner = subparsers.add_parser(
        "finetune-ner", help="fine-tune token classification (NER) on CoNLL files; entity-level P/R/F1")
    add_common_arguments(ner, default_max_length=256)
    ner.set_defaults(func=run_ner)

    qa = subparsers.add_parser(
        "finetune-qa", help="fine-tune extractive QA on SQuAD v1.1/v2.0 JSON; EM/F1 and predictions.json")
    add_common_arguments(qa, default_max_length=384)
    head = qa.add_argument_group("windows and decoding")
    head.add_argument("--doc-stride", type=int, default=128, help="tokens between the starts of context windows")
    head.add_argument("--max-query-length", type=int, default=64, help="questions are cut to this many tokens")
    head.add_argument("--max-answer-length", type=int, default=30, help="longest answer in tokens")
    head.add_argument("--n-best", type=int, default=20, help="start/end candidates per window")
    head.add_argument("--null-threshold", type=float, default=0.0,
                      help="v2.0: answer '' when null score - best span score exceeds this")
    head.add_argument("--version-2", action="store_true",
                      help="decode with null answers (default: when the data has impossible questions)")
    qa.set_defaults(func=run_qa)
