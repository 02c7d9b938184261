"""Corpus reading and preparation: document rules, sentence splitting, greedy packing (no block
crosses a document, every token exactly once, long sentences split), shards and dtypes, atomic
output, clear errors, and the ``spanbert-fast prepare`` CLI."""
import json
import os
import pickle
import re

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from spanbert_fast.cli import main
from spanbert_fast.data.corpus import Document, demo_corpus_texts, iter_documents, python_help_topics, split_sentences
from spanbert_fast.data import prepare as prepare_module
from spanbert_fast.data.prepare import (
    META_FILE,
    BlockDataset,
    pack_blocks,
    prepare_corpus,
    prepare_documents,
    token_dtype_for,
)
from spanbert_fast.data.tokenizer import save_tokenizer, train_tokenizer, word_start_table


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([document.text for document in python_help_topics()], vocab_size=1500)


def demo_documents(count=25):
    return [Document(text, f"demo[{i}]") for i, text in enumerate(demo_corpus_texts()[:count])]


def expected_document_tokens(tokenizer, documents):
    """Tokens of each document as prepare should see them: sentences encoded one by one."""
    result = []
    for document in documents:
        ids = [tokenizer.encode(s, add_special_tokens=False).ids for s in split_sentences(document.text)]
        flat = [t for sentence in ids for t in sentence]
        if flat:
            result.append(np.array(flat))
    return result


def read_all_blocks(dataset):
    return [dataset[i] for i in range(len(dataset))]


# ----------------------------------------------------------------------------- reading


def test_sentence_splitter_rules():
    text = 'It ended. "Then what?" she asked! 3 more.\nSame sentence.\n\nNew paragraph e.g. here'
    assert split_sentences(text) == [
        "It ended.", '"Then what?" she asked!', "3 more.", "Same sentence.", "New paragraph e.g. here",
    ]
    assert split_sentences("  \n\n ") == []


def test_document_rules_for_text_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n\n\nthree\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "four"}\n\n{"text": "five", "id": 1}\n', encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.text").write_text("six", encoding="utf-8")
    (tmp_path / "ignored.csv").write_text("x", encoding="utf-8")
    docs = list(iter_documents([tmp_path]))
    assert [d.text.strip() for d in docs] == ["one\ntwo", "three", "four", "five", "six"]
    assert docs[3].source.endswith("b.jsonl:3")
    assert [d.text for d in iter_documents([tmp_path / "a.txt"], doc_split="file")] == ["one\ntwo\n\n\nthree\n"]
    assert len(list(iter_documents([tmp_path / "a.txt"], doc_split="line"))) == 3


def test_bad_input_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        list(iter_documents([tmp_path / "missing.txt"]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*'text'"):
        list(iter_documents([bad]))
    bad.write_text('{"text": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*not a string"):
        list(iter_documents([bad]))
    bad.write_text("{oops\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: invalid JSON"):
        list(iter_documents([bad]))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="empty_dir"):
        list(iter_documents([tmp_path / "empty_dir"]))


# ----------------------------------------------------------------------------- packing


@pytest.mark.parametrize(
    "sentences, block_size, blocks",
    [
        ([3, 4, 5], 8, [7, 5]),
        ([8, 8], 8, [8, 8]),
        ([3, 20, 2], 8, [3, 8, 8, 6]),  # long sentence: close, cut, rest continues
        ([16], 8, [8, 8]),
        ([0, 2, 0], 8, [2]),
        ([], 8, []),
    ],
    ids=["fill", "exact", "long-sentence", "long-exact", "empty-sentences", "empty-document"],
)
def test_pack_blocks(sentences, block_size, blocks):
    assert pack_blocks(sentences, block_size) == blocks


def test_pack_blocks_greedy_properties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        sentences = rng.integers(1, 40, size=rng.integers(1, 30)).tolist()
        blocks = pack_blocks(sentences, 32)
        assert sum(blocks) == sum(sentences) and max(blocks) <= 32
        if max(sentences) <= 32:  # whole sentences only: block ends are sentence ends
            ends = set(np.cumsum(sentences).tolist())
            assert set(np.cumsum(blocks).tolist()) <= ends
            # greedy: the next sentence would not have fitted
            starts = np.cumsum([0] + blocks)[:-1]
            for block, end in zip(blocks[:-1], (starts + blocks)[:-1]):
                next_sentence = sentences[sorted(ends).index(end) + 1]
                assert block + next_sentence > 32


# ----------------------------------------------------------------------------- prepare


def test_every_token_once_and_no_block_crosses_a_document(tokenizer, tmp_path):
    documents = demo_documents()
    documents.insert(3, Document("   \n ", "blank"))  # no token: dropped
    stats = prepare_documents(documents, tokenizer, tmp_path / "out", block_size=64, progress=False,
                              chunk_chars=20_000)
    dataset = BlockDataset(tmp_path / "out")
    expected = expected_document_tokens(tokenizer, documents)
    assert stats.n_documents == len(expected) == 25
    assert len(dataset) == stats.n_blocks and dataset.token_dtype == np.uint16
    blocks = read_all_blocks(dataset)
    assert max(len(b.token_ids) for b in blocks) <= 64
    np.testing.assert_array_equal(np.concatenate([b.token_ids for b in blocks]), np.concatenate(expected))
    document_offsets = np.asarray(dataset.document_offsets)
    np.testing.assert_array_equal(np.diff(document_offsets), [len(d) for d in expected])
    block_offsets = np.asarray(dataset.block_offsets)
    for i in range(len(dataset)):
        document = dataset.block_document(i)
        assert document_offsets[document] <= block_offsets[i] < block_offsets[i + 1] <= document_offsets[document + 1]
    table = word_start_table(tokenizer)
    for block in blocks:
        np.testing.assert_array_equal(block.word_starts, table[block.token_ids])
    counts = dataset.unigram_counts()
    np.testing.assert_array_equal(counts, np.bincount(np.concatenate(expected), minlength=1500))
    assert dataset.tokenizer().to_str() == tokenizer.to_str()


def test_long_sentence_is_split_and_blocks_start_at_sentences(tokenizer, tmp_path):
    long_sentence = "Name " + " ".join(["name"] * 49) + "."
    documents = [Document(f"A name. {long_sentence} The end.", "long")]
    prepare_documents(documents, tokenizer, tmp_path / "out", block_size=16, progress=False)
    dataset = BlockDataset(tmp_path / "out")
    lengths = dataset.block_lengths().tolist()
    first, long, last = np.diff(np.asarray(dataset.sentence_offsets)).tolist()
    assert long >= 50
    full, rest = divmod(long, 16)
    tail = [rest + last] if rest + last <= 16 else [rest, last]
    assert lengths == [first] + [16] * full + tail


def test_shards_workers_and_chunks_do_not_change_the_blocks(tokenizer, tmp_path):
    documents = demo_documents(30)
    prepare_documents(documents, tokenizer, tmp_path / "one", block_size=100, progress=False)
    stats = prepare_documents(documents, tokenizer, tmp_path / "many", block_size=100, progress=False,
                              shard_tokens=1000, workers=2, chunk_chars=5000)
    one, many = BlockDataset(tmp_path / "one"), BlockDataset(tmp_path / "many")
    assert stats.n_shards > 5 and len(one.meta["shards"]) == 1
    assert all(shard["length"] <= 1000 for shard in many.meta["shards"])
    assert len(one) == len(many)
    for a, b in zip(read_all_blocks(one), read_all_blocks(many)):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
        np.testing.assert_array_equal(a.word_starts, b.word_starts)


def test_uint32_shards_for_large_vocabularies(tmp_path):
    assert token_dtype_for(65535) == np.uint16 and token_dtype_for(65536) == np.uint32
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(70_000)]
    vocab = {token: i for i, token in enumerate(tokens)}
    big = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    big.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    stats = prepare_documents([Document("w0 w69999 w123. w70000", "d")], big, tmp_path / "out", progress=False)
    dataset = BlockDataset(tmp_path / "out")
    assert stats.token_dtype == "uint32" and dataset.token_dtype == np.uint32
    assert os.path.getsize(tmp_path / "out" / dataset.meta["shards"][0]["tokens"]) == 4 * 5
    # "." and "w70000" are not in the vocabulary: [UNK] = 1
    assert dataset[0].token_ids.tolist() == [vocab["w0"], vocab["w69999"], vocab["w123"], 1, 1]


def test_output_is_atomic_and_refuses_to_overwrite(tokenizer, tmp_path):
    out = tmp_path / "out"

    def failing_documents():
        yield from demo_documents(5)
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare_documents(failing_documents(), tokenizer, out, progress=False, chunk_chars=1000)
    assert not (out / META_FILE).exists() and not list(out.iterdir())
    with pytest.raises(FileNotFoundError, match=META_FILE):
        BlockDataset(out)
    prepare_documents(demo_documents(5), tokenizer, out, progress=False)
    meta = json.loads((out / META_FILE).read_text())
    listed = {shard["tokens"] for shard in meta["shards"]} | {s["word_starts"] for s in meta["shards"]}
    listed |= set(meta["files"].values()) | {META_FILE}
    assert {p.name for p in out.iterdir()} == listed
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare_documents(demo_documents(5), tokenizer, out, progress=False)
    prepare_documents(demo_documents(2), tokenizer, out, progress=False, overwrite=True)
    assert BlockDataset(out).meta["n_documents"] == 2


def test_overwrite_keeps_the_old_corpus_until_the_new_one_is_complete(tokenizer, tmp_path, monkeypatch):
    out = tmp_path / "out"
    prepare_documents(demo_documents(5), tokenizer, out, progress=False)
    before = [BlockDataset(out)[i].token_ids.copy() for i in range(3)]

    def failing_documents():
        yield from demo_documents(3)
        raise RuntimeError("disk on fire")

    # a failed overwrite (after some new shards were committed) leaves the old corpus whole
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare_documents(failing_documents(), tokenizer, out, progress=False, overwrite=True, chunk_chars=500,
                          shard_tokens=600)
    dataset = BlockDataset(out)
    assert dataset.meta["n_documents"] == 5
    assert all(np.array_equal(dataset[i].token_ids, tokens) for i, tokens in enumerate(before))
    old_files = {p.name for p in out.iterdir()}
    assert not any(name.startswith("g1-") for name in old_files)
    # a failure at the very end (every new file committed, meta.json not yet switched): the same
    with monkeypatch.context() as patch:
        patch.setattr(prepare_module.json, "dump", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
        with pytest.raises(OSError, match="disk full"):
            prepare_documents(demo_documents(2), tokenizer, out, progress=False, overwrite=True)
    assert {p.name for p in out.iterdir()} == old_files
    assert BlockDataset(out).meta["n_documents"] == 5

    def listed(meta):
        names = {shard["tokens"] for shard in meta["shards"]} | {s["word_starts"] for s in meta["shards"]}
        return names | set(meta["files"].values()) | {META_FILE, "tokenizer.json"}

    # leftovers a killed run recorded in its (stale) lock go at the next run; files no run
    # recorded stay, even when they are named like corpus files
    (out / "g1-tokens-00003.bin").write_bytes(b"x")
    (out / "g1-blocks.bin.tmp").write_bytes(b"x")
    (out / ".spanbert-fast.lock").write_text(json.dumps(
        {"command": "prepare", "pid": 0, "host": "gone", "files": ["g1-tokens-00003.bin", "g1-blocks.bin.tmp"]}))
    users = {"notes.txt", "g7-blocks.bin", "word_starts-00009.bin", "other.tmp"}
    for name in users:
        (out / name).write_text("mine")
    for generation, count in ((1, 2), (2, 4)):  # then a real overwrite, twice: the old files go
        prepare_documents(demo_documents(count), tokenizer, out, progress=False, overwrite=True)
        meta = BlockDataset(out).meta
        assert meta["n_documents"] == count and meta["generation"] == generation
        assert meta["shards"][0]["tokens"].startswith(f"g{generation}-")
        assert {p.name for p in out.iterdir()} == listed(meta) | users
        assert (out / "tokenizer.json").read_text() == (out / meta["files"]["tokenizer"]).read_text()
    assert all((out / name).read_text() == "mine" for name in users)


def test_empty_corpus_is_an_error_naming_the_files(tokenizer, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty corpus.*empty.txt"):
        prepare_corpus([empty], tokenizer, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / META_FILE).exists()


def test_block_dataset_pickles_without_its_memory_maps(tokenizer, tmp_path):
    prepare_documents(demo_documents(3), tokenizer, tmp_path / "out", progress=False)
    dataset = BlockDataset(tmp_path / "out")
    first = dataset[0]
    payload = pickle.dumps(dataset)
    assert len(payload) < 10_000
    np.testing.assert_array_equal(pickle.loads(payload)[0].token_ids, first.token_ids)
    np.testing.assert_array_equal(dataset[-1].token_ids, dataset[len(dataset) - 1].token_ids)
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_prepare_cli_on_text_and_jsonl(tokenizer, tmp_path, capsys):
    save_tokenizer(tokenizer, tmp_path / "tok")
    texts = demo_corpus_texts()[:6]
    (tmp_path / "corpus").mkdir()
    one_paragraph = [re.sub(r"\n\s*\n", "\n", text) for text in texts[:3]]  # blank lines separate documents
    (tmp_path / "corpus" / "a.txt").write_text("\n\n".join(one_paragraph), encoding="utf-8")
    with open(tmp_path / "corpus" / "b.jsonl", "w", encoding="utf-8") as handle:
        for text in texts[3:]:
            handle.write(json.dumps({"text": text}) + "\n")
    code = main(["prepare", "--input", str(tmp_path / "corpus"), "--tokenizer", str(tmp_path / "tok" / "vocab.txt"),
                 "--out", str(tmp_path / "out"), "--block-size", "126", "--quiet"])
    assert code == 0 and "prepared 6 documents" in capsys.readouterr().out
    dataset = BlockDataset(tmp_path / "out")
    assert dataset.block_size == 126 and dataset.meta["n_documents"] == 6
    assert dataset.block_lengths().max() <= 126
    with pytest.raises(SystemExit, match="nothing.txt"):
        main(["prepare", "--input", str(tmp_path / "nothing.txt"), "--tokenizer", str(tmp_path / "tok"),
              "--out", str(tmp_path / "out2"), "--quiet"])


@pytest.mark.parametrize("workers", [1, 2], ids=["in-process", "2-workers"])
def test_input_is_consumed_lazily(tokenizer, workers):
    """Streaming: documents are pulled only a few chunks ahead of what has been encoded."""
    from spanbert_fast.data.encoding import encoded_chunks

    pulled = 0

    def documents():
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield Document(f"Document number {i}. It has two sentences.", str(i))

    chunks = encoded_chunks(documents(), tokenizer, block_size=64, workers=workers, chunk_chars=400)
    first = next(chunks)
    assert first.document_lengths.size == 10  # 10 documents of 40+ characters fill a 400-char chunk
    assert pulled <= 10 * (2 * workers + 1)
    chunks.close()


def test_long_sentences_are_encoded_in_pieces_with_the_same_ids(tokenizer, tmp_path, monkeypatch):
    """A sentence longer than MAX_PIECE_CHARS is encoded in pieces cut before a space, in batches
    of ENCODE_BATCH_CHARS, and its whitespace collapsed in windows: the corpus stays the same."""
    from spanbert_fast.data import corpus as corpus_module
    from spanbert_fast.data import encoding as encoding_module

    words = re.sub(r"[.!?]", " ", " ".join(demo_corpus_texts()[:3])).split()
    long_text = "lead " + "  \n ".join(words[:3000])  # one sentence, mixed whitespace
    documents = [Document(long_text, "long"), *demo_documents(3)]
    whole = tmp_path / "whole"
    prepare_documents(documents, tokenizer, whole, progress=False, block_size=62)
    monkeypatch.setattr(encoding_module, "MAX_PIECE_CHARS", 50)
    monkeypatch.setattr(encoding_module, "ENCODE_BATCH_CHARS", 300)
    monkeypatch.setattr(corpus_module, "_COLLAPSE_WINDOW", 40)
    assert split_sentences(long_text) == [re.sub(r"\s+", " ", long_text).strip()]
    pieces = tmp_path / "pieces"
    prepare_documents(documents, tokenizer, pieces, progress=False, block_size=62)
    a, b = BlockDataset(whole), BlockDataset(pieces)
    assert a.meta["n_sentences"] == b.meta["n_sentences"]
    np.testing.assert_array_equal(a.block_offsets, b.block_offsets)
    for i in range(len(a)):
        np.testing.assert_array_equal(a[i].token_ids, b[i].token_ids)
        np.testing.assert_array_equal(a[i].word_starts, b[i].word_starts)


def test_folder_lock_excludes_a_second_owner_and_is_released(tmp_path):
    from spanbert_fast.run_lock import LOCK_FILE, FolderLockedError, lock_folder

    with lock_folder(tmp_path, "prepare") as lock:
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["command"] == "prepare" and lock.stale_owner is None
        with pytest.raises(FolderLockedError, match=f"pid {os.getpid()}"):
            lock_folder(tmp_path, "prepare")
        lock.record(files=["a.bin"])
        assert json.loads((tmp_path / LOCK_FILE).read_text())["files"] == ["a.bin"]
    assert not (tmp_path / LOCK_FILE).exists()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"command": "prepare", "pid": 1, "files": ["x.bin"]}))
    with lock_folder(tmp_path, "prepare") as lock:  # a lock file nobody holds: stale, taken over
        assert lock.stale_owner["files"] == ["x.bin"]
