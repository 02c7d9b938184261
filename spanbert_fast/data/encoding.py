"""Sentence encoding and block packing, the work ``prepare`` hands to its workers: a chunk of
documents → sentences (:func:`~spanbert_fast.data.corpus.split_sentences`) → token ids and
word-start flags (``tokenizer.encode_batch``) → block lengths (:func:`pack_blocks`).

Packing (:func:`pack_blocks`): blocks of at most ``block_size`` tokens are filled greedily with
whole sentences of ONE document and never cross documents; a sentence longer than a block is cut
into ``block_size`` pieces (its last piece may be followed by further sentences). Blocks are
contiguous and cover every token of the corpus exactly once, in corpus order. ``block_size`` is the
block without [CLS]/[SEP] (510 for 512-token model inputs). Documents and sentences without any
token are dropped.
"""
from __future__ import annotations

import multiprocessing
import os
from collections import deque
from typing import Iterable, Iterator, List, NamedTuple, Optional, Sequence

import numpy as np
from tokenizers import Tokenizer

from .corpus import Document, split_sentences
from .tokenizer import word_boundaries_known, word_starts_of

DEFAULT_CHUNK_CHARS = 1 << 22  # ~4 MB of text per unit of work
MAX_PIECE_CHARS = 1 << 16  # longer sentences are encoded in pieces: tokenizers' memory grows with its input
ENCODE_BATCH_CHARS = 1 << 20  # characters per encode_batch call (its encodings take ~100x their text)


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




class EncodedChunk(NamedTuple):
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


def _encode_chunk(texts: List[str], block_size: int) -> EncodedChunk:
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
    return EncodedChunk(
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


def encoded_chunks(
    documents: Iterable[Document], tokenizer: Tokenizer, block_size: int, workers: int, chunk_chars: int
) -> Iterator[EncodedChunk]:
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

