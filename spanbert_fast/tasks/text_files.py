"""Reading user data files: UTF-8 text, and errors that name ``path:line``."""
from __future__ import annotations

import codecs
from typing import Optional


class InputFileError(ValueError):
    """Bad user data: the message starts with ``path:line:`` (``path:`` when no line applies)."""

    def __init__(self, path, line: Optional[int], message: str):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path, self.line = str(path), line


def read_utf8(path, *, bom: bool = True) -> str:
    """The text of ``path`` decoded as UTF-8, newlines untouched; a leading byte-order mark
    (Excel's "CSV UTF-8" writes one) is dropped unless ``bom=False``.

    Bytes that are not UTF-8 raise :class:`InputFileError` naming the file and the line of the
    first bad byte. Iterate lines as ``open`` would with ``io.StringIO(text, newline=None)``.
    """
    with open(path, "rb") as f:
        data = f.read()
    skipped = len(codecs.BOM_UTF8) if bom and data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skipped:].decode("utf-8")
    except UnicodeDecodeError as err:
        start = skipped + err.start
        raise InputFileError(path, data.count(b"\n", 0, start) + 1,
                             f"not UTF-8 text ({err.reason} at byte {start}); convert the file to UTF-8") from err


def line_of(text: str, index: int) -> int:
    """1-based line number of character ``index`` in ``text``."""
    return text.count("\n", 0, max(0, index)) + 1
