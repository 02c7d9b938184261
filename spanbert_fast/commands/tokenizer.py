"""``spanbert-fast tokenizer``: train a cased WordPiece tokenizer on a corpus.

    spanbert-fast tokenizer --corpus data/wiki/ books.txt --vocab-size 30000 --out tok/

Writes ``tok/tokenizer.json`` and ``tok/vocab.txt``. The corpus is read with the same rules as
``spanbert-fast prepare`` (text files split into documents, JSONL ``text`` fields, directories).
"""
from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from spanbert_fast.data.corpus import iter_documents, iter_texts
    from spanbert_fast.data.tokenizer import save_tokenizer, special_ids, train_tokenizer

    class CorpusTexts:  # re-iterable: training reads the corpus twice (characters, then merges), streaming
        def __iter__(self):
            return iter_texts(iter_documents(args.corpus, doc_split=args.doc_split, text_field=args.text_field))

    try:
        tokenizer = train_tokenizer(
            CorpusTexts(), args.vocab_size, min_frequency=args.min_frequency,
            show_progress=not args.quiet and sys.stdout.isatty(),  # its bar writes newlines to stdout
        )
        out = save_tokenizer(tokenizer, args.out)
    except (OSError, ValueError) as error:  # bad input: one line naming the file, no traceback
        raise SystemExit(f"tokenizer: error: {error}") from error
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    print(f"tokenizer: {size} tokens, specials {special_ids(tokenizer)}; wrote {out}/tokenizer.json and vocab.txt")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tokenizer", help="train a cased WordPiece tokenizer",
        description="Train a cased BERT-style WordPiece tokenizer ([PAD] [UNK] [CLS] [SEP] [MASK]).",
    )
    parser.add_argument("--corpus", nargs="+", required=True, metavar="PATH",
                        help="text/JSONL files or directories (same rules as `prepare`)")
    parser.add_argument("--vocab-size", type=int, required=True, help="vocabulary size, special tokens included")
    parser.add_argument("--out", required=True, help="output folder for tokenizer.json and vocab.txt")
    parser.add_argument("--min-frequency", type=int, default=2, help="minimum pair frequency to merge (default 2)")
    parser.add_argument("--doc-split", choices=["blank", "file", "line"], default="blank",
                        help="plain-text documents: separated by blank lines (default), one per file, one per line")
    parser.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
