"""Reading raw corpora: documents from text / JSONL files, a regex sentence splitter, a demo corpus.

Input rules (shared by ``spanbert-fast tokenizer`` and ``spanbert-fast prepare``):

* A path may be a file or a directory; directories are walked recursively and every file ending in
  ``.txt``, ``.text``, ``.jsonl`` or ``.json`` is read, in sorted path order. Hidden files are skipped.
* ``*.jsonl`` / ``*.json`` files hold one JSON object per line; its ``text`` field (configurable) is
  one document. Blank lines are skipped; a line that is not a JSON object with a string ``text``
  field is an error naming the file and line.
* Any other file is plain UTF-8 text, split into documents by ``doc_split``:
  ``"blank"`` (default): documents are separated by one or more blank lines (the classic BERT
  pre-training format); ``"file"``: the whole file is one document; ``"line"``: every non-blank
  line is a document.

Sentence splitting (:func:`split_sentences`) is deliberately simple and documented rather than
clever: a paragraph break (blank line inside a JSONL document) always ends a sentence; otherwise a
sentence ends after ``.``, ``!`` or ``?`` (plus any closing quotes/brackets) when whitespace and then
an uppercase letter, digit, or opening quote/bracket follow. Abbreviations such as "Mr. Smith" are
split too; that only moves a block boundary, since sentences matter for packing only.
"""
from __future__ import annotations

import ast
import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Sequence, Union

PathLike = Union[str, os.PathLike]

JSONL_SUFFIXES = (".jsonl", ".json")
TEXT_SUFFIXES = (".txt", ".text")
DOC_SPLIT_RULES = ("blank", "file", "line")

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_SENTENCE_END = re.compile(r"""[.!?]+["'\u201d\u2019)\]]*\s+(?=["'\u201c\u2018(\[]?[A-Z0-9])""")
_WHITESPACE = re.compile(r"\s+")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Document:
    """One document: its text and where it came from (``file:line`` for error messages)."""

    text: str
    source: str


def split_sentences(text: str) -> List[str]:
    """Split a document into sentences (rules in the module docstring); whitespace inside a
    sentence is collapsed to single spaces, empty sentences are dropped."""
    sentences: List[str] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        start = 0
        for match in _SENTENCE_END.finditer(paragraph):
            sentences.append(paragraph[start : match.end()])
            start = match.end()
        sentences.append(paragraph[start:])
    cleaned = (_collapse_whitespace(sentence) for sentence in sentences)
    return [sentence for sentence in cleaned if sentence]


_COLLAPSE_WINDOW = 1 << 16


def _collapse_whitespace(text: str) -> str:
    """``_WHITESPACE.sub(" ", text).strip()``, done in windows of ~64k characters for long texts
    (``re.sub`` keeps a slice per match until it joins them: ~100 bytes per word of a 50 MB line).
    A window ends where a run of whitespace ends, so the result is the same."""
    if len(text) <= _COLLAPSE_WINDOW:
        return _WHITESPACE.sub(" ", text).strip()
    parts: List[str] = []
    start = 0
    while start < len(text):
        end = min(start + _COLLAPSE_WINDOW, len(text))
        if end < len(text):
            cut = end
            while cut > start + 1 and not (text[cut - 1].isspace() and not text[cut].isspace()):
                cut -= 1
            end = cut if cut > start + 1 else end  # no whitespace run in the window: cut anywhere
        parts.append(_WHITESPACE.sub(" ", text[start:end]))
        start = end
    return "".join(parts).strip()


def expand_inputs(paths: Sequence[PathLike]) -> List[Path]:
    """Resolve files and directories into the ordered list of corpus files.

    Raises FileNotFoundError naming the first path that does not exist, and ValueError when a
    directory holds no corpus file.
    """
    files: List[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in JSONL_SUFFIXES + TEXT_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise ValueError(f"{path}: directory holds no .txt/.text/.jsonl/.json file")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise ValueError(f"{path}: not a regular file or a directory")
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return files


def _read_jsonl(path: Path, text_field: str) -> Iterator[Document]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: invalid JSON ({error.msg})") from error
            except RecursionError:
                raise ValueError(f"{where}: JSON nested too deeply") from None
            if not isinstance(record, dict) or text_field not in record:
                raise ValueError(f"{where}: JSON line has no {text_field!r} field")
            text = record[text_field]
            if not isinstance(text, str):
                raise ValueError(f"{where}: field {text_field!r} is {type(text).__name__}, not a string")
            surrogate = _SURROGATE.search(text)
            if surrogate:
                raise ValueError(f"{where}: field {text_field!r} holds a lone surrogate "
                                 f"(\\u{ord(surrogate.group()):04x}), which is not valid Unicode text")
            yield Document(text, where)


def _read_text(path: Path, doc_split: str) -> Iterator[Document]:
    with open(path, encoding="utf-8") as handle:
        if doc_split == "file":
            yield Document(handle.read(), str(path))
            return
        if doc_split == "line":
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield Document(line, f"{path}:{number}")
            return
        lines: List[str] = []
        first = 0
        for number, line in enumerate(handle, start=1):
            if line.strip():
                if not lines:
                    first = number
                lines.append(line)
            elif lines:
                yield Document("".join(lines), f"{path}:{first}")
                lines = []
        if lines:
            yield Document("".join(lines), f"{path}:{first}")


def iter_documents(
    paths: Sequence[PathLike], *, doc_split: str = "blank", text_field: str = "text"
) -> Iterator[Document]:
    """Stream the documents of ``paths`` (files or directories) one at a time, in order.

    Only one document is held in memory at a time (one file with ``doc_split="file"``).
    """
    if doc_split not in DOC_SPLIT_RULES:
        raise ValueError(f"doc_split must be one of {DOC_SPLIT_RULES}, got {doc_split!r}")
    for path in expand_inputs(paths):
        try:
            if path.suffix.lower() in JSONL_SUFFIXES:
                yield from _read_jsonl(path, text_field)
            else:
                yield from _read_text(path, doc_split)
        except UnicodeDecodeError as error:
            offset = _first_invalid_utf8(path)
            raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {offset})") from error


def _first_invalid_utf8(path: Path) -> int:
    """Byte offset of the first byte of ``path`` that is not valid UTF-8 (the decoder reading a
    text file reports offsets within its current buffer only); -1 if the file decodes."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as handle:
        while True:
            piece = handle.read(1 << 20)
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous piece
            try:
                decoder.decode(piece, final=not piece)
            except UnicodeDecodeError as error:
                return offset - pending + error.start
            if not piece:
                return -1
            offset += len(piece)


def iter_texts(documents: Iterable[Document]) -> Iterator[str]:
    """Just the texts of ``documents`` (for tokenizer training)."""
    for document in documents:
        yield document.text


# What the demo corpus is (kept in the demo's meta.json: a demo folder holding another corpus is rebuilt).
DEMO_CORPUS = "Python help topics + standard-library docstrings"
MIN_DOCSTRING_CHARS = 40  # shorter docstrings ("Return self.") are mostly boilerplate


def python_help_topics() -> List[Document]:
    """The help topics of ``pydoc_data.topics`` (about 80, ~460k characters), one document per
    topic, in sorted topic order."""
    from pydoc_data.topics import topics

    documents = (Document(text=topics[name].strip(), source=f"pydoc_data.topics[{name!r}]") for name in sorted(topics))
    return [document for document in documents if document.text]


def _docstrings_in_source_order(node: ast.AST) -> Iterator[str]:
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        docstring = ast.get_docstring(node)
        if docstring and len(docstring) >= MIN_DOCSTRING_CHARS:
            yield docstring
    for child in ast.iter_child_nodes(node):
        yield from _docstrings_in_source_order(child)


def stdlib_docstrings() -> List[Document]:
    """The docstrings of the standard library's top-level modules (about 150 modules, ~0.9M
    characters on CPython 3.11), one document per module: its module, class and function
    docstrings in source order. Read from the source files with ``ast``, nothing imported, in
    sorted file order; none when the installation ships no ``.py`` sources. Parsed once per
    process (about a second); each call returns a new list."""
    return list(_stdlib_docstrings())


@functools.lru_cache(maxsize=1)
def _stdlib_docstrings() -> tuple:
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    documents = []
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue  # an unreadable file is left out, as a missing one is
        docstrings = list(_docstrings_in_source_order(tree))
        if docstrings:
            documents.append(Document(text="\n\n".join(docstrings), source=str(path)))
    return tuple(documents)


def demo_corpus() -> List[Document]:
    """The corpus of ``pretrain --demo``, text that every Python installation has (no download):
    :func:`python_help_topics`, then :func:`stdlib_docstrings` (about 1.3M characters in all).
    The same Python version gives the same corpus."""
    return python_help_topics() + stdlib_docstrings()


def demo_corpus_texts() -> List[str]:
    """The texts of :func:`demo_corpus` (the help topics first)."""
    return [document.text for document in demo_corpus()]
