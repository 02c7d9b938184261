"""The prepared corpus on disk: its format, the ``meta.json`` integrity checks, and the read-only,
memory-mapped :class:`BlockDataset` (written by :mod:`spanbert_fast.data.prepare`).

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
boundary, so every block lies in one shard. ``meta.json`` holds each file's size and CRC-32
(``file_checks``) and its own CRC-32 (``meta_crc32``); :class:`BlockDataset` checks them on
opening. A corpus written by ``overwrite`` carries a generation prefix on its file names
(``g1-tokens-00000.bin``); ``meta.json`` lists the names.
"""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Union

import numpy as np
from tokenizers import Tokenizer

from .tokenizer import SpecialIds

PathLike = Union[str, os.PathLike]

FORMAT_VERSION = 1
META_FILE = "meta.json"
INDEX_FILES = {
    "documents": "documents.bin",
    "sentences": "sentences.bin",
    "blocks": "blocks.bin",
    "unigram_counts": "unigram_counts.bin",
}


def token_dtype_for(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65535), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)



def confined_name(name, where: str) -> str:
    """``name`` when it is a plain file name (no folder part), so that it names a file inside
    the corpus folder; ValueError naming ``where`` (e.g. ``meta.json files.tokenizer``) otherwise."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
            or "\x00" in name or os.path.isabs(name)):
        raise ValueError(f"{where}: {name!r} is not a file name inside the corpus folder")
    return name


def corpus_files(meta: Dict, where: str = META_FILE) -> List[str]:
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


def read_meta(path: Path) -> Dict:
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


def meta_crc32(meta: Dict) -> str:
    """CRC-32 of ``meta`` (without its own ``meta_crc32``) as canonical JSON."""
    body = {key: value for key, value in meta.items() if key != "meta_crc32"}
    return f"{zlib.crc32(json.dumps(body, sort_keys=True).encode('utf-8')):08x}"


def file_check(path: Path) -> Dict:
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
        self.meta = read_meta(meta_path)
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: format_version {self.meta.get('format_version')} != {FORMAT_VERSION}")
        missing = [key for key in _META_KEYS if key not in self.meta]
        if missing:
            raise ValueError(f"{meta_path}: missing {', '.join(missing)}; a damaged corpus: prepare it again")
        if "meta_crc32" in self.meta and self.meta["meta_crc32"] != meta_crc32(self.meta):
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
        corpus_files(self.meta, str(meta_path))  # every name stays inside the folder
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
                if file_check(self.path / name) != check:
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
