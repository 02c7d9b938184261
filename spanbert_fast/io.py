"""Writing files all at once or not at all: the one home of every atomic write.

A reader (another process, a resumed run, a user's ``cat``) never sees a half-written file:
each writer fills a temporary file next to the target and renames it into place
(``os.replace`` is atomic on one filesystem). A crash leaves the old file, or none.

===============================  ===================================================================
``atomic_write(path)``           ``with atomic_write(path) as f:``: a text (UTF-8) or binary file
``atomic_path(path)``            ``with atomic_path(path) as tmp:``: a temporary path for writers
                                 that take a file name (``torch.save``, safetensors, matplotlib)
``atomic_directory(path)``       ``with atomic_directory(path) as tmp:``: a whole folder (checkpoints)
``write_json(path, values)``     indented JSON through :func:`atomic_write`
===============================  ===================================================================

Files get the permissions ``open`` would give them (``0o666 & ~umask``), not ``mkstemp``'s 0o600.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import IO, Iterator, Optional


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """``with atomic_path(path) as tmp:`` -- write the file ``tmp``; when the block ends without an
    error it replaces ``path`` (its folder is created if needed), otherwise it is deleted."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str, binary: bool = False, newline: Optional[str] = None) -> Iterator[IO]:
    """``with atomic_write(path) as f:`` -- ``f`` is a temporary file (UTF-8 text, or bytes with
    ``binary=True``; ``newline`` as for ``open``, e.g. ``""`` for the csv module) that replaces
    ``path`` when the block ends without an error; otherwise ``path`` is left as it was."""
    with atomic_path(path) as tmp:
        mode = {"mode": "wb"} if binary else {"mode": "w", "encoding": "utf-8", "newline": newline}
        with open(tmp, **mode) as f:
            yield f


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
    """``with atomic_directory(path) as tmp:`` -- fill the folder ``tmp``; when the block ends
    without an error it becomes ``path``, otherwise it is removed.

    An existing ``path`` is replaced: it is renamed aside (``<name>.<random>.old.tmp``) only once
    ``tmp`` is complete and deleted only after ``tmp`` took its place, so at every moment one
    complete folder exists under one of the two names. Temporary names are
    ``<name>.<random>.tmp``: what a killed writer leaves behind is recognisable by that pattern.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f"{name}.", suffix=".tmp")
    old = None
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if os.path.exists(path):
            old = tempfile.mkdtemp(dir=parent, prefix=f"{name}.", suffix=".old.tmp")
            os.replace(path, old)  # onto the empty folder mkdtemp made
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        if old is not None and os.path.exists(old):
            if os.path.exists(path):
                shutil.rmtree(old)
            else:  # the new folder failed to take its place: put the old one back
                os.replace(old, path)


def write_json(path: str, values, *, sort_keys: bool = False) -> str:
    """Write ``values`` as indented JSON (UTF-8, a final newline) to ``path`` atomically; returns ``path``."""
    with atomic_write(path) as f:
        json.dump(values, f, indent=2, ensure_ascii=False, sort_keys=sort_keys)
        f.write("\n")
    return path
