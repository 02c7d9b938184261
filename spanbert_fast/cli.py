"""``spanbert-fast`` command line: one subcommand per module in ``spanbert_fast.commands``."""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import List, Optional

from spanbert_fast.commands import CommandParser

# Subcommand modules, in the order ``--help`` lists them. Each defines
# ``register(subparsers)`` which adds its parser and sets ``func(args) -> int``.
COMMANDS = [
    "info",
    "tokenizer",
    "prepare",
    "pretrain",
    "fill_mask",
    "embed",
    "finetune",
    "finetune_re",
    "bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spanbert-fast",
        description="SpanBERT pre-training and fine-tuning with Triton kernels.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    for name in COMMANDS:
        importlib.import_module(f"spanbert_fast.commands.{name}").register(subparsers)
    return parser


def format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line as one line, ``warning: message``, without the source line."""
    return f"warning: {message}\n"


def main(argv: Optional[List[str]] = None) -> int:
    warnings.formatwarning = format_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
