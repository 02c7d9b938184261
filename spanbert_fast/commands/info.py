"""``spanbert-fast info``: versions, device and which backends can run here; with ``--data``, what
a prepared corpus looks like to the training step (block lengths, padding per batch layout)."""
from __future__ import annotations

from spanbert_fast.data.corpus_stats import corpus_info
from spanbert_fast.environment import collect_info


def _print(info: dict) -> None:
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")


def run(args) -> int:
    if args.batch_size < 1:
        raise SystemExit(f"info: --batch-size must be at least 1, got {args.batch_size}")
    _print(collect_info())
    if args.tokenizer:
        from spanbert_fast.data.tokenizer import casing_decision
        try:
            _print({"tokenizer": args.tokenizer, "tokenizer casing": casing_decision(args.tokenizer)})
        except (OSError, ValueError) as error:
            raise SystemExit(f"info: --tokenizer: {error}") from error
    if args.data:
        print()
        try:
            _print(corpus_info(args.data, args.batch_size))
        except (OSError, ValueError) as error:  # a missing or damaged corpus: one line naming the file
            raise SystemExit(f"info: error: {error}") from error
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("info", help="print versions, device and backend availability")
    parser.add_argument("--data", help="also describe this prepared corpus: block lengths and the share of "
                                       "padding each batch layout computes")
    parser.add_argument("--tokenizer", help="also say whether this tokenizer (folder, tokenizer.json or vocab.txt) "
                                            "lower-cases, and why")
    parser.add_argument("--batch-size", type=int, default=32, help="with --data: sequences per batch (default 32)")
    parser.set_defaults(func=run)
