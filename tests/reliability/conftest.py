"""The reliability catalogue: probes of the pipeline as a careless user and a flaky machine treat it
(issue 16). Every test is one probe, named after it, and drives the command line as a user does:
``spanbert-fast`` in a subprocess where the probe needs a real process (kill -9, a second
concurrent run, peak memory), else :func:`spanbert_fast.cli.main` in-process, which parses the same
arguments and ends in the same ``SystemExit`` message (an exception other than ``SystemExit`` is a
traceback the user would have seen, and fails the test).

Helpers here: :func:`cli` (in-process), :func:`spawn` / :func:`run_command` (subprocess),
:func:`one_line_error` (the error contract), and small corpora and tokenizers.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spanbert_fast.cli import main

ROOT = Path(__file__).resolve().parents[2]


def cli(*args) -> tuple:
    """``spanbert-fast ARGS`` in this process: (exit code, SystemExit message or None)."""
    try:
        return int(main([str(a) for a in args]) or 0), None
    except SystemExit as exit_:
        if isinstance(exit_.code, str):
            return 1, exit_.code
        return int(exit_.code or 0), None


def one_line_error(message, command: str) -> str:
    """Assert ``message`` is the CLI's one-line error for ``command``; return it."""
    assert message is not None, "expected an error"
    assert message.startswith(f"{command}: error: "), message
    assert "\n" not in message and "Traceback" not in message, message
    return message


def spawn(*args, **popen) -> subprocess.Popen:
    """``python -m spanbert_fast ARGS`` as a child process (stdout/stderr piped, text)."""
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "spanbert_fast", *map(str, args)], cwd=ROOT, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def run_command(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    process = spawn(*args)
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A small WordPiece tokenizer (tokenizer.json + vocab.txt) trained on the demo corpus."""
    from spanbert_fast.data.corpus import demo_corpus_texts
    from spanbert_fast.data.tokenizer import save_tokenizer, train_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(train_tokenizer(demo_corpus_texts()[:20], vocab_size=800, show_progress=False), folder)
    return folder


@pytest.fixture(scope="session")
def prose(tmp_path_factory) -> Path:
    """A ~100 kB text file of demo documents separated by blank lines."""
    import re

    from spanbert_fast.data.corpus import demo_corpus_texts

    path = tmp_path_factory.mktemp("prose") / "prose.txt"
    documents = [re.sub(r"\n\s*\n", "\n", text) for text in demo_corpus_texts()[:30]]
    path.write_text("\n\n".join(documents)[:100_000], encoding="utf-8")
    return path
