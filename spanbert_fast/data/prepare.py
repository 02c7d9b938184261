"""Corpus preparation: text files → memory-mapped token shards + an index of blocks.

Pipeline (streaming; only a few chunks of text are in memory at any time)::

    files ──iter_documents──▶ documents ──chunks of ~chunk_chars──▶ workers:
        split_sentences → tokenizer.encode_batch → word-start flags → pack_blocks
    ──in input order──▶ append to token / word-start shards and to the index files

Packing (:func:`pack_blocks`): blocks of at most ``block_size`` tokens are filled greedily with
whole sentences of ONE document and never cross documents; a sentence longer than a block is cut
into ``block_size`` pieces (its last piece may be followed by further sentences). Blocks are
contiguous and cover every token of the corpus exactly once, in corpus order. ``block_size`` is the
block without [CLS]/[SEP] (510 for 512-token model inputs). Documents and sentences without any
token are dropped.

Output directory (every array is a raw little-endian binary file, described in ``meta.json``)::

    tokens-00000.bin       token ids, uint16 when vocab_size <= 65535 else uint32
    word_starts-00000.bin  uint8, 1 where the token starts a word (tokenizer's word_ids; all 1 without word_boundaries)
    documents.bin          int64 [n_documents + 1]  token offset of each document, then the total
    sentences.bin          int64 [n_sentences + 1]  token offset of each sentence, then the total
    blocks.bin             int64 [n_blocks + 1]     token offset of each block, then the total
    unigram_counts.bin     int64 [vocab_size]       corpus token counts (random-token replacement)
    tokenizer.json         the tokenizer used
    meta.json              written last; its presence marks a complete directory

Offsets are global over the concatenation of the token shards; a new shard starts only at a block
boundary, so every block lies in one shard. Every file is written under a temporary name and moved
into place with ``os.replace``; ``meta.json`` is replaced last, so readers never see a half-written
directory. ``meta.json`` also holds each file's size and CRC-32 (``file_checks``) and its own
CRC-32 (``meta_crc32``); :class:`BlockDataset` checks them on opening.

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
import multiprocessing
import os
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Union

import numpy as np
from tokenizers import Tokenizer

from .corpus import Document, iter_documents, split_sentences
from .tokenizer import TOKENIZER_FILE, SpecialIds, special_ids, word_boundaries_known, word_starts_of

PathLike = Union[str, os.PathLike]

FORMAT_VERSION = 1
META_FILE = "meta.json"
DEFAULT_BLOCK_SIZE = 510
DEFAULT_SHARD_TOKENS = 1 << 28  # 256M tokens: 512 MiB per uint16 shard
DEFAULT_CHUNK_CHARS = 1 << 22  # ~4 MB of text per unit of work
MAX_PIECE_CHARS = 1 << 16  # longer sentences are encoded in pieces: tokenizers' memory grows with its input
ENCODE_BATCH_CHARS = 1 << 20  # characters per encode_batch call (its encodings take ~100x their text)
INDEX_FILES = {
    "documents": "documents.bin",
    "sentences": "sentences.bin",
    "blocks": "blocks.bin",
    "unigram_counts": "unigram_counts.bin",
}
_TOKENS_NAME = "tokens-{:05d}.bin"
_WORD_STARTS_NAME = "word_starts-{:05d}.bin"


def token_dtype_for(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65535), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def pack_blocks(sentence_lengths: Sequence[int], block_size: int) -> List[int]:
    """Greedy packing of one document's sentences into blocks; returns the block lengths.

    Whole sentences are added while they fit; a sentence that does not fit starts a new block; a
    sentence longer than ``block_size`` first closes the current block, then is cut into
    ``block_size`` pieces, its last piece opening the next block. Zero-length sentences are ignored.
    The lengths sum to ``sum(sentence_lengths)``.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    blocks: List[int] = []
    current = 0
    for length in sentence_lengths:
        length = int(length)
        if length <= 0:
            continue
        if length > block_size:
            if current:
                blocks.append(current)
            full, rest = divmod(length, block_size)
            blocks.extend([block_size] * full)
            current = rest
        elif current + length > block_size:
            blocks.append(current)
            current = length
        else:
            current += length
    if current:
        blocks.append(current)
    return blocks


# --------------------------------------------------------------------------- encoding (workers)


class _EncodedChunk(NamedTuple):
    """A chunk of documents, tokenised and packed; all arrays in document order."""

    tokens: np.ndarray  # [T] int32
    word_starts: np.ndarray  # [T] uint8
    sentence_lengths: np.ndarray  # [S] int64, non-empty sentences only
    document_lengths: np.ndarray  # [D] int64, non-empty documents only
    block_lengths: np.ndarray  # [N] int64
    n_chars: int


_worker_tokenizer: Optional[Tokenizer] = None
_worker_words_known = False


def _init_worker(tokenizer_json: str) -> None:
    global _worker_tokenizer, _worker_words_known
    _worker_tokenizer = Tokenizer.from_str(tokenizer_json)
    _worker_words_known = word_boundaries_known(_worker_tokenizer)


def _sentence_pieces(sentence: str, limit: int) -> List[str]:
    """``sentence`` cut before a space into pieces of at most ``limit`` characters (one piece when
    it is short enough; a stretch of ``limit`` characters without a space is cut where it ends)."""
    pieces: List[str] = []
    start = 0
    while len(sentence) - start > limit:
        cut = sentence.rfind(" ", start + 1, start + limit)
        cut = cut if cut > start else start + limit
        pieces.append(sentence[start:cut])
        start = cut
    pieces.append(sentence[start:])
    return pieces


def _encode_sentences(sentences: List[str], batch_chars: int) -> tuple:
    """Token ids of ``sentences`` concatenated (int32), which of them start a word (uint8: from the
    encodings' ``word_ids``; all 1 when the tokenizer gives no word boundaries) and the tokens per
    sentence (int64).

    Memory stays bounded for any input: a sentence longer than ``MAX_PIECE_CHARS`` is encoded in
    pieces cut before a space (the pre-tokenizer splits at spaces, so the ids are the same), and
    ``encode_batch`` sees at most about ``batch_chars`` characters at a time, its encodings turned
    into an id array before the next batch.
    """
    assert _worker_tokenizer is not None
    lengths = np.zeros(len(sentences), dtype=np.int64)
    token_arrays: List[np.ndarray] = []
    word_start_arrays: List[np.ndarray] = []

    def encode(batch: List[str], owners: List[int]) -> None:
        encodings = _worker_tokenizer.encode_batch(batch, add_special_tokens=False)
        ids = [encoding.ids for encoding in encodings]
        piece_lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        np.add.at(lengths, np.asarray(owners, dtype=np.int64), piece_lengths)
        token_arrays.append(np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(piece_lengths.sum())))
        # A piece is cut before a space, so its first token starts a word like a sentence's does.
        word_start_arrays.append(word_starts_of(e.word_ids for e in encodings) if _worker_words_known
                                 else np.ones(token_arrays[-1].size, dtype=bool))

    batch: List[str] = []
    owners: List[int] = []
    size = 0
    for number, sentence in enumerate(sentences):
        for piece in _sentence_pieces(sentence, MAX_PIECE_CHARS) if len(sentence) > MAX_PIECE_CHARS else (sentence,):
            if batch and size + len(piece) > batch_chars:
                encode(batch, owners)
                batch, owners, size = [], [], 0
            batch.append(piece)
            owners.append(number)
            size += len(piece)
    if batch:
        encode(batch, owners)
    if not token_arrays:
        return np.zeros(0, np.int32), np.zeros(0, np.uint8), lengths
    return np.concatenate(token_arrays), np.concatenate(word_start_arrays).astype(np.uint8), lengths


def _encode_chunk(texts: List[str], block_size: int) -> _EncodedChunk:
    """Split, tokenise (``encode_batch`` on at most ~``ENCODE_BATCH_CHARS`` characters at a time)
    and pack a chunk of documents."""
    assert _worker_tokenizer is not None
    per_document = [split_sentences(text) for text in texts]
    flat = [sentence for sentences in per_document for sentence in sentences]
    tokens, word_starts, all_lengths = _encode_sentences(flat, ENCODE_BATCH_CHARS)

    sentence_lengths: List[np.ndarray] = []
    document_lengths: List[int] = []
    block_lengths: List[int] = []
    start = 0
    for sentences in per_document:
        lengths = all_lengths[start : start + len(sentences)]
        start += len(sentences)
        lengths = lengths[lengths > 0]
        if lengths.size == 0:
            continue
        sentence_lengths.append(lengths)
        document_lengths.append(int(lengths.sum()))
        block_lengths.extend(pack_blocks(lengths.tolist(), block_size))
    return _EncodedChunk(
        tokens=tokens,
        word_starts=word_starts,
        sentence_lengths=np.concatenate(sentence_lengths) if sentence_lengths else np.zeros(0, np.int64),
        document_lengths=np.asarray(document_lengths, dtype=np.int64),
        block_lengths=np.asarray(block_lengths, dtype=np.int64),
        n_chars=sum(len(text) for text in texts),
    )


def _chunks(documents: Iterable[Document], chunk_chars: int) -> Iterator[List[str]]:
    chunk: List[str] = []
    size = 0
    for document in documents:
        chunk.append(document.text)
        size += len(document.text)
        if size >= chunk_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _encoded_chunks(
    documents: Iterable[Document], tokenizer: Tokenizer, block_size: int, workers: int, chunk_chars: int
) -> Iterator[_EncodedChunk]:
    """Encoded chunks in input order. With ``workers > 1`` chunks go to a process pool, at most
    ``2 * workers`` in flight (the input is consumed lazily, so memory stays bounded)."""
    tokenizer_json = tokenizer.to_str()
    if workers <= 1:
        _init_worker(tokenizer_json)
        for texts in _chunks(documents, chunk_chars):
            yield _encode_chunk(texts, block_size)
        return
    # Each worker encodes its chunk on one thread; the pool provides the parallelism. Workers are
    # forked where possible (spawn re-imports __main__, which fails for stdin/interactive
    # scripts); tokenizers turns its own thread pool off in forked children, as wanted here.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # inherited by the workers
    try:
        with context.Pool(workers, initializer=_init_worker, initargs=(tokenizer_json,)) as pool:
            pending: deque = deque()
            for texts in _chunks(documents, chunk_chars):
                pending.append(pool.apply_async(_encode_chunk, (texts, block_size)))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().get()
            while pending:
                yield pending.popleft().get()
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


# --------------------------------------------------------------------------- writing


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


def confined_name(name, where: str) -> str:
    """``name`` when it is a plain file name (no folder part), so that it names a file inside
    the corpus folder; ValueError naming ``where`` (e.g. ``meta.json files.tokenizer``) otherwise."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
            or "\x00" in name or os.path.isabs(name)):
        raise ValueError(f"{where}: {name!r} is not a file name inside the corpus folder")
    return name


def _corpus_files(meta: Dict, where: str = META_FILE) -> List[str]:
    """Every data file a ``meta.json`` names (each checked by :func:`confined_name`)."""
    files = meta.get("files", {})
    if not isinstance(files, dict) or not isinstance(meta.get("shards", []), list):
        raise ValueError(f"{where}: 'files' must be an object and 'shards' a list")
    names = [confined_name(name, f"{where} files.{key}") for key, name in files.items()]
    for number, shard in enumerate(meta.get("shards", [])):
        if not isinstance(shard, dict):
            raise ValueError(f"{where}: shards[{number}] is not an object")
        names += [confined_name(shard.get(key), f"{where} shards[{number}].{key}") for key in ("tokens", "word_starts")]
    return names


def _read_meta(path: Path) -> Dict:
    """``meta.json`` as a dict; ValueError naming the file when it is empty, not JSON or not an object."""
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a meta.json (binary, not UTF-8 JSON)") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}); "
                         f"an unfinished or damaged corpus: prepare it again") from error
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: not a JSON object")
    return meta


def _meta_crc32(meta: Dict) -> str:
    """CRC-32 of ``meta`` (without its own ``meta_crc32``) as canonical JSON."""
    body = {key: value for key, value in meta.items() if key != "meta_crc32"}
    return f"{zlib.crc32(json.dumps(body, sort_keys=True).encode('utf-8')):08x}"


def _file_check(path: Path) -> Dict:
    """``{"bytes", "crc32"}`` of a file, read in 16 MiB pieces."""
    crc, size = 0, 0
    with open(path, "rb") as handle:
        while True:
            piece = handle.read(1 << 24)
            if not piece:
                break
            crc = zlib.crc32(piece, crc)
            size += len(piece)
    return {"bytes": size, "crc32": f"{crc:08x}"}


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
        listed = _corpus_files(_read_meta(meta_path)) if meta_path.exists() else []
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
        previous = _read_meta(meta_path) if meta_path.exists() else None
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
    previous_files = _corpus_files(previous) if previous is not None else []
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
        for chunk in _encoded_chunks(documents, tokenizer, block_size, workers, chunk_chars):
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
        checks[tokenizer_file] = _file_check(out / tokenizer_file)
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
        meta["meta_crc32"] = _meta_crc32(meta)
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
    _remove_files(out, previous_files, keep=_corpus_files(meta))
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


# --------------------------------------------------------------------------- reading


class Block(NamedTuple):
    """One block: its token ids (int64) and which of them start a word (bool)."""

    token_ids: np.ndarray
    word_starts: np.ndarray


_META_KEYS = ("block_size", "vocab_size", "token_dtype", "special_ids", "n_documents", "n_sentences", "n_blocks",
              "n_tokens", "shards", "files")


class BlockDataset:
    """Read-only, memory-mapped view of a prepared directory; ``dataset[i]`` is :class:`Block` i.

    Opening checks the corpus: ``meta.json`` readable and unchanged (``meta_crc32``), every file
    name inside the folder, every file of the size its counts give, the block index consistent
    with ``block_size`` and ``n_tokens``, and (``verify``, default) every file's CRC-32; an error
    names the first file that fails. Corpora written before these checks existed have no
    checksums; their sizes and block index are still checked.

    Memory maps are opened lazily in each process, so the object pickles cheaply (DataLoader
    workers, spawn) and never reads a shard it does not need.
    """

    def __init__(self, path: PathLike, *, verify: bool = True):
        self.path = Path(path)
        meta_path = self.path / META_FILE
        if not meta_path.is_file():
            what = "not a folder" if self.path.exists() and not self.path.is_dir() else (
                f"no {META_FILE}; not a prepared corpus (or an unfinished one)")
            raise FileNotFoundError(f"{self.path}: {what}")
        self.meta = _read_meta(meta_path)
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: format_version {self.meta.get('format_version')} != {FORMAT_VERSION}")
        missing = [key for key in _META_KEYS if key not in self.meta]
        if missing:
            raise ValueError(f"{meta_path}: missing {', '.join(missing)}; a damaged corpus: prepare it again")
        if "meta_crc32" in self.meta and self.meta["meta_crc32"] != _meta_crc32(self.meta):
            raise ValueError(f"{meta_path}: its values were changed after prepare wrote it (checksum mismatch); "
                             f"prepare the corpus again")
        try:
            self.block_size: int = int(self.meta["block_size"])
            self.vocab_size: int = int(self.meta["vocab_size"])
            self.token_dtype = np.dtype(self.meta["token_dtype"])
            self.special_ids = SpecialIds.from_dict(self.meta["special_ids"])
            self.word_boundaries: bool = bool(self.meta.get("word_boundaries", True))  # see prepare_documents
            self._shard_starts = np.array([shard["start"] for shard in self.meta["shards"]], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{meta_path}: malformed ({type(error).__name__}: {error})") from error
        _corpus_files(self.meta, str(meta_path))  # every name stays inside the folder
        self._maps: Optional[Dict] = None
        self._check_files(verify)

    def _expected_sizes(self) -> Dict[str, int]:
        """Bytes each data file must have, from the counts in ``meta.json``."""
        meta, files = self.meta, self.meta["files"]
        sizes = {files[key]: 8 * (int(meta[f"n_{key}"]) + 1) for key in ("blocks", "documents", "sentences")}
        sizes[files["unigram_counts"]] = 8 * self.vocab_size
        for shard in meta["shards"]:
            sizes[shard["tokens"]] = int(shard["length"]) * self.token_dtype.itemsize
            sizes[shard["word_starts"]] = int(shard["length"])
        return sizes

    def _check_files(self, verify: bool) -> None:
        """Sizes from the counts, then (``verify``) each file's CRC-32 against ``file_checks``,
        and the block index: offsets from 0 to ``n_tokens``, every block 1..``block_size`` tokens,
        shards starting where the previous ends. ValueError naming the file on the first mismatch."""
        meta = self.meta
        checks = meta.get("file_checks", {})
        try:
            sizes = self._expected_sizes()
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{self.path / META_FILE}: malformed ({type(error).__name__}: {error})") from error
        for name, size in sizes.items():
            path = self.path / name
            try:
                actual = path.stat().st_size
            except FileNotFoundError:
                raise FileNotFoundError(f"{path}: missing (listed in {META_FILE}); prepare the corpus again") from None
            if actual != size or (name in checks and checks[name].get("bytes") != size):
                raise ValueError(f"{path}: {actual} bytes, but {META_FILE} describes {size}: a truncated or "
                                 f"damaged corpus; prepare it again")
        if verify:
            for name, check in checks.items():
                name = confined_name(name, f"{META_FILE} file_checks")
                if _file_check(self.path / name) != check:
                    raise ValueError(f"{self.path / name}: checksum mismatch (the file changed after prepare "
                                     f"wrote it); prepare the corpus again")
        offsets = np.fromfile(self.path / meta["files"]["blocks"], dtype="<i8")
        lengths = np.diff(offsets)
        starts = np.cumsum([0] + [int(shard["length"]) for shard in meta["shards"]])
        if (offsets[0] != 0 or offsets[-1] != meta["n_tokens"] or (lengths.size and (
                lengths.min() < 1 or lengths.max() > self.block_size)) or starts[-1] != meta["n_tokens"]
                or not np.array_equal(starts[:-1], self._shard_starts)):
            raise ValueError(f"{self.path / meta['files']['blocks']}: block index does not match {META_FILE} "
                             f"(block_size {self.block_size}, n_tokens {meta['n_tokens']}); prepare the corpus again")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"] = None
        return state

    def _open(self) -> Dict:
        if self._maps is None:
            def memmap(name: str, dtype, count: int) -> np.ndarray:
                try:
                    return np.memmap(self.path / name, dtype=dtype, mode="r", shape=(count,))
                except (OSError, ValueError) as error:  # e.g. the file shrank since the size check
                    raise ValueError(f"{self.path / name}: cannot map {count} items ({error})") from error

            files = self.meta["files"]
            self._maps = {
                "blocks": memmap(files["blocks"], "<i8", self.meta["n_blocks"] + 1),
                "documents": memmap(files["documents"], "<i8", self.meta["n_documents"] + 1),
                "sentences": memmap(files["sentences"], "<i8", self.meta["n_sentences"] + 1),
                "tokens": [memmap(s["tokens"], self.token_dtype.newbyteorder("<"), s["length"])
                           for s in self.meta["shards"]],
                "word_starts": [memmap(s["word_starts"], np.uint8, s["length"]) for s in self.meta["shards"]],
            }
        return self._maps

    def __len__(self) -> int:
        return int(self.meta["n_blocks"])

    def __getitem__(self, index: int) -> Block:
        maps = self._open()
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"block {index} out of range for {n} blocks")
        index %= n
        start, end = int(maps["blocks"][index]), int(maps["blocks"][index + 1])
        shard = int(np.searchsorted(self._shard_starts, start, side="right")) - 1
        offset = int(self._shard_starts[shard])
        token_ids = np.asarray(maps["tokens"][shard][start - offset : end - offset], dtype=np.int64)
        word_starts = np.asarray(maps["word_starts"][shard][start - offset : end - offset]).astype(bool)
        return Block(token_ids, word_starts)

    @property
    def block_offsets(self) -> np.ndarray:
        """int64 [n_blocks + 1]: global token offset of each block, then the total."""
        return self._open()["blocks"]

    @property
    def document_offsets(self) -> np.ndarray:
        """int64 [n_documents + 1]: global token offset of each document, then the total."""
        return self._open()["documents"]

    @property
    def sentence_offsets(self) -> np.ndarray:
        """int64 [n_sentences + 1]: global token offset of each sentence, then the total."""
        return self._open()["sentences"]

    def block_lengths(self) -> np.ndarray:
        """int64 [n_blocks]: tokens per block (without [CLS]/[SEP])."""
        return np.diff(np.asarray(self.block_offsets))

    def block_document(self, index: int) -> int:
        """Index of the document block ``index`` comes from."""
        start = int(self.block_offsets[index])
        return int(np.searchsorted(self.document_offsets, start, side="right")) - 1

    def unigram_counts(self) -> np.ndarray:
        """int64 [vocab_size]: how often each id occurs in the corpus."""
        path = self.path / self.meta["files"]["unigram_counts"]
        return np.fromfile(path, dtype="<i8", count=self.vocab_size)

    def tokenizer(self) -> Tokenizer:
        """The tokenizer the corpus was prepared with."""
        return Tokenizer.from_file(str(self.path / self.meta["files"]["tokenizer"]))
