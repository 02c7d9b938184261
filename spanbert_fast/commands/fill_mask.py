"""``spanbert-fast fill-mask CKPT "text with [MASK]"``: top-k tokens for every mask."""
from __future__ import annotations

import sys


def run(args) -> int:
    from spanbert_fast.model import SpanBertForPreTraining
    from spanbert_fast.tasks.prediction import resolve_tokenizer
    from spanbert_fast.tasks.fill_mask import fill_mask, mlm_head_missing

    try:
        tokenizer = resolve_tokenizer(args.checkpoint, args.tokenizer)
        model = SpanBertForPreTraining.from_pretrained(args.checkpoint, backend=args.backend)
        predictions = fill_mask(model, tokenizer, args.text, top_k=args.top_k)
    except (OSError, ValueError) as error:  # bad input: one line naming the file, no traceback
        raise SystemExit(f"fill-mask: error: {error}") from error
    missing = mlm_head_missing(model)
    if missing:
        print(f"error: {args.checkpoint} has no masked-LM head weights ({len(missing)} missing, e.g. "
              f"{missing[0]}); fill-mask needs a checkpoint saved with its MLM head (e.g. by pretrain)",
              file=sys.stderr)
        return 1
    for number, masks in enumerate(predictions):
        print(f"[MASK] {number + 1}:")
        for token, score in masks:
            print(f"  {token:<20} {score:.4f}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("fill-mask", help="top-k predictions of the MLM head for each [MASK] in a text")
    parser.add_argument("checkpoint", metavar="CKPT", help="folder with config.json + model.safetensors (+ tokenizer)")
    parser.add_argument("text", help='text with one or more [MASK], e.g. "Paris is the [MASK] of France."')
    parser.add_argument("--top-k", type=int, default=5, help="predictions per mask (default 5)")
    parser.add_argument("--tokenizer", help="tokenizer.json, vocab.txt or a folder with one (default: CKPT)")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"],
                        help="hot-op backend: auto = Triton kernels on CUDA, PyTorch references on CPU")
    parser.set_defaults(func=run)
