"""One module per ``spanbert-fast`` subcommand; each exposes ``register(subparsers)``.

Every subcommand's ``--help`` lists the defaults (:class:`DefaultsHelpFormatter`); an option whose
default the command fills in later (``None`` in argparse, e.g. ``pretrain --lr``) says it in its
help text, as does an option whose default needs words ("default: the one in --init").
"""
from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with ``(default: X)`` after each option that has a value by default.

    Left as written: help that already names its default, switches (``store_true``), required
    options and options without a default value (``None``: their help says what happens).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.required or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """The parser of each subcommand: :class:`DefaultsHelpFormatter` unless told otherwise."""

    def __init__(self, *args, formatter_class=DefaultsHelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)
