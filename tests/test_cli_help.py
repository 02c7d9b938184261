"""Every ``spanbert-fast COMMAND --help`` says what each option does and what it defaults to."""
import argparse
import re

import pytest

from spanbert_fast.cli import build_parser
from spanbert_fast.commands.pretrain import DEMO_DEFAULTS, PRETRAIN_DEFAULTS


def subcommand_parsers():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices


def option_help(parser: argparse.ArgumentParser) -> dict:
    """``{"--lr": "peak learning rate (default: 3e-05)", ...}`` as ``--help`` prints them, unwrapped."""
    text = parser.format_help()
    blocks = re.split(r"\n  (?=-)", text.split("\noptions:", 1)[1])
    helps = {}
    for block in blocks[1:]:
        names, _, rest = block.split("\n\n")[0].partition("  ")
        flag = max((w for w in names.replace(",", " ").split() if w.startswith("-")), key=len)
        helps[flag] = " ".join(rest.split())
    return helps


COMMANDS = sorted(subcommand_parsers())


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_and_its_default(command):
    parser = subcommand_parsers()[command]
    helps = option_help(parser)
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = max(action.option_strings, key=len)
        text = helps.get(flag, "")
        assert text.strip(), f"{command} {flag}: no help text"
        has_value = action.default is not None and action.default is not False
        if has_value:
            assert "default" in text, f"{command} {flag}: default {action.default!r} not shown in {text!r}"


def test_pretrain_help_names_the_defaults_it_fills_in():
    helps = option_help(subcommand_parsers()["pretrain"])
    assert "(default: base; --demo: tiny)" in helps["--preset"]
    assert "tiny" in helps["--preset"] and "large" in helps["--preset"]
    for flag, name in (("--batch-size", "batch_size"), ("--max-steps", "max_steps"), ("--save-every", "save_every")):
        run_default, demo_default = PRETRAIN_DEFAULTS[name], DEMO_DEFAULTS[name]
        assert f"default: {run_default:g}; --demo: {demo_default:g}" in helps[flag], helps[flag]
    assert "default: by --preset: tiny 0.002, base 0.0001, large 0.0001" in helps["--lr"], helps["--lr"]


@pytest.mark.parametrize("command,max_length", [("finetune-cls", 128), ("finetune-ner", 256),
                                                ("finetune-qa", 384), ("finetune-re", 128)])
def test_finetune_help_shows_lr_epochs_and_max_length(command, max_length):
    helps = option_help(subcommand_parsers()[command])
    assert "(default: 3e-05)" in helps["--lr"]
    assert "(default: 3.0)" in helps["--epochs"]
    assert f"(default: {max_length})" in helps["--max-length"]
    assert "(default: 16)" in helps["--batch-size"]


def test_help_mentions_no_default_twice():
    for command, parser in subcommand_parsers().items():
        for flag, text in option_help(parser).items():
            assert text.count("default") <= 1, f"{command} {flag}: {text!r}"
