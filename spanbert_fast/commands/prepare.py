"""``spanbert-fast prepare``: tokenise a corpus into packed, memory-mapped block shards.

    spanbert-fast prepare --input data/wiki/ --tokenizer tok/ --out data/wiki-510 --workers 8

Input rules are in :mod:`spanbert_fast.data.corpus`, the output format in
:mod:`spanbert_fast.data.prepare`. ``--tokenizer`` accepts a folder, a ``tokenizer.json`` or a BERT
``vocab.txt`` (e.g. the BERT-cased vocabulary of the SpanBERT checkpoints).
"""
from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from spanbert_fast.data.prepare import DEFAULT_SHARD_TOKENS, PADDING_BATCH_SIZE, CorpusExistsError, prepare_corpus
    from spanbert_fast.data.tokenizer import casing_decision, load_tokenizer
    from spanbert_fast.run_lock import FolderLockedError

    try:
        tokenizer = load_tokenizer(args.tokenizer, lowercase=args.lowercase)
        stats = prepare_corpus(
            args.input, tokenizer, args.out, doc_split=args.doc_split, text_field=args.text_field,
            block_size=args.block_size, workers=args.workers,
            shard_tokens=args.shard_tokens or DEFAULT_SHARD_TOKENS, overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except CorpusExistsError:
        raise SystemExit(f"prepare: error: {args.out} already holds a prepared corpus; pass --overwrite to "
                         f"replace it (the old one stays until the new one is complete)") from None
    except (OSError, ValueError, FolderLockedError) as error:  # bad input: one line naming the file, no traceback
        raise SystemExit(f"prepare: error: {error}") from error
    print(
        f"prepared {stats.n_documents} documents, {stats.n_sentences} sentences, {stats.n_tokens} tokens "
        f"into {stats.n_blocks} blocks of <= {args.block_size} tokens ({stats.n_shards} {stats.token_dtype} "
        f"shard(s)) in {stats.seconds:.1f} s: {stats.out_dir}"
    )
    print(f"tokenizer casing: {casing_decision(args.tokenizer, args.lowercase)}")
    print(f"block length: mean {stats.mean_block_length:.1f} of {args.block_size}; padding in batches of "
          f"{PADDING_BATCH_SIZE} padded to their longest block: {100 * stats.padding_share:.0f} %")
    if stats.mean_block_length < args.block_size / 4:
        hint = ("each blank-line-separated paragraph became a document; unless the input is one document "
                "per paragraph, try --doc-split file (one document per file)") if args.doc_split != "file" else (
                "the documents are short")
        print(f"prepare: warning: mean block length {stats.mean_block_length:.1f} is below a quarter of "
              f"--block-size {args.block_size}: {hint}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare", help="tokenise and pack a corpus into block shards",
        description="Tokenise text/JSONL files into memory-mapped token shards packed into blocks "
                    "of whole sentences from one document.",
    )
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="text/JSONL files or directories (directories: *.txt, *.text, *.jsonl, *.json)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder, tokenizer.json or vocab.txt")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--block-size", type=int, default=510,
                        help="tokens per block without [CLS]/[SEP] (default 510, for 512-position models)")
    parser.add_argument("--workers", type=int, default=1, help="tokenising processes; 1 (default) tokenises in this process, where tokenizers "
                             "still uses its own threads")
    parser.add_argument("--doc-split", choices=["blank", "file", "line"], default="blank",
                        help="plain-text documents: separated by blank lines (default), one per file, one per line")
    parser.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    parser.add_argument("--shard-tokens", type=int, default=None,
                        help="tokens per shard file (default 2^28)")
    parser.add_argument("--lowercase", action="store_true", default=None,
                        help="with a vocab.txt: lowercase (default: detected from tokenizer_config.json or the vocabulary)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a corpus already prepared in --out (the old one stays until the new one is complete)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
