"""What the command line prints around the work: no stray lines, one-line warnings, early errors."""
import warnings

import pytest

from spanbert_fast import cli


def test_tokenizer_with_stdout_redirected_prints_only_its_summary(tmp_path, capfd):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Document {i} has words like span, boundary and mask." for i in range(50)))
    assert cli.main(["tokenizer", "--corpus", str(corpus), "--vocab-size", "120", "--out", str(tmp_path / "tok")]) == 0
    lines = capfd.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tokenizer: "), lines


def test_warnings_print_as_one_line_without_their_source(monkeypatch, capsys):
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    assert cli.main([]) == 2  # no command: prints the help
    text = warnings.formatwarning("resuming with changed settings", UserWarning, "training.py", 353,
                                  "warnings.warn(f'resuming ...')")
    assert text == "warning: resuming with changed settings\n"


@pytest.mark.parametrize("pool, out, expected", [
    ("mean", "vectors.npz", "use a path ending in .npy"),
    ("none", "vectors.npy", "use a path ending in .npz"),
    ("cls", "missing-folder/vectors.npy", "does not exist"),
])
def test_embed_rejects_its_output_path_before_loading_anything(tmp_path, pool, out, expected):
    texts = tmp_path / "texts.txt"
    texts.write_text("first text\nsecond text\n")
    # The checkpoint does not exist either: the output path must be the first thing checked.
    with pytest.raises(SystemExit) as error:
        cli.main(["embed", str(tmp_path / "no-checkpoint"), "--input", str(texts), "--pool", pool,
                  "--out", str(tmp_path / out)])
    assert str(error.value).startswith("embed: error: ") and expected in str(error.value)
