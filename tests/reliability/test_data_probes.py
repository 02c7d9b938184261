"""Reliability probes of the data side: ``prepare``, prepared corpora, ``info --data``, span masking
(issue 16 items 4, 5, 8, 9, 10, 11, 12, 13; issue 18 item 4). One test per probe, named after it."""
import errno
import json
import os
import random
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from spanbert_fast.data import block_dataset as block_dataset_module
from spanbert_fast.data import prepare as prepare_module
from spanbert_fast.data.masking import SpanMasker
from spanbert_fast.data.prepare import META_FILE, BlockDataset
from spanbert_fast.data.tokenizer import SpecialIds
from spanbert_fast.run_lock import LOCK_FILE

from .conftest import ROOT, cli, one_line_error, run_command, spawn

# Files a user keeps in the output folder: named like corpus files or temporary files, but not
# written by prepare. prepare must never delete or change them.
FOREIGN = {"documents.bin": b"user documents", "g3-blocks.bin": b"user blocks", "notes.tmp": b"user notes",
           "tokens-00007.bin": b"user tokens", "meta.json.bak": b"user backup"}


def place_foreign_files(folder) -> dict:
    """Write the FOREIGN files that are not already there (a corpus's own files stay its own)."""
    folder.mkdir(parents=True, exist_ok=True)
    placed = {name: content for name, content in FOREIGN.items() if not (folder / name).exists()}
    for name, content in placed.items():
        (folder / name).write_bytes(content)
    return placed


def assert_foreign_files_intact(folder, placed):
    for name, content in placed.items():
        assert (folder / name).read_bytes() == content, f"{name} was changed or deleted"


def corpus_files(folder):
    """Every file a complete corpus in ``folder`` is made of (names listed by its meta.json)."""
    meta = json.loads((folder / META_FILE).read_text())
    names = set(meta["files"].values()) | {META_FILE, "tokenizer.json"}
    return names | {s["tokens"] for s in meta["shards"]} | {s["word_starts"] for s in meta["shards"]}


def prepare(prose, tokenizer_dir, out, *extra):
    return cli("prepare", "--input", prose, "--tokenizer", tokenizer_dir, "--out", out, "--quiet", *extra)


@pytest.fixture()
def corpus(prose, tokenizer_dir, tmp_path):
    out = tmp_path / "corpus"
    assert prepare(prose, tokenizer_dir, out, "--block-size", "62") == (0, None)
    return out


# ----------------------------------------------------------------------------- item 4: foreign files


def test_prepare_keeps_foreign_files_on_success(prose, tokenizer_dir, tmp_path):
    out = tmp_path / "out"
    placed = place_foreign_files(out)
    assert prepare(prose, tokenizer_dir, out) == (0, None)
    assert_foreign_files_intact(out, placed)
    assert {p.name for p in out.iterdir()} == corpus_files(out) | set(FOREIGN)
    assert BlockDataset(out).meta["generation"] == 1  # documents.bin was taken: the corpus went beside it


def test_prepare_keeps_foreign_files_on_bad_input(tokenizer_dir, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"Good text here.\n" * 5000 + b"\xff\xfe broken")
    out = tmp_path / "out"
    placed = place_foreign_files(out)
    code, message = prepare(bad, tokenizer_dir, out)
    one_line_error(message, "prepare")
    assert_foreign_files_intact(out, placed)
    assert {p.name for p in out.iterdir()} == set(FOREIGN)


def test_prepare_keeps_foreign_files_when_refusing_without_overwrite(corpus, prose, tokenizer_dir):
    place_foreign_files(corpus)
    before = {p.name: p.read_bytes() for p in corpus.iterdir()}
    code, message = prepare(prose, tokenizer_dir, corpus)
    assert "--overwrite" in one_line_error(message, "prepare")
    assert {p.name: p.read_bytes() for p in corpus.iterdir()} == before


def test_prepare_overwrite_keeps_foreign_files(corpus, prose, tokenizer_dir):
    placed = place_foreign_files(corpus)
    assert "documents.bin" not in placed  # the corpus's own (generation 0): replaced with it
    assert prepare(prose, tokenizer_dir, corpus, "--overwrite") == (0, None)
    assert_foreign_files_intact(corpus, placed)
    assert {p.name for p in corpus.iterdir()} == corpus_files(corpus) | set(placed)


# ----------------------------------------------------------------------------- item 5: one run per folder


def hold_lock(folder):
    """A child process that locks ``folder`` as prepare does and waits; returns it once locked."""
    code = ("import sys; from spanbert_fast.run_lock import lock_folder; lock = lock_folder(sys.argv[1], 'prepare'); "
            "print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_concurrent_prepare_refuses_naming_the_owner_then_takes_over_after_kill_9(corpus, prose, tokenizer_dir):
    before = {p.name: p.read_bytes() for p in corpus.iterdir()}
    holder = hold_lock(corpus)
    try:
        second = run_command("prepare", "--input", prose, "--tokenizer", tokenizer_dir, "--out", corpus,
                             "--quiet", "--overwrite")
        assert second.returncode != 0 and "Traceback" not in second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("prepare: error: "), second.stderr
        assert f"pid {holder.pid}" in lines[0] and "in use by prepare" in lines[0]
        lock = json.loads((corpus / LOCK_FILE).read_text())
        assert lock["pid"] == holder.pid and lock["host"]
        assert {p.name: p.read_bytes() for p in corpus.iterdir() if p.name != LOCK_FILE} == before
    finally:
        holder.kill()  # kill -9: the lock file stays, but its lock died with the process
        holder.wait()
    assert (corpus / LOCK_FILE).exists()
    assert prepare(prose, tokenizer_dir, corpus, "--overwrite") == (0, None)  # the stale lock is taken over
    assert not (corpus / LOCK_FILE).exists()
    assert {p.name for p in corpus.iterdir()} == corpus_files(corpus)


def test_prepare_killed_at_a_random_point_then_rerun_leaves_a_whole_corpus(tokenizer_dir, tmp_path):
    text = tmp_path / "long.txt"
    from spanbert_fast.data.corpus import python_help_topics

    topics = [document.text for document in python_help_topics()]
    text.write_text("\n\n".join(topics) * 2, encoding="utf-8")  # ~1 MB: a few seconds
    out = tmp_path / "out"
    placed = place_foreign_files(out)
    delay = random.Random(16).uniform(0.0, 1.5)
    run = spawn("prepare", "--input", text, "--tokenizer", tokenizer_dir, "--out", out, "--quiet",
                "--shard-tokens", "4096", "--block-size", "126")
    deadline = time.time() + 60
    while not (out / LOCK_FILE).exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    run.kill()
    run.communicate()
    assert_foreign_files_intact(out, placed)
    overwrite = ["--overwrite"] if (out / META_FILE).exists() else []
    assert prepare(text, tokenizer_dir, out, "--shard-tokens", "4096", "--block-size", "126", *overwrite) == (0, None)
    assert_foreign_files_intact(out, placed)
    assert {p.name for p in out.iterdir()} == corpus_files(out) | set(FOREIGN)  # the killed run's files: gone
    dataset = BlockDataset(out)
    assert dataset.meta["n_tokens"] == int(dataset.block_lengths().sum())


def test_prepare_on_a_full_disk_keeps_the_old_corpus_and_leaves_nothing(corpus, prose, tokenizer_dir, monkeypatch):
    before = {p.name: p.read_bytes() for p in corpus.iterdir()}
    writes = {"count": 0}
    original = prepare_module._AppendFile.append

    def append_until_full(self, values):
        writes["count"] += 1
        if writes["count"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.tmp_path))
        original(self, values)

    monkeypatch.setattr(prepare_module._AppendFile, "append", append_until_full)
    code, message = prepare(prose, tokenizer_dir, corpus, "--overwrite", "--shard-tokens", "1000")
    assert "No space left on device" in one_line_error(message, "prepare")
    assert {p.name: p.read_bytes() for p in corpus.iterdir()} == before
    BlockDataset(corpus)


# ----------------------------------------------------------------------------- item 8: masking arguments


def test_span_masker_max_span_words_zero_is_an_error_not_a_hang():
    with pytest.raises(ValueError, match="max_span_words"):
        SpanMasker(SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4), 100, max_span_words=0)


def test_span_masker_geometric_p_zero_is_an_error_not_nan():
    with pytest.raises(ValueError, match="geometric_p"):
        SpanMasker(SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4), 100, geometric_p=0.0)


# ----------------------------------------------------------------------------- items 9, 10: corrupt corpora


def rewrite_meta(folder, change, keep_checksum=False):
    meta = json.loads((folder / META_FILE).read_text())
    change(meta)
    if keep_checksum:  # a forger who also updates meta_crc32: the file checks must still catch it
        meta["meta_crc32"] = block_dataset_module.meta_crc32(meta)
    (folder / META_FILE).write_text(json.dumps(meta))


def info_data(folder):
    return cli("info", "--data", folder)


@pytest.mark.parametrize("forged_checksum", [False, True], ids=["plain-edit", "meta_crc32-forged"])
def test_meta_tokenizer_path_outside_the_corpus_is_refused(corpus, forged_checksum):
    rewrite_meta(corpus, lambda m: m["files"].update(tokenizer="../../../../etc/passwd"), forged_checksum)
    code, message = info_data(corpus)
    one_line_error(message, "info")
    if forged_checksum:
        assert "files.tokenizer" in message and "not a file name inside the corpus folder" in message
    with pytest.raises(ValueError):
        BlockDataset(corpus)


def test_same_size_garbage_in_blocks_bin_is_detected(corpus):
    meta = json.loads((corpus / META_FILE).read_text())
    path = corpus / meta["files"]["blocks"]
    path.write_bytes(np.random.default_rng(0).integers(0, 255, path.stat().st_size, dtype=np.uint8).tobytes())
    code, message = info_data(corpus)
    assert meta["files"]["blocks"] in one_line_error(message, "info")


def test_same_size_garbage_in_a_token_shard_is_detected(corpus):
    meta = json.loads((corpus / META_FILE).read_text())
    path = corpus / meta["shards"][0]["tokens"]
    data = bytearray(path.read_bytes())
    data[10:20] = bytes(10)
    path.write_bytes(bytes(data))
    code, message = info_data(corpus)
    assert "checksum mismatch" in one_line_error(message, "info") and path.name in message


@pytest.mark.parametrize("forged_checksum", [False, True], ids=["plain-edit", "meta_crc32-forged"])
def test_smaller_n_blocks_in_meta_is_detected(corpus, forged_checksum):
    rewrite_meta(corpus, lambda m: m.update(n_blocks=m["n_blocks"] // 2), forged_checksum)
    one_line_error(info_data(corpus)[1], "info")


@pytest.mark.parametrize("forged_checksum", [False, True], ids=["plain-edit", "meta_crc32-forged"])
def test_wrong_block_size_in_meta_is_detected(corpus, forged_checksum):
    rewrite_meta(corpus, lambda m: m.update(block_size=m["block_size"] // 2), forged_checksum)
    one_line_error(info_data(corpus)[1], "info")


def test_truncated_shard_error_names_the_file(corpus):
    """It was numpy's 'mmap length is greater than file size', naming no file."""
    meta = json.loads((corpus / META_FILE).read_text())
    path = corpus / meta["shards"][0]["word_starts"]
    path.write_bytes(path.read_bytes()[:-7])
    code, message = info_data(corpus)
    assert path.name in one_line_error(message, "info") and "bytes" in message


# ----------------------------------------------------------------------------- item 11: long lines


def test_prepare_long_line_without_sentence_ends_has_bounded_memory(tokenizer_dir, tmp_path):
    """A line of 6 MB without a sentence end (a 50 MB one peaked at 8.7 GB before; measured after
    the fix: 705 MB for 50 MB, of which ~230 MB is the interpreter and its imports)."""
    words = ["alpha", "beta", "gamma", "delta", "statement", "value", "function", "return"]
    rng = random.Random(11)
    line = " ".join(rng.choice(words) for _ in range(1_000_000))  # ~6 MB, one sentence
    (tmp_path / "line.txt").write_text(line + "\n", encoding="utf-8")
    measure = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")  # this child's peak alone
    result = subprocess.run(
        [sys.executable, "-c", measure, sys.executable, "-m", "spanbert_fast", "prepare", "--input",
         str(tmp_path / "line.txt"), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "out"), "--quiet"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    peak_mb = int(result.stdout.split()[-1]) / 1024
    assert peak_mb < 600, f"peak RSS {peak_mb:.0f} MB for a 6 MB line (was ~1.3 GB)"
    assert BlockDataset(tmp_path / "out").meta["n_sentences"] == 1


# ----------------------------------------------------------------------------- item 12: permissions


def test_corpus_and_tokenizer_files_follow_the_umask(prose, tmp_path):
    previous = os.umask(0o022)
    try:
        assert cli("tokenizer", "--corpus", prose, "--vocab-size", "300", "--out", tmp_path / "tok", "--quiet")[0] == 0
        assert prepare(prose, tmp_path / "tok", tmp_path / "out") == (0, None)
    finally:
        os.umask(previous)
    for path in list((tmp_path / "tok").iterdir()) + list((tmp_path / "out").iterdir()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, f"{path.name}: {oct(path.stat().st_mode)}"


# ----------------------------------------------------------------------------- item 13: one-line errors


@pytest.mark.parametrize("content", [b"", b"\x00\xff\x10binary", b'{"format_version": 1}', b"[1, 2]"],
                         ids=["empty", "binary", "missing-keys", "not-an-object"])
def test_info_data_on_a_bad_meta_json_is_one_line(corpus, content):
    (corpus / META_FILE).write_bytes(content)
    assert "meta.json" in one_line_error(info_data(corpus)[1], "info")


def test_info_data_on_a_missing_corpus_is_one_line(tmp_path):
    assert "no meta.json" in one_line_error(info_data(tmp_path)[1], "info")


def test_jsonl_lone_surrogate_is_one_line(tokenizer_dir, tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n{"text": "bad \\ud800 here"}\n', encoding="utf-8")
    message = one_line_error(prepare(tmp_path / "a.jsonl", tokenizer_dir, tmp_path / "out")[1], "prepare")
    assert "a.jsonl:2" in message and "surrogate" in message


def test_jsonl_100k_deep_nesting_is_one_line(tokenizer_dir, tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n", encoding="utf-8")
    message = one_line_error(prepare(tmp_path / "a.jsonl", tokenizer_dir, tmp_path / "out")[1], "prepare")
    assert "a.jsonl:1" in message and "nested too deeply" in message


def test_utf8_error_reports_the_byte_offset_in_the_file(tokenizer_dir, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"word " * 60_000 + b"\xff")  # the bad byte at 300000
    message = one_line_error(prepare(tmp_path / "a.txt", tokenizer_dir, tmp_path / "out")[1], "prepare")
    assert "at byte 300000" in message


def test_refusal_to_overwrite_names_the_flag(corpus, prose, tokenizer_dir):
    message = one_line_error(prepare(prose, tokenizer_dir, corpus)[1], "prepare")
    assert "--overwrite" in message and "pass overwrite" not in message


def test_dev_null_input_is_not_reported_as_missing(tokenizer_dir, tmp_path):
    message = one_line_error(prepare("/dev/null", tokenizer_dir, tmp_path / "out")[1], "prepare")
    assert "no such file" not in message and "not a regular file" in message


def test_dev_null_output_is_one_line(prose, tokenizer_dir):
    assert "not a folder" in one_line_error(prepare(prose, tokenizer_dir, "/dev/null")[1], "prepare")


def test_specials_only_vocabulary_is_one_line_not_high_le_0(prose, tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", encoding="utf-8")
    message = one_line_error(prepare(prose, tmp_path / "vocab.txt", tmp_path / "out")[1], "prepare")
    assert "only its 5 special tokens" in message and "high" not in message


# ----------------------------------------------------------------------------- issue 18 item 4: short blocks


def test_prepare_summary_reports_block_length_and_warns_about_paragraph_documents(tokenizer_dir, tmp_path, capsys):
    (tmp_path / "paragraphs.txt").write_text("\n\n".join(f"Paragraph {i} is short." for i in range(200)),
                                             encoding="utf-8")
    assert prepare(tmp_path / "paragraphs.txt", tokenizer_dir, tmp_path / "out") == (0, None)
    captured = capsys.readouterr()
    assert "block length: mean" in captured.out and "padding" in captured.out
    assert "--doc-split file" in captured.err and "prepare: warning:" in captured.err
    assert prepare(tmp_path / "paragraphs.txt", tokenizer_dir, tmp_path / "out2", "--doc-split", "file") == (0, None)
    captured = capsys.readouterr()
    assert "warning" not in captured.err
