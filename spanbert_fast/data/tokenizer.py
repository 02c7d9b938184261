"""WordPiece tokenizer: train a cased BERT-style one, load any BERT ``vocab.txt`` / ``tokenizer.json``.

The tokenizer is a plain HF ``tokenizers.Tokenizer`` (no wrapper class), set up like the original
cased BERT: BERT normaliser without lowercasing or accent stripping, BERT pre-tokenizer (split on
whitespace and punctuation), WordPiece with the ``##`` continuation prefix, and a post-processor
giving ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` when special tokens are asked for. Data
preparation encodes with ``add_special_tokens=False`` and adds [CLS]/[SEP] itself when batching.

Special ids are looked up in the vocabulary, never assumed: a tokenizer trained here has
[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, the BERT-cased vocabulary of the SpanBERT checkpoints
has [PAD]=0 [UNK]=100 [CLS]=101 [SEP]=102 [MASK]=103.

Word starts come from the tokenizer's own pre-tokenization, ``Encoding.word_ids``
(:func:`word_starts_of`), for any tokenizer; a tokenizer without a pre-tokenizer knows no word
boundary (:func:`word_boundaries_known`). For WordPiece this is "a token that does not begin with
``##`` starts a word" (:func:`word_start_table`, the same rule as a table over the vocabulary).
"""
from __future__ import annotations

import json
import os
import re
import unicodedata
from collections import Counter
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

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


def _configure(tokenizer: Tokenizer, lowercase: bool = False, strip_accents: Optional[bool] = None) -> Tokenizer:
    """Attach the BERT normaliser, pre-tokenizer, decoder and (if possible) post-processor.
    ``strip_accents`` None follows ``lowercase``, as in BERT."""
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, lowercase=lowercase,
        strip_accents=lowercase if strip_accents is None else strip_accents,
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

    Deterministic: the same texts give the same vocabulary in every run. The ``tokenizers``
    trainer alone does not (huggingface/tokenizers#1794): it creates the ``##c`` continuation
    tokens in hash-map order, and their ids break ties between merges of equal count. So the
    texts are read twice: a first pass counts characters, and the alphabet (the
    ``limit_alphabet`` most frequent non-space characters, ties by code point) and every
    ``##c`` token are handed to the trainer in a fixed order up front. ``texts`` should
    therefore be re-iterable (a list, or an object whose ``__iter__`` reads the files again);
    a one-shot iterator is read into memory first.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed {len(SPECIAL_TOKENS)}, got {vocab_size}")
    if iter(texts) is texts:  # a one-shot iterator cannot be read twice
        texts = list(texts)
    alphabet = _alphabet(texts, limit_alphabet)
    continuations = [CONTINUATION_PREFIX + c for c in alphabet]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix=CONTINUATION_PREFIX))
    _configure(tokenizer)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,  # the ##c tokens count, as when the trainer makes them itself
        min_frequency=min_frequency,
        limit_alphabet=len(alphabet),  # exactly the initial alphabet: nothing else, nothing dropped
        initial_alphabet=alphabet,
        special_tokens=list(SPECIAL_TOKENS) + continuations,
        continuing_subword_prefix=CONTINUATION_PREFIX,
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer = _demote_to_vocabulary(tokenizer, set(continuations))
    _configure(tokenizer)  # the post-processor needs the ids the trainer assigned
    return tokenizer


def _alphabet(texts: Iterable[str], limit: int) -> list:
    """The ``limit`` most frequent characters of ``texts`` that are not whitespace or control
    characters (the BERT normaliser and pre-tokenizer drop those), most frequent first, ties
    by code point; returned sorted by code point."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(text)
    kept = [c for c in counts if not c.isspace() and unicodedata.category(c) not in ("Cc", "Cf")]
    kept.sort(key=lambda c: (-counts[c], ord(c)))
    return sorted(kept[:limit])


def _demote_to_vocabulary(tokenizer: Tokenizer, tokens: set) -> Tokenizer:
    """``tokenizer`` with ``tokens`` removed from its added (special) tokens: they stay in the
    WordPiece vocabulary with their ids, as ordinary pieces the model splits words into."""
    spec = json.loads(tokenizer.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in tokens]
    return Tokenizer.from_str(json.dumps(spec))


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


_MARKER = re.compile(r"^\[[^\[\]\s]+\]$")  # [PAD], [unused12]: markers, not text
_ASCII_UPPER = re.compile(r"[A-Z]")


@dataclass(frozen=True)
class Casing:
    """How a BERT ``vocab.txt`` is normalised, and why."""

    lowercase: bool
    strip_accents: bool
    reason: str

    def describe(self) -> str:
        """One line for ``info`` and ``prepare``: the decision, then the reason."""
        if self.lowercase:
            kind = "uncased: lower-cases" + (" and strips accents" if self.strip_accents else ", keeps accents")
        else:
            kind = "cased: keeps case" + (", strips accents" if self.strip_accents else " and accents")
        return f"{kind} ({self.reason})"


def vocab_casing(path: Path, vocab: Iterable[str], lowercase: Optional[bool] = None) -> Casing:
    """Whether the ``vocab.txt`` at ``path`` (entries ``vocab``) lower-cases, as HF decides.

    In order: ``lowercase`` when given; else ``do_lower_case`` of a ``tokenizer_config.json``
    beside it (and its ``strip_accents``: missing or null follows lower-casing, as in HF); else
    the vocabulary: uncased when no entry other than the bracketed markers (``[CLS]``,
    ``[unused0]``) holds an ASCII upper-case letter. Only ASCII counts: an uncased vocabulary
    keeps symbols such as ``ℝ`` that Unicode calls upper case but that have no lower case.
    """
    if lowercase is not None:
        return Casing(bool(lowercase), bool(lowercase), f"lowercase={bool(lowercase)} was asked for")
    config_path = path.parent / "tokenizer_config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise ValueError(f"{config_path}: not valid JSON ({error})") from error
        if not isinstance(config, dict):
            raise ValueError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
        if config.get("do_lower_case") is not None:
            lower = bool(config["do_lower_case"])
            strip = config.get("strip_accents")
            strip = lower if strip is None else bool(strip)
            return Casing(lower, strip, f"do_lower_case={str(lower).lower()} in {config_path.name}")
    cased_entry = next((token for token in vocab if not _MARKER.match(token) and _ASCII_UPPER.search(token)), None)
    source = f"{path.name}, no do_lower_case in a tokenizer_config.json beside it"
    if cased_entry is None:
        return Casing(True, True, f"no ASCII upper-case letter in any entry of {source}")
    return Casing(False, False, f"entries of {source} hold ASCII upper-case letters, e.g. {cased_entry!r}")


def _read_vocab_txt(path: Path) -> Dict[str, int]:
    vocab: Dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            token = line.rstrip("\n").rstrip("\r")
            if token in vocab:
                raise ValueError(f"{path}: duplicate token {token!r} on line {index + 1}")
            vocab[token] = index
    if "[UNK]" not in vocab:
        raise ValueError(f"{path}: vocabulary has no [UNK] token")
    return vocab


def _from_vocab_txt(path: Path, lowercase: Optional[bool]) -> Tokenizer:
    vocab = _read_vocab_txt(path)
    casing = vocab_casing(path, vocab, lowercase)
    tokenizer = Tokenizer(
        models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix=CONTINUATION_PREFIX)
    )
    # As HF's BERT tokenizers do: the special tokens written in a text stay whole ("a [MASK] b"
    # is a, [MASK], b), matched on the raw text before normalising (so "[mask]" is not one).
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                  for token in SPECIAL_TOKENS if token in vocab])
    return _configure(tokenizer, lowercase=casing.lowercase, strip_accents=casing.strip_accents)


def _tokenizer_file(path: Path) -> Path:
    """The file a tokenizer path names: itself, or a directory's ``tokenizer.json``, else its ``vocab.txt``."""
    if path.is_dir():
        for name in (TOKENIZER_FILE, VOCAB_FILE):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: no {TOKENIZER_FILE} or {VOCAB_FILE} in this directory")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer file not found")
    return path


def _normalizer_lowercases(normalizer: Optional[dict]) -> Tuple[bool, bool]:
    """(lower-cases, strips accents) of a ``tokenizer.json`` normaliser (nested sequences included)."""
    if not normalizer:
        return False, False
    kind = normalizer.get("type")
    if kind == "Sequence":
        found = [_normalizer_lowercases(n) for n in normalizer.get("normalizers", [])]
        return any(f[0] for f in found), any(f[1] for f in found)
    if kind == "BertNormalizer":
        lower = bool(normalizer.get("lowercase"))
        strip = normalizer.get("strip_accents")
        return lower, lower if strip is None else bool(strip)
    return kind == "Lowercase", kind == "StripAccents"


def casing_decision(path: PathLike, lowercase: Optional[bool] = None) -> str:
    """One line saying whether the tokenizer at ``path`` lower-cases and why (``info``, ``prepare``).

    A ``vocab.txt`` gives :func:`vocab_casing`'s decision and reason; a ``tokenizer.json`` says
    what its own normaliser does.
    """
    file = _tokenizer_file(Path(path))
    if file.suffix != ".json":
        return vocab_casing(file, _read_vocab_txt(file), lowercase).describe()
    try:
        normalizer = json.loads(file.read_text(encoding="utf-8")).get("normalizer")
    except (ValueError, AttributeError) as error:
        raise ValueError(f"{file}: not a valid tokenizer.json ({error})") from error
    lower, strip = _normalizer_lowercases(normalizer)
    return Casing(lower, strip, f"the normalizer of {file.name}").describe()


def load_tokenizer(path: PathLike, *, lowercase: Optional[bool] = None) -> Tokenizer:
    """Load a tokenizer from a directory, a ``tokenizer.json`` or a BERT ``vocab.txt``.

    A directory is searched for ``tokenizer.json`` first, then ``vocab.txt``. A ``vocab.txt`` is
    used as is (line number = id) with the BERT pipeline, its special tokens kept whole when they
    are written in a text (as in HF), lower-casing when ``lowercase`` says
    so; ``None`` decides as HF does (:func:`vocab_casing`: ``tokenizer_config.json``'s
    ``do_lower_case`` beside it, else the vocabulary). A ``tokenizer.json`` keeps its own pipeline, but any padding or
    truncation saved in it is switched off: blocks and windows are cut by this package, and a
    saved ``padding`` would put [PAD] ids into the corpus.
    """
    path = _tokenizer_file(Path(path))
    if path.suffix == ".json":
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"{path}: not a valid tokenizer.json ({error})") from error
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return tokenizer
    return _from_vocab_txt(path, lowercase)


def encode_pair(tokenizer: Tokenizer, text: str, text_pair: Optional[str] = None, *,
                add_special_tokens: bool = True):
    """``tokenizer.encode(text, text_pair)`` with HF's rule for the second text: an empty (or
    missing) one encodes ``text`` alone, ``[CLS] x [SEP]``; ``tokenizers`` alone would give
    ``[CLS] x [SEP] [SEP]``."""
    if text_pair:
        return tokenizer.encode(text, text_pair, add_special_tokens=add_special_tokens)
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    """Ids of [PAD] [UNK] [CLS] [SEP] [MASK] in ``tokenizer``'s vocabulary; ValueError if one is missing."""
    ids = {}
    for name, token in zip(("pad", "unk", "cls", "sep", "mask"), SPECIAL_TOKENS):
        index = tokenizer.token_to_id(token)
        if index is None:
            raise ValueError(f"tokenizer has no {token} token")
        ids[name] = index
    return SpecialIds(**ids)


def word_boundaries_known(tokenizer: Tokenizer) -> bool:
    """Whether ``Encoding.word_ids`` tells words apart: the tokenizer splits text into words
    (pre-tokenizes) before its model runs, as BERT, byte-level BPE and Metaspace/Unigram
    tokenizers do. Without a pre-tokenizer the whole text is one "word"."""
    return tokenizer.pre_tokenizer is not None


def word_starts_of(word_ids: Iterable[Sequence[Optional[int]]]) -> np.ndarray:
    """bool [total]: which tokens start a word, for sequences given by their ``Encoding.word_ids``
    (one list per sequence), concatenated in order.

    Token ``i`` starts a word when it is its sequence's first token or its word differs from the
    previous token's; a token without a word (``None``: an added special token) is a word of its
    own. This holds for any tokenizer that pre-tokenizes (:func:`word_boundaries_known`): WordPiece
    ``##`` pieces, byte-level BPE and Unigram pieces alike.
    """
    lists = [list(ids) for ids in word_ids]
    lengths = np.fromiter((len(ids) for ids in lists), dtype=np.int64, count=len(lists))
    total = int(lengths.sum())
    flat = np.fromiter((-1 if w is None else w for ids in lists for w in ids), dtype=np.int64, count=total)
    starts = np.ones(total, dtype=bool)
    if total:
        starts[1:] = (flat[1:] != flat[:-1]) | (flat[1:] == -1)
        firsts = np.cumsum(lengths)[:-1]
        starts[firsts[firsts < total]] = True
    return starts


def word_start_table(tokenizer: Tokenizer) -> np.ndarray:
    """Bool array of length vocab_size: ``table[id]`` is True when token ``id`` starts a word."""
    return np.array([is_word_start(token) for token in vocab_tokens(tokenizer)], dtype=bool)
