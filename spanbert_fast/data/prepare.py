"""Corpus preparation: text files → memory-mapped token shards + an index of blocks.

Pipeline (streaming; only a few chunks of text are in memory at any time)::

    files ──iter_documents──▶ documents ──chunks of ~chunk_chars──▶ workers:
        split_sentences → tokenizer.encode_batch → word-start flags → pack_blocks
    ──in input order──▶ append to token / word-start shards and to the index files

Packing: :func:`~spanbert_fast.data.encoding.pack_blocks`. The folder's files and ``meta.json``:
:mod:`spanbert_fast.data.block_dataset`, whose :class:`BlockDataset` reads them back.

Every file is written under a temporary name and moved into place with ``os.replace``;
``meta.json`` is replaced last, so readers never see a half-written directory.

One run at a time: a run locks the folder (:mod:`spanbert_fast.run_lock`); a second run exits with
an error naming the first. A run deletes only files it created: its own on failure, the replaced
corpus's after its switch. Before creating a file it records the name in its lock, so when a run is
killed the next run (which finds the dead run's lock stale) removes exactly those files. Files in
the folder that no run recorded are never touched, whatever their names; a new corpus that would
collide with them takes the next generation prefix.

``overwrite`` never destroys the old corpus before the new one is complete: the new files carry a
generation prefix (``g1-tokens-00000.bin``, ``g2-...``; ``meta.json`` lists the names), so they sit
beside the old ones until the new ``meta.json`` replaces the old one; only then are the old files
removed. A failed run leaves the old corpus as it was. ``tokenizer.json`` is refreshed after that
switch too, for tools that look for it by name. A reader that opened the old corpus before the
switch keeps its memory maps; one that read the old ``meta.json`` but opens files later (e.g. a
training run's data workers at the next epoch) fails: do not overwrite a corpus in use.
"""
from __future__ import annotations

import json
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
from tokenizers import Tokenizer

from .block_dataset import (  # noqa: F401  (Block, BlockDataset, PathLike: re-exported, their old home)
    FORMAT_VERSION,
    INDEX_FILES,
    META_FILE,
    Block,
    BlockDataset,
    PathLike,
    confined_name,
    corpus_files,
    file_check,
    meta_crc32,
    read_meta,
    token_dtype_for,
)
from .corpus import Document, iter_documents
from .encoding import DEFAULT_CHUNK_CHARS, encoded_chunks, pack_blocks  # noqa: F401  (pack_blocks: re-exported)
from .tokenizer import TOKENIZER_FILE, special_ids, word_boundaries_known

DEFAULT_BLOCK_SIZE = 510
DEFAULT_SHARD_TOKENS = 1 << 28  # 256M tokens: 512 MiB per uint16 shard
_TOKENS_NAME = "tokens-{:05d}.bin"
_WORD_STARTS_NAME = "word_starts-{:05d}.bin"


class _AppendFile:
    """A binary file written under ``<name>.tmp`` and moved to ``<name>`` by :meth:`commit`; it
    counts its bytes and their CRC-32 (recorded in ``meta.json``, checked on load)."""

    def __init__(self, directory: Path, name: str, dtype):
        self.name = name
        self.path = directory / name
        self.tmp_path = directory / (name + ".tmp")
        self.dtype = np.dtype(dtype)
        self.count = 0
        self.crc32 = 0
        self._handle = open(self.tmp_path, "xb")  # never truncate a file this run did not create

    def append(self, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, dtype=self.dtype.newbyteorder("<")).tobytes()
        self._handle.write(data)
        self.crc32 = zlib.crc32(data, self.crc32)
        self.count += len(data) // self.dtype.itemsize

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()

    def commit(self) -> None:
        self.close()
        os.replace(self.tmp_path, self.path)

    def check(self) -> Dict:
        return {"bytes": self.count * self.dtype.itemsize, "crc32": f"{self.crc32:08x}"}

    def discard(self) -> None:
        if not self._handle.closed:
            self._handle.close()


class CorpusExistsError(FileExistsError):
    """``out_dir`` already holds a prepared corpus and ``overwrite`` was not given."""



def _remove_files(out: Path, names: Iterable[str], keep: Iterable[str]) -> None:
    """Remove ``names`` (plain names inside ``out``; callers pass only files a prepare run wrote)."""
    for name in set(names) - set(keep):
        try:
            (out / name).unlink()
        except FileNotFoundError:
            pass


def _clean_after_dead_run(out: Path, stale_owner: Optional[Dict]) -> None:
    """Remove what a killed ``prepare`` recorded in its lock before creating or replacing it
    (files of a generation it never switched to, or the old generation after its switch), except
    the files the current ``meta.json`` lists. Nothing else is touched, and nothing at all when
    the current ``meta.json`` cannot be read."""
    if not stale_owner or stale_owner.get("command") != "prepare":
        return
    meta_path = out / META_FILE
    try:
        listed = corpus_files(read_meta(meta_path)) if meta_path.exists() else []
        names = [confined_name(name, "lock file") for name in
                 list(stale_owner.get("files", [])) + list(stale_owner.get("replacing", []))]
    except (OSError, ValueError, TypeError):
        return
    _remove_files(out, names, keep=listed + [META_FILE])


@dataclass
class PrepareStats:
    """What :func:`prepare_documents` wrote."""

    out_dir: Path
    n_documents: int
    n_sentences: int
    n_blocks: int
    n_tokens: int
    n_shards: int
    token_dtype: str
    seconds: float
    mean_block_length: float = 0.0
    padding_share: float = 0.0  # of the tokens of padded batches (PADDING_BATCH_SIZE blocks each)


PADDING_BATCH_SIZE = 32  # batches of ``pretrain``'s default size, for the padding share in the summary


def _padding_share(block_lengths: np.ndarray, block_size: int) -> float:
    """Share of padding in batches padded to their longest row, estimated from a sample of blocks."""
    from .static_shapes import padding_fractions

    rng = np.random.default_rng(0)
    sample = block_lengths if block_lengths.size <= 1 << 16 else rng.choice(block_lengths, 1 << 16, replace=False)
    return padding_fractions(sample, block_size, min(PADDING_BATCH_SIZE, sample.size), samples=500)["padded"]


def prepare_documents(
    documents: Iterable[Document],
    tokenizer: Tokenizer,
    out_dir: PathLike,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    workers: int = 1,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    overwrite: bool = False,
    progress: bool = True,
    total_chars: Optional[int] = None,
    extra_meta: Optional[Dict] = None,
) -> PrepareStats:
    """Tokenise and pack a stream of documents into ``out_dir`` (format in the module docstring).

    ``out_dir`` is locked for the run (:func:`~spanbert_fast.run_lock.lock_folder`): a second run
    into it raises :class:`~spanbert_fast.run_lock.FolderLockedError` naming the owner. A run
    deletes only files it created (and, after a switch, the files of the corpus it replaced; after
    a killed run, what that run recorded in its lock), never other files in ``out_dir``.
    Raises ValueError when the stream holds no token at all (nothing is left behind then), and
    :class:`CorpusExistsError` when ``out_dir`` holds a corpus and ``overwrite`` is false.
    ``total_chars`` only sizes the progress bar (characters; the file size in bytes is close enough).
    """
    from ..run_lock import lock_folder

    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if shard_tokens < block_size:
        raise ValueError(f"shard_tokens ({shard_tokens}) must be >= block_size ({block_size})")
    specials = special_ids(tokenizer)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab_size <= len(set(specials.as_tuple())):
        raise ValueError(f"the tokenizer holds only its {vocab_size} special tokens; train it on more text "
                         f"or with a larger vocabulary")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: not a folder")
    with lock_folder(out, "prepare") as lock:
        _clean_after_dead_run(out, lock.stale_owner)
        meta_path = out / META_FILE
        previous = read_meta(meta_path) if meta_path.exists() else None
        if previous is not None and not overwrite:
            raise CorpusExistsError(f"{out}: already holds a prepared corpus ({META_FILE}); "
                                    f"pass overwrite=True to replace it")
        return _prepare_locked(documents, tokenizer, out, lock, previous, specials, vocab_size,
                               block_size=block_size, workers=workers, shard_tokens=shard_tokens,
                               chunk_chars=chunk_chars, progress=progress, total_chars=total_chars,
                               extra_meta=extra_meta)


def _prepare_locked(documents, tokenizer, out: Path, lock, previous: Optional[Dict], specials, vocab_size: int, *,
                    block_size, workers, shard_tokens, chunk_chars, progress, total_chars, extra_meta) -> PrepareStats:
    """:func:`prepare_documents` once ``out`` is locked and ``previous`` (its old ``meta.json``) read."""
    from tqdm import tqdm

    started = time.time()
    previous_files = corpus_files(previous) if previous is not None else []
    generation = int(previous.get("generation", 0)) + 1 if previous else 0
    # new names never collide with the old corpus's, nor with other files already in ``out``
    while any((out / ((f"g{generation}-" if generation else "") + name)).exists()
              for name in list(INDEX_FILES.values()) + [TOKENIZER_FILE, _TOKENS_NAME.format(0)]):
        generation += 1
    prefix = f"g{generation}-" if generation else ""
    index_files = {key: prefix + name for key, name in INDEX_FILES.items()}
    tokenizer_file = prefix + TOKENIZER_FILE
    created: List[str] = []  # every name this run makes, recorded in the lock before it is made

    def create(name: str, dtype) -> _AppendFile:
        if (out / name).exists():
            raise FileExistsError(f"{out / name}: exists and is not part of the corpus being replaced; "
                                  f"move it away or choose another output folder")
        created.extend([name, name + ".tmp"])
        lock.record(files=created, replacing=previous_files)
        return _AppendFile(out, name, dtype)

    token_dtype = token_dtype_for(vocab_size)
    shards: List[Dict] = []
    shard_files: List[_AppendFile] = []
    unigram_counts = np.zeros(vocab_size, dtype=np.int64)
    n_tokens = 0
    totals = {"documents": 0, "sentences": 0, "blocks": 0}

    def open_shard() -> None:
        number = len(shards)
        shard_files.extend([create(prefix + _TOKENS_NAME.format(number), token_dtype),
                            create(prefix + _WORD_STARTS_NAME.format(number), np.uint8)])
        shards.append({"tokens": shard_files[-2].name, "word_starts": shard_files[-1].name,
                       "start": n_tokens, "length": 0})

    index: Dict[str, _AppendFile] = {}
    bar = tqdm(total=total_chars, unit="char", unit_scale=True, desc="prepare", disable=not progress)
    try:
        index.update({key: create(name, np.int64) for key, name in index_files.items() if key != "unigram_counts"})
        for offsets in index.values():
            offsets.append(np.zeros(1, np.int64))
        for chunk in encoded_chunks(documents, tokenizer, block_size, workers, chunk_chars):
            bar.update(chunk.n_chars)
            if chunk.tokens.size == 0:
                continue
            if chunk.tokens.max() >= vocab_size:
                raise ValueError("tokenizer produced an id >= its vocabulary size")
            unigram_counts += np.bincount(chunk.tokens, minlength=vocab_size)
            index["documents"].append(n_tokens + np.cumsum(chunk.document_lengths))
            index["sentences"].append(n_tokens + np.cumsum(chunk.sentence_lengths))
            block_ends = np.cumsum(chunk.block_lengths)
            index["blocks"].append(n_tokens + block_ends)
            totals["documents"] += chunk.document_lengths.size
            totals["sentences"] += chunk.sentence_lengths.size
            totals["blocks"] += chunk.block_lengths.size
            # Append whole blocks; a new shard starts at a block boundary once the current is full.
            position = 0
            while position < chunk.tokens.size:
                if not shards:
                    open_shard()
                room = shard_tokens - shards[-1]["length"]
                fitting = int(np.searchsorted(block_ends, position + room, side="right"))
                end = int(block_ends[fitting - 1]) if fitting else 0
                if end <= position:  # the next block does not fit: this shard is full
                    open_shard()
                    continue
                shard_files[-2].append(chunk.tokens[position:end])
                shard_files[-1].append(chunk.word_starts[position:end])
                shards[-1]["length"] += end - position
                n_tokens += end - position
                position = end
        if total_chars:
            bar.update(max(0, total_chars - bar.n))  # blank lines and markup are not counted above
        bar.close()
        if n_tokens == 0:
            raise ValueError("empty corpus: the input holds no token (no non-blank document)")
        counts = create(index_files["unigram_counts"], np.int64)
        counts.append(unigram_counts)
        checks: Dict[str, Dict] = {}
        for file in shard_files + list(index.values()) + [counts]:
            file.commit()
            checks[file.name] = file.check()
        created.extend([tokenizer_file, tokenizer_file + ".tmp", META_FILE + ".tmp"])
        lock.record(files=created, replacing=previous_files)
        tokenizer.save(str(out / (tokenizer_file + ".tmp")))
        os.replace(out / (tokenizer_file + ".tmp"), out / tokenizer_file)
        checks[tokenizer_file] = file_check(out / tokenizer_file)
        meta = {
            "format_version": FORMAT_VERSION,
            "block_size": block_size,
            "vocab_size": vocab_size,
            "token_dtype": token_dtype.name,
            "special_ids": specials.to_dict(),
            "word_boundaries": word_boundaries_known(tokenizer),  # False: word_starts all 1, subword masking only
            "n_documents": totals["documents"],
            "n_sentences": totals["sentences"],
            "n_blocks": totals["blocks"],
            "n_tokens": n_tokens,
            "shards": shards,
            "files": dict(index_files, tokenizer=tokenizer_file),
            "file_checks": checks,
            "generation": generation,
            "created_unix": time.time(),
        }
        meta.update(extra_meta or {})
        meta["meta_crc32"] = meta_crc32(meta)
        tmp_meta = out / (META_FILE + ".tmp")
        with open(tmp_meta, "x", encoding="utf-8") as handle:
            json.dump(meta, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_meta, out / META_FILE)  # the switch: from here on the new corpus is the one
    except BaseException:
        bar.close()
        for file in shard_files + list(index.values()):
            file.discard()
        _remove_files(out, created, keep=previous_files)  # only what this run made
        raise
    _remove_files(out, previous_files, keep=corpus_files(meta))
    if prefix and (previous is not None or not (out / TOKENIZER_FILE).exists()):
        # a copy under the plain name, for tools that look for it (not one a user put there)
        lock.record(files=created + [TOKENIZER_FILE + ".tmp"])
        try:
            tokenizer.save(str(out / (TOKENIZER_FILE + ".tmp")))
            os.replace(out / (TOKENIZER_FILE + ".tmp"), out / TOKENIZER_FILE)
        except BaseException:
            _remove_files(out, [TOKENIZER_FILE + ".tmp"], keep=[])
            raise
    block_lengths = np.diff(np.fromfile(out / index_files["blocks"], dtype="<i8"))
    return PrepareStats(out, totals["documents"], totals["sentences"], totals["blocks"], n_tokens,
                        len(shards), token_dtype.name, time.time() - started,
                        mean_block_length=float(block_lengths.mean()),
                        padding_share=_padding_share(block_lengths, block_size))


def prepare_corpus(
    inputs: Sequence[PathLike],
    tokenizer: Tokenizer,
    out_dir: PathLike,
    *,
    doc_split: str = "blank",
    text_field: str = "text",
    **options,
) -> PrepareStats:
    """Prepare the corpus files/directories ``inputs`` (rules in :mod:`spanbert_fast.data.corpus`)
    into ``out_dir``; ``options`` go to :func:`prepare_documents`."""
    from .corpus import expand_inputs

    files = expand_inputs(inputs)  # fails early, naming a missing path
    total_bytes = sum(path.stat().st_size for path in files)
    documents = iter_documents(files, doc_split=doc_split, text_field=text_field)
    extra = {"inputs": [str(path) for path in files], "doc_split": doc_split, "text_field": text_field}
    try:
        return prepare_documents(documents, tokenizer, out_dir, total_chars=total_bytes, extra_meta=extra, **options)
    except ValueError as error:
        if str(error).startswith("empty corpus"):
            raise ValueError(f"empty corpus: no token in {', '.join(map(str, files))}") from error
        raise

