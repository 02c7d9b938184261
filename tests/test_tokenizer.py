"""WordPiece tokenizer: training (cased, special ids), save/load round trip, loading a BERT
vocab.txt with BERT-cased special ids, word starts, and the ``spanbert-fast tokenizer`` CLI.

Loading a BERT ``vocab.txt`` is checked against HF ``BertTokenizerFast`` (skipped without
transformers) on tests/data/bert_uncased_vocab.txt and bert_cased_vocab.txt, vocabularies laid out
like the published ones (tests/data/make_bert_vocabs.py), with and without a tokenizer_config.json.
"""
import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from spanbert_fast.cli import main
from spanbert_fast.data.corpus import demo_corpus_texts, python_help_topics
from spanbert_fast.data.tokenizer import (
    SPECIAL_TOKENS,
    SpecialIds,
    casing_decision,
    encode_pair,
    is_word_start,
    load_tokenizer,
    save_tokenizer,
    special_ids,
    train_tokenizer,
    word_boundaries_known,
    word_start_table,
    word_starts_of,
)

DATA = Path(__file__).parent / "data"
UNCASED_VOCAB = DATA / "bert_uncased_vocab.txt"
CASED_VOCAB = DATA / "bert_cased_vocab.txt"
SENTENCE = "When a name is not bound, an attempt to evaluate it raises a NameError exception."


@pytest.fixture(scope="module")
def demo_tokenizer():
    return train_tokenizer([document.text for document in python_help_topics()], vocab_size=2000)


def bert_cased_like_vocab(path):
    """A vocab.txt laid out like bert-base-cased: [PAD]=0, [unusedN], [UNK]=100 .. [MASK]=103."""
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += ["Hello", "world", "Span", "##BE", "##RT", "!", ",", "the", "##s", "cat"]
    path.write_text("".join(token + "\n" for token in tokens), encoding="utf-8")
    return tokens


def test_trained_tokenizer_has_specials_first_and_is_cased(demo_tokenizer):
    assert special_ids(demo_tokenizer) == SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)
    assert demo_tokenizer.get_vocab_size() == 2000
    upper = demo_tokenizer.encode("Python", add_special_tokens=False).ids
    lower = demo_tokenizer.encode("python", add_special_tokens=False).ids
    assert upper != lower
    with_specials = demo_tokenizer.encode("a name").ids
    assert with_specials[0] == 2 and with_specials[-1] == 3


def test_round_trip_text(demo_tokenizer):
    ids = demo_tokenizer.encode(SENTENCE, add_special_tokens=False).ids
    assert 1 not in ids  # no [UNK] for text from the training corpus
    assert demo_tokenizer.decode(ids) == SENTENCE


def test_save_and_load_give_the_same_ids(demo_tokenizer, tmp_path):
    save_tokenizer(demo_tokenizer, tmp_path / "tok")
    vocab_lines = (tmp_path / "tok" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab_lines) == 2000 and vocab_lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    expected = demo_tokenizer.encode(SENTENCE).ids
    for path in (tmp_path / "tok", tmp_path / "tok" / "tokenizer.json", tmp_path / "tok" / "vocab.txt"):
        assert load_tokenizer(path).encode(SENTENCE).ids == expected, path


def test_saved_padding_and_truncation_are_switched_off(demo_tokenizer, tmp_path):
    """A tokenizer.json saved with padding/truncation on must not pad or cut our texts."""
    configured = train_tokenizer(demo_corpus_texts()[:5], vocab_size=300)
    configured.enable_padding(length=64)
    configured.enable_truncation(8)
    configured.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    ids = loaded.encode(SENTENCE).ids
    assert len(ids) > 8 and 0 not in ids  # neither cut to 8 nor padded with [PAD]=0
    assert loaded.padding is None and loaded.truncation is None


def test_vocab_txt_casing_is_detected(tmp_path):
    """An uncased vocab.txt (no upper-case token) lower-cases; tokenizer_config.json decides first."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (tmp_path / "uncased").mkdir()
    (tmp_path / "uncased" / "vocab.txt").write_text("\n".join(specials + ["hello", "world"]) + "\n")
    assert load_tokenizer(tmp_path / "uncased").encode("Hello World", add_special_tokens=False).ids == [5, 6]
    assert load_tokenizer(tmp_path / "uncased", lowercase=False).encode("Hello", add_special_tokens=False).ids == [1]
    (tmp_path / "uncased" / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    assert load_tokenizer(tmp_path / "uncased").encode("Hello", add_special_tokens=False).ids == [1]
    (tmp_path / "cased").mkdir()
    (tmp_path / "cased" / "vocab.txt").write_text("\n".join(specials + ["Hello", "hello"]) + "\n")
    assert load_tokenizer(tmp_path / "cased").encode("Hello hello", add_special_tokens=False).ids == [5, 6]


def test_load_bert_vocab_txt_uses_its_special_ids(tmp_path):
    tokens = bert_cased_like_vocab(tmp_path / "vocab.txt")
    tokenizer = load_tokenizer(tmp_path)
    assert special_ids(tokenizer) == SpecialIds(pad=0, unk=100, cls=101, sep=102, mask=103)
    encoding = tokenizer.encode("Hello world, SpanBERTs! hello")
    assert encoding.tokens == ["[CLS]", "Hello", "world", ",", "Span", "##BE", "##RT", "##s", "!", "[UNK]", "[SEP]"]
    assert encoding.ids[1] == tokens.index("Hello")
    table = word_start_table(tokenizer)
    assert table.shape == (len(tokens),)
    assert table[tokens.index("Span")] and not table[tokens.index("##BE")]
    assert np.array_equal(table, [is_word_start(token) for token in tokens])
    assert load_tokenizer(tmp_path / "vocab.txt", lowercase=True).encode("HELLO").tokens[1] == "[UNK]"


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or vocab.txt"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="no \\[UNK\\]"):
        load_tokenizer(tmp_path / "vocab.txt")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(tmp_path / "bad.json")


def test_special_ids_missing_token_is_an_error(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nword\n")
    with pytest.raises(ValueError, match="\\[CLS\\]"):
        special_ids(load_tokenizer(tmp_path))


def test_tokenizer_cli_trains_and_saves(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(demo_corpus_texts()[:20]), encoding="utf-8")
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text(json.dumps({"text": "Spans of text."}) + "\n", encoding="utf-8")
    code = main(["tokenizer", "--corpus", str(corpus), str(jsonl), "--vocab-size", "800",
                 "--out", str(tmp_path / "tok"), "--quiet"])
    assert code == 0
    tokenizer = load_tokenizer(tmp_path / "tok")
    assert tokenizer.get_vocab_size() == 800
    vocab_lines = (tmp_path / "tok" / "vocab.txt").read_text().splitlines()
    assert vocab_lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert "800 tokens" in capsys.readouterr().out


def test_tokenizer_cli_reports_missing_corpus(tmp_path):
    with pytest.raises(SystemExit, match="missing.txt"):
        main(["tokenizer", "--corpus", str(tmp_path / "missing.txt"), "--vocab-size", "100",
              "--out", str(tmp_path / "tok"), "--quiet"])


def test_vocab_txt_tokenizes_like_transformers_bert_tokenizer(demo_tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    save_tokenizer(demo_tokenizer, tmp_path)
    reference = transformers.BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=False)
    ours = load_tokenizer(tmp_path / "vocab.txt")
    texts = demo_corpus_texts()[:10] + ["Café naïve — 東京 über\tTabs\u00a0nbsp", "x" * 150, "don't (stop)!"]
    for text in texts:
        assert ours.encode(text).ids == reference.encode(text), text[:40]


# --------------------------------------------------------------------------- BERT vocab.txt like HF
def stdlib_docstrings(limit=300):
    """Real English text with mixed case, punctuation and code: docstrings of stdlib functions."""
    import collections
    import functools
    import itertools
    import os
    import pathlib
    import re
    import string
    import textwrap

    texts = []
    for module in (json, os, re, string, collections, functools, itertools, pathlib, textwrap, inspect):
        for _, member in sorted(vars(module).items()):
            doc = inspect.getdoc(member) if callable(member) else None
            if doc and doc not in texts:
                texts.append(doc[:1500])
    assert len(texts) >= limit
    return texts[:limit]


def model_folder(tmp_path, vocab, config=None):
    """A folder holding ``vocab`` as vocab.txt and, when given, ``config`` as tokenizer_config.json."""
    folder = tmp_path / ("with_config" if config is not None else "bare")
    folder.mkdir()
    shutil.copy(vocab, folder / "vocab.txt")
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_uncased_vocab_fixture_has_unicode_upper_case_symbols():
    """The fixture holds what tripped the old single-character rule: ``ℝ`` / ``##ℝ``, which
    ``str.isupper`` calls upper case, and bracketed markers with ASCII capitals."""
    tokens = UNCASED_VOCAB.read_text(encoding="utf-8").splitlines()
    assert {"ℝ", "##ℝ", "[unused0]", "[unused993]"} <= set(tokens) and "ℝ".isupper()
    assert tokens[:2] == ["[PAD]", "[unused0]"] and tokens[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.mark.parametrize("config", [None, {"do_lower_case": True}], ids=["bare-vocab", "tokenizer-config"])
def test_uncased_bert_vocab_lower_cases(tmp_path, config):
    folder = model_folder(tmp_path, UNCASED_VOCAB, config)
    tokenizer = load_tokenizer(folder)
    assert tokenizer.encode("Hello World", add_special_tokens=False).tokens == ["hello", "world"]
    assert tokenizer.encode("Café Über", add_special_tokens=False).tokens == ["cafe", "uber"]
    decision = casing_decision(folder)
    assert decision.startswith("uncased: lower-cases and strips accents"), decision
    expected_reason = "no ASCII upper-case letter" if config is None else "do_lower_case=true in tokenizer_config.json"
    assert expected_reason in decision


@pytest.mark.parametrize("config", [None, {"do_lower_case": False}], ids=["bare-vocab", "tokenizer-config"])
def test_cased_bert_vocab_keeps_case(tmp_path, config):
    folder = model_folder(tmp_path, CASED_VOCAB, config)
    assert load_tokenizer(folder).encode("Hello Café", add_special_tokens=False).tokens == ["Hello", "Café"]
    decision = casing_decision(folder)
    assert decision.startswith("cased: keeps case and accents"), decision
    assert ("e.g. '" in decision) if config is None else ("do_lower_case=false" in decision)


def test_tokenizer_config_decides_before_the_vocabulary(tmp_path):
    """HF reads do_lower_case (and strip_accents) from tokenizer_config.json; so do we."""
    lowered = load_tokenizer(model_folder(tmp_path, CASED_VOCAB, {"do_lower_case": True, "strip_accents": False}))
    assert lowered.encode("Hello Café", add_special_tokens=False).tokens == ["hello", "c", "##a", "##f", "##é"]
    (tmp_path / "bare").mkdir()
    shutil.copy(UNCASED_VOCAB, tmp_path / "bare" / "vocab.txt")
    (tmp_path / "bare" / "tokenizer_config.json").write_text('{"model_max_length": 512}')  # no do_lower_case
    assert "no ASCII upper-case letter" in casing_decision(tmp_path / "bare")
    (tmp_path / "bare" / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json: not valid JSON"):
        load_tokenizer(tmp_path / "bare")


@pytest.mark.parametrize("vocab,config", [
    (UNCASED_VOCAB, None), (UNCASED_VOCAB, {"do_lower_case": True}),
    (CASED_VOCAB, None), (CASED_VOCAB, {"do_lower_case": False}),
    (CASED_VOCAB, {"do_lower_case": True, "strip_accents": False}),
], ids=["uncased-bare", "uncased-config", "cased-bare", "cased-config", "lowercase-keep-accents"])
def test_bert_vocab_txt_tokenizes_like_hf_bert_tokenizer_fast(tmp_path, vocab, config):
    """Same ids as HF BertTokenizerFast built with the casing the model's files declare
    (for a bare vocab.txt: uncased BERT lower-cases, cased BERT does not)."""
    transformers = pytest.importorskip("transformers")
    folder = model_folder(tmp_path, vocab, config)
    settings = config if config is not None else {"do_lower_case": vocab == UNCASED_VOCAB}
    reference = transformers.BertTokenizerFast(str(folder / "vocab.txt"), **settings)
    ours = load_tokenizer(folder)
    texts = stdlib_docstrings() + ["Hello World", "Café naïve — 東京 ÜBER\tTabs\u00a0nbsp ℝ ℝx", "x" * 150,
                                   "a [MASK] b", "[CLS] x [SEP] y[SEP]", "the[MASK]cat [mask] [ MASK ] [PAD]"]
    differing = [text[:40] for text in texts if ours.encode(text).ids != reference(text)["input_ids"]]
    assert not differing, f"{len(differing)} of {len(texts)} texts differ, e.g. {differing[:3]}"


def test_info_and_prepare_print_the_casing_decision(tmp_path, capsys):
    folder = model_folder(tmp_path, UNCASED_VOCAB)
    assert main(["info", "--tokenizer", str(folder)]) == 0
    assert "uncased: lower-cases and strips accents (no ASCII upper-case letter" in capsys.readouterr().out
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Hello World.\n\nThe cat sat on the mat.\n", encoding="utf-8")
    assert main(["prepare", "--input", str(corpus), "--tokenizer", str(folder / "vocab.txt"),
                 "--out", str(tmp_path / "prepared"), "--quiet"]) == 0
    assert "tokenizer casing: uncased: lower-cases" in capsys.readouterr().out
    assert main(["info", "--data", str(tmp_path / "prepared")]) == 0
    assert "uncased: lower-cases and strips accents (the normalizer of tokenizer.json)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--tokenizer: .*nowhere"):
        main(["info", "--tokenizer", str(tmp_path / "nowhere")])


@pytest.mark.parametrize("vocab", [UNCASED_VOCAB, CASED_VOCAB], ids=["uncased", "cased"])
def test_special_tokens_written_in_text_stay_whole(tmp_path, vocab):
    """A vocab.txt tokenizer keeps "[MASK]" / "[CLS]" / "[SEP]" of a text whole, as HF does
    (fill-mask with a vocab.txt tokenizer depends on it); lower-cased "[mask]" is not special."""
    tokenizer = load_tokenizer(model_folder(tmp_path, vocab, {"do_lower_case": vocab == UNCASED_VOCAB}))
    assert tokenizer.encode("a [MASK] b", add_special_tokens=False).tokens == ["a", "[MASK]", "b"]
    assert tokenizer.encode("the[MASK]cat", add_special_tokens=False).tokens == ["the", "[MASK]", "cat"]
    assert tokenizer.encode("[CLS] a [SEP]", add_special_tokens=False).ids == [101, tokenizer.token_to_id("a"), 102]
    lowered = tokenizer.encode("[mask]", add_special_tokens=False).tokens
    assert lowered[0] == "[" and lowered[-1] == "]" and "[MASK]" not in lowered
    assert tokenizer.get_vocab_size(with_added_tokens=True) == len(vocab.read_text(encoding="utf-8").splitlines())
    tokens = tokenizer.get_vocab(with_added_tokens=True)
    assert tokens["[MASK]"] == 103 and tokens["[PAD]"] == 0  # the vocabulary's ids, not new ones


def test_empty_second_text_encodes_a_single_text(tmp_path):
    """encode("x", "") is [CLS] x [SEP] as in HF (tokenizers alone adds a second [SEP]); the
    classification reader passes a JSONL row's "text_pair": "" through this."""
    from spanbert_fast.tasks.classification import encode_example, read_classification_file

    tokenizer = load_tokenizer(model_folder(tmp_path, UNCASED_VOCAB))
    assert tokenizer.encode("x", "").tokens == ["[CLS]", "x", "[SEP]", "[SEP]"]  # why encode_pair exists
    assert encode_pair(tokenizer, "x", "").tokens == ["[CLS]", "x", "[SEP]"]
    assert encode_pair(tokenizer, "x", None).tokens == ["[CLS]", "x", "[SEP]"]
    pair = encode_pair(tokenizer, "x", "the cat")
    assert pair.tokens == ["[CLS]", "x", "[SEP]", "the", "cat", "[SEP]"] and pair.type_ids == [0, 0, 0, 1, 1, 1]
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text": "x", "text_pair": "", "label": "a"}) + "\n", encoding="utf-8")
    (example,) = read_classification_file(str(rows))
    feature = encode_example(example, tokenizer, 16, {"a": 0}, str(rows))
    assert feature["input_ids"] == [101, tokenizer.token_to_id("x"), 102]
    transformers = pytest.importorskip("transformers")
    reference = transformers.BertTokenizerFast(str(UNCASED_VOCAB), do_lower_case=True)
    for text, text_pair in [("x", ""), ("x", None), ("Hello", "World"), ("", "x")]:
        assert encode_pair(tokenizer, text, text_pair).ids == reference(text, text_pair)["input_ids"], (text, text_pair)


# --------------------------------------------------------------------------- word starts of any tokenizer
def bpe_and_unigram_tokenizers(texts):
    """A byte-level BPE and a Metaspace Unigram tokenizer with BERT's special tokens (tokenizer.json kinds)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=300, special_tokens=specials,
                                                               unk_token="[UNK]", show_progress=False))
    return {"bpe": bpe, "unigram": unigram}


def prepared(tmp_path, tokenizer, texts, name):
    from spanbert_fast.data.prepare import BlockDataset, prepare_corpus

    corpus = tmp_path / f"{name}.txt"
    corpus.write_text("\n\n".join(texts), encoding="utf-8")
    prepare_corpus([corpus], tokenizer, tmp_path / name, block_size=62, progress=False)
    return BlockDataset(tmp_path / name)


def test_word_starts_of_marks_each_words_first_token():
    assert word_starts_of([[0, 0, 1, None, 2, 2], [], [0, 0], [7]]).tolist() == \
        [True, False, True, True, True, False, True, False, True]
    assert word_starts_of([]).shape == (0,)


def test_wordpiece_word_starts_equal_the_continuation_rule(demo_tokenizer):
    """For WordPiece, word_ids give what the ## table gives: the rule span masking was built on."""
    texts = demo_corpus_texts()[:30]
    encodings = demo_tokenizer.encode_batch(texts, add_special_tokens=False)
    table = word_start_table(demo_tokenizer)
    expected = np.concatenate([table[e.ids] for e in encodings])
    assert np.array_equal(word_starts_of(e.word_ids for e in encodings), expected)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_bpe_and_unigram_corpora_get_real_word_starts(tmp_path, kind):
    """A BPE / Unigram tokenizer.json with BERT specials: word starts follow its words (they were
    all 1 before, which made span masking silently subword masking)."""
    texts = demo_corpus_texts()[:40]
    tokenizer = bpe_and_unigram_tokenizers(texts)[kind]
    assert word_boundaries_known(tokenizer)
    dataset = prepared(tmp_path, tokenizer, texts, kind)
    assert dataset.word_boundaries and dataset.meta["word_boundaries"] is True
    starts = np.concatenate([dataset[i].word_starts for i in range(len(dataset))])
    assert 0.3 < starts.mean() < 0.95  # words of several pieces exist, and most tokens are not all starts
    sentence = "When a name is not bound, an attempt to evaluate it raises a NameError exception."
    encoding = tokenizer.encode(sentence, add_special_tokens=False)
    n_words = len(set(encoding.word_ids))
    assert word_starts_of([encoding.word_ids]).sum() == n_words < len(encoding.ids)
    from spanbert_fast.data.loader import PretrainingBatches

    PretrainingBatches(dataset, batch_size=2, masking="span")  # words known: span masking allowed


def test_span_masking_is_refused_without_word_boundaries(tmp_path):
    """No pre-tokenizer: no word boundary can be known; span/word masking fail naming --masking subword."""
    from spanbert_fast.data.loader import PretrainingBatches, split_held_out

    texts = demo_corpus_texts()[:40]
    tokenizer = bpe_and_unigram_tokenizers(texts)["unigram"]
    tokenizer.pre_tokenizer = None
    assert not word_boundaries_known(tokenizer)
    dataset = prepared(tmp_path, tokenizer, texts, "nowords")
    assert dataset.meta["word_boundaries"] is False and dataset[0].word_starts.all()
    for masking in ("span", "word"):
        with pytest.raises(ValueError, match=f"{masking} masking needs word boundaries.*--masking subword"):
            PretrainingBatches(dataset, batch_size=2, masking=masking)
    training, _ = split_held_out(dataset, 2)
    with pytest.raises(ValueError, match="--masking subword"):
        PretrainingBatches(training, batch_size=2, masking="span")
    batch = PretrainingBatches(dataset, batch_size=2, masking="subword").make_batch(0, 0)
    assert batch["input_ids"].shape[0] == 2


_TRAIN_IN_A_FRESH_PROCESS = """
import hashlib, json
from spanbert_fast.data.corpus import python_help_topics
from spanbert_fast.data.tokenizer import train_tokenizer
texts = [document.text for document in python_help_topics()[:20]]
spec = json.loads(train_tokenizer(texts, vocab_size=800).to_str())
vocab_hash = hashlib.sha256(json.dumps(spec["model"]["vocab"]).encode()).hexdigest()
print(vocab_hash, [t["content"] for t in spec["added_tokens"]])
"""


def test_training_gives_the_same_vocabulary_in_every_process():
    """huggingface/tokenizers#1794: its trainer numbers the ``##c`` tokens in hash-map order (a new
    random order per process), which also changes which merge wins a tie, so the same texts gave
    different vocabularies run to run (without the workaround in ``train_tokenizer`` these three
    processes disagree). The ``##c`` tokens it pre-registers end up ordinary vocabulary pieces."""
    import subprocess
    import sys

    outputs = {subprocess.run([sys.executable, "-c", _TRAIN_IN_A_FRESH_PROCESS], capture_output=True, text=True,
                              check=True).stdout for _ in range(3)}
    assert len(outputs) == 1, outputs
    assert outputs.pop().split(" ", 1)[1].strip() == str(list(SPECIAL_TOKENS))


def test_training_reads_a_one_shot_iterator_and_a_reiterable_alike():
    texts = demo_corpus_texts()[:8]
    from_list = train_tokenizer(texts, vocab_size=400).get_vocab()
    assert train_tokenizer(iter(texts), vocab_size=400).get_vocab() == from_list
