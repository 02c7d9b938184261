"""Every README.md code block runs as written.

Python blocks run in a fresh folder, one after another, as a reader would paste them. A block
preceded by the HTML comment ``<!-- readme-test: after `spanbert-fast pretrain --demo` -->`` runs
where a (2-step) demo run has written ``runs/demo`` (its corpus and checkpoint); blocks that import
transformers skip when it is absent. Shell lines are checked against the parser: every
``spanbert-fast COMMAND --flag`` in a code block or inline code names a real command and option.
"""
import os
import re

import pytest

from spanbert_fast import cli

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
AFTER_DEMO = "<!-- readme-test: after `spanbert-fast pretrain --demo` -->"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


def readme_blocks():
    """``(language, code, first line number, marker comment or None, heading)`` of each fenced block."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").splitlines()
        marker = before[-1] if before and before[-1].startswith("<!--") else None
        heading = next((line.lstrip("# ") for line in reversed(before) if line.startswith("#")), "top")
        line = text.count("\n", 0, match.start()) + 2
        blocks.append((match.group(1), match.group(2), line, marker, heading))
    return blocks


PYTHON_BLOCKS = [block for block in readme_blocks() if block[0] == "python"]


def block_id(block) -> str:
    return f"{block[4]}-line{block[2]}".replace(" ", "-")


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """A folder where `spanbert-fast pretrain --demo` ran (2 steps: the files, not the learning)."""
    folder = tmp_path_factory.mktemp("readme")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert cli.main(["pretrain", "--demo", "--max-steps", "2", "--eval-blocks", "8", "--no-progress"]) == 0
    finally:
        os.chdir(cwd)
    return folder


def test_readme_has_python_blocks_and_only_known_markers():
    assert len(PYTHON_BLOCKS) >= 3
    for _, _, line, marker, _ in readme_blocks():
        assert marker in (None, AFTER_DEMO), f"README.md:{line}: unknown marker {marker}"


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=block_id)
def test_python_block_runs_as_written(block, demo_folder, tmp_path, monkeypatch):
    _, code, line, marker, _ = block
    if re.search(r"^\s*import transformers|^\s*from transformers", code, re.M):
        pytest.importorskip("transformers")
    folder = demo_folder if marker == AFTER_DEMO else tmp_path
    monkeypatch.chdir(folder)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})


def command_options():
    """``{command: set of its option strings}`` from the real parser."""
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: set(sub._option_string_actions) for name, sub in subparsers.choices.items()}


def shell_lines():
    """Lines of bash blocks (``\\`` continuations joined) and inline code spans that run our command."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    lines = []
    for language, code, line, _, _ in readme_blocks():
        if language == "bash":
            lines += [(line, command) for command in code.replace("\\\n", " ").splitlines()]
    prose = FENCE.sub("", text)
    lines += [(0, span) for span in re.findall(r"`([^`\n]+)`", prose)]
    return [(line, command.split("#")[0]) for line, command in lines if "spanbert-fast " in command
            or "spanbert_fast " in command]


def test_shell_lines_name_real_commands_and_options():
    options = command_options()
    checked = 0
    for line, command in shell_lines():
        match = re.search(r"spanbert[-_]fast (\S+)(.*)", command)
        name, rest = match.group(1), match.group(2)
        if name.isupper() or name.startswith("-"):  # `spanbert-fast COMMAND --help`, `-m spanbert_fast`
            continue
        where = f"README.md:{line} `{command.strip()}`" if line else f"README.md `{command.strip()}`"
        assert name in options, f"{where}: no command {name!r}"
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest):
            assert flag in options[name], f"{where}: {name} has no option {flag}"
        checked += 1
    assert checked >= 10
