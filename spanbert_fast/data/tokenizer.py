"""WordPiece tokenizer: train a cased BERT-style one, load any BERT ``vocab.txt`` / ``tokenizer.json``.

The tokenizer is a plain HF ``tokenizers.Tokenizer`` (no wrapper class), set up like the original
cased BERT: BERT normaliser without lowercasing or accent stripping, BERT pre-tokenizer (split on
whitespace and punctuation), WordPiece with the ``##`` continuation prefix, and a post-processor
giving ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` when special tokens are asked for. Data
preparation encodes with ``add_special_tokens=False`` and adds [CLS]/[SEP] itself when batching.

Special ids are looked up in the vocabulary, never assumed: a tokenizer trained here has
[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, the BERT-cased vocabulary of the SpanBERT checkpoints
has [PAD]=0 [UNK]=100 [CLS]=101 [SEP]=102 [MASK]=103.

Word starts: a token that does not begin with ``##`` starts a word (:func:`word_start_table`).
"""
from __future__ import annotations

import json
import os
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple, Union

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from spanbert_fast.io import atomic_write

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CONTINUATION_PREFIX = "##"
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the five BERT special tokens in one vocabulary."""

    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    def as_tuple(self) -> Tuple[int, int, int, int, int]:
        """(pad, unk, cls, sep, mask)."""
        return astuple(self)

    def to_dict(self) -> Dict[str, int]:
        return {"pad": self.pad, "unk": self.unk, "cls": self.cls, "sep": self.sep, "mask": self.mask}

    @classmethod
    def from_dict(cls, values: Dict[str, int]) -> "SpecialIds":
        return cls(**{k: int(values[k]) for k in ("pad", "unk", "cls", "sep", "mask")})


def is_word_start(token: str) -> bool:
    """True when ``token`` starts a word, i.e. it is not a ``##`` continuation piece."""
    return not token.startswith(CONTINUATION_PREFIX)


def _configure(tokenizer: Tokenizer, lowercase: bool = False) -> Tokenizer:
    """Attach the BERT normaliser, pre-tokenizer, decoder and (if possible) post-processor."""
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls_id is not None and sep_id is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
    return tokenizer


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a cased WordPiece tokenizer on an iterable of texts (documents or lines).

    The five special tokens get ids 0..4 in the order [PAD] [UNK] [CLS] [SEP] [MASK].
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed {len(SPECIAL_TOKENS)}, got {vocab_size}")
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix=CONTINUATION_PREFIX))
    _configure(tokenizer)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        limit_alphabet=limit_alphabet,
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix=CONTINUATION_PREFIX,
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    _configure(tokenizer)  # the post-processor needs the ids the trainer assigned
    return tokenizer


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_write(path) as handle:
        handle.write(text)


def vocab_tokens(tokenizer: Tokenizer) -> list:
    """The vocabulary as a list indexed by id (ids must be dense 0..V-1)."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        if index >= len(tokens) or tokens[index] is not None:
            raise ValueError("tokenizer ids are not a dense range 0..V-1")
        tokens[index] = token
    return tokens


def save_tokenizer(tokenizer: Tokenizer, out_dir: PathLike) -> Path:
    """Write ``tokenizer.json`` and ``vocab.txt`` (one token per line, line number = id) into
    ``out_dir`` (created if needed), each atomically. Returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(out / VOCAB_FILE, "".join(token + "\n" for token in vocab_tokens(tokenizer)))
    _atomic_write_text(out / TOKENIZER_FILE, tokenizer.to_str(pretty=True))
    return out


def vocab_is_uncased(path: Path, vocab: Dict[str, int]) -> bool:
    """Whether a ``vocab.txt`` belongs to an uncased model: ``do_lower_case`` from a
    ``tokenizer_config.json`` beside it, else "no token outside [...] has an upper-case letter"."""
    config = path.parent / "tokenizer_config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text(encoding="utf-8")).get("do_lower_case")
        except ValueError as error:
            raise ValueError(f"{config}: not valid JSON ({error})") from error
        if value is not None:
            return bool(value)
    return not any(ch.isupper() for token in vocab if not token.startswith("[") for ch in token)


def _from_vocab_txt(path: Path, lowercase: Optional[bool]) -> Tokenizer:
    vocab: Dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            token = line.rstrip("\n").rstrip("\r")
            if token in vocab:
                raise ValueError(f"{path}: duplicate token {token!r} on line {index + 1}")
            vocab[token] = index
    if "[UNK]" not in vocab:
        raise ValueError(f"{path}: vocabulary has no [UNK] token")
    if lowercase is None:
        lowercase = vocab_is_uncased(path, vocab)
    tokenizer = Tokenizer(
        models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix=CONTINUATION_PREFIX)
    )
    return _configure(tokenizer, lowercase=lowercase)


def load_tokenizer(path: PathLike, *, lowercase: Optional[bool] = None) -> Tokenizer:
    """Load a tokenizer from a directory, a ``tokenizer.json`` or a BERT ``vocab.txt``.

    A directory is searched for ``tokenizer.json`` first, then ``vocab.txt``. A ``vocab.txt`` is
    used as is (line number = id) with the BERT pipeline, lower-casing when ``lowercase`` says
    so; ``None`` decides from ``tokenizer_config.json``'s ``do_lower_case`` beside it, else
    from the vocabulary (no upper-case token: uncased). A ``tokenizer.json`` keeps its own pipeline, but any padding or
    truncation saved in it is switched off: blocks and windows are cut by this package, and a
    saved ``padding`` would put [PAD] ids into the corpus.
    """
    path = Path(path)
    if path.is_dir():
        for name in (TOKENIZER_FILE, VOCAB_FILE):
            if (path / name).is_file():
                return load_tokenizer(path / name, lowercase=lowercase)
        raise FileNotFoundError(f"{path}: no {TOKENIZER_FILE} or {VOCAB_FILE} in this directory")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer file not found")
    if path.suffix == ".json":
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"{path}: not a valid tokenizer.json ({error})") from error
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return tokenizer
    return _from_vocab_txt(path, lowercase)


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    """Ids of [PAD] [UNK] [CLS] [SEP] [MASK] in ``tokenizer``'s vocabulary; ValueError if one is missing."""
    ids = {}
    for name, token in zip(("pad", "unk", "cls", "sep", "mask"), SPECIAL_TOKENS):
        index = tokenizer.token_to_id(token)
        if index is None:
            raise ValueError(f"tokenizer has no {token} token")
        ids[name] = index
    return SpecialIds(**ids)


def word_start_table(tokenizer: Tokenizer) -> np.ndarray:
    """Bool array of length vocab_size: ``table[id]`` is True when token ``id`` starts a word."""
    return np.array([is_word_start(token) for token in vocab_tokens(tokenizer)], dtype=bool)
