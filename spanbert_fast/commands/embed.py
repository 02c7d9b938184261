"""``spanbert-fast embed CKPT --input FILE --out FILE.npy``: sentence or token embeddings.

Row ``i`` of the output is line ``i`` of ``--input`` (one text per line; empty lines give
the embedding of ``[CLS] [SEP]``). Formats: see :mod:`spanbert_fast.tasks.embeddings`.
"""
from __future__ import annotations

import re


def input_lines(text: str) -> list:
    """The lines of ``text`` split on ``\\n`` only (a trailing ``\\r`` dropped), so row ``i`` is
    line ``i``: ``str.splitlines`` would also split on form feeds, ``\\x1c``-``\\x1e``, ``\\x85``,
    ``\\u2028`` and ``\\u2029`` inside a text. A final newline does not add an empty text."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def run(args) -> int:
    try:
        return _run(args)
    except (OSError, ValueError) as error:  # bad input: one line naming the file, no traceback
        raise SystemExit(f"embed: error: {error}") from error


def _run(args) -> int:
    from spanbert_fast.model import SpanBertModel
    from spanbert_fast.tasks.embeddings import (check_embeddings_path, embed, parse_layers, save_embeddings,
                                                token_ids_for)
    from spanbert_fast.tasks.prediction import resolve_tokenizer
    from spanbert_fast.tasks.text_files import read_utf8

    check_embeddings_path(args.out, per_token=args.pool == "none")  # before the work, not after it
    layers = parse_layers(args.layer)
    texts = input_lines(read_utf8(args.input))
    tokenizer = resolve_tokenizer(args.checkpoint, args.tokenizer)
    model = SpanBertModel.from_pretrained(args.checkpoint, backend=args.backend)
    if args.device:
        model.to(args.device)
    vectors = embed(model, tokenizer, texts, layer=layers, pool=args.pool, batch_size=args.batch_size,
                    max_length=args.max_length, progress=not args.no_progress)
    input_ids = None
    if args.pool == "none":
        max_length = min(args.max_length or model.config.max_position_embeddings, model.config.max_position_embeddings)
        input_ids = token_ids_for(tokenizer, texts, max_length)
    save_embeddings(args.out, vectors, input_ids)
    shape = vectors.shape if args.pool != "none" else (sum(len(v) for v in vectors), model.config.hidden_size)
    print(f"wrote {args.out}: {len(texts)} texts, embeddings {tuple(shape)} (pool={args.pool}, layer={args.layer})")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "embed", help="sentence ([CLS] or mean) or per-token embeddings of a text file, one text per line")
    parser.add_argument("checkpoint", metavar="CKPT", help="folder with config.json + model.safetensors (+ tokenizer)")
    parser.add_argument("--input", required=True, help="UTF-8 text file, one text per line")
    parser.add_argument("--out", required=True, help="FILE.npy for --pool cls|mean; FILE.npz for --pool none")
    parser.add_argument("--layer", default="-1",
                        help="hidden state to use: -1 = last layer, 0 = embeddings; FIRST..LAST averages a range, "
                             "e.g. -4..-1")
    parser.add_argument("--pool", default="cls", choices=["cls", "mean", "none"],
                        help="cls: [CLS] vector; mean: mean over tokens; none: every token (.npz with offsets)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--max-length", type=int, default=None, help="cut texts to this many tokens (default: model max)")
    parser.add_argument("--tokenizer", help="tokenizer.json, vocab.txt or a folder with one (default: CKPT)")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"],
                        help="hot-op backend: auto = Triton kernels on CUDA, PyTorch references on CPU")
    parser.add_argument("--device", default=None, help="e.g. cuda or cpu (default: cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # argparse reads "-4..-1" as an unknown option unless it looks like a negative number to it.
    parser._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-?\d+\.\.-?\d+$")
    parser.set_defaults(func=run)
