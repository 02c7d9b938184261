"""spanbert_fast.io: every file is written whole or not at all."""
import json
import os

import pytest

from spanbert_fast.io import atomic_directory, atomic_path, atomic_write, write_json


def test_atomic_write_replaces_whole_or_leaves_the_old_file(tmp_path):
    target = tmp_path / "out" / "results.json"
    write_json(str(target), {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0o600
    with pytest.raises(TypeError):
        write_json(str(target), {"a": object()})  # fails half-way through json.dump
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(target.parent) == ["results.json"]  # no .tmp left behind
    with pytest.raises(RuntimeError):
        with atomic_write(str(target), binary=True) as f:
            f.write(b"partial")
            raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"a": 1} and os.listdir(target.parent) == ["results.json"]


def test_atomic_path_and_directory_leave_nothing_half_written(tmp_path):
    target = tmp_path / "weights.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as tmp:
            open(tmp, "wb").write(b"partial")
            raise RuntimeError("interrupted")
    assert not target.exists() and os.listdir(tmp_path) == []
    with atomic_path(str(target)) as tmp:
        open(tmp, "wb").write(b"whole")
    assert target.read_bytes() == b"whole"

    folder = tmp_path / "checkpoints" / "step-00000001"
    with atomic_directory(str(folder)) as tmp:
        open(os.path.join(tmp, "a.txt"), "w").write("first")
    with pytest.raises(RuntimeError):
        with atomic_directory(str(folder)) as tmp:
            open(os.path.join(tmp, "a.txt"), "w").write("second")
            raise RuntimeError("interrupted")
    assert (folder / "a.txt").read_text() == "first" and os.listdir(folder.parent) == ["step-00000001"]
    with atomic_directory(str(folder)) as tmp:  # an existing folder is replaced whole
        open(os.path.join(tmp, "b.txt"), "w").write("third")
    assert os.listdir(folder) == ["b.txt"]
