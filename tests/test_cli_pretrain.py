"""``spanbert-fast pretrain`` end to end on CPU: demo, checkpoints, kill -9 + --resume."""
import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from model_fixtures import tiny_config
from spanbert_fast import SpanBertForPreTraining
from spanbert_fast.cli import main
from spanbert_fast.data.corpus import Document, demo_corpus_texts
from spanbert_fast.data.prepare import prepare_documents
from spanbert_fast.data.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    texts = demo_corpus_texts()[:12]
    tokenizer = train_tokenizer(texts, vocab_size=600)
    out = tmp_path_factory.mktemp("corpus")
    documents = (Document(text=t, source=str(i)) for i, t in enumerate(texts))
    prepare_documents(documents, tokenizer, out, block_size=62, overwrite=True, progress=False)
    return str(out)


def pretrain_args(data, out, *extra):
    return ["pretrain", "--data", data, "--out", str(out), "--preset", "tiny", "--batch-size", "4",
            "--max-steps", "12", "--save-every", "4", "--log-every", "1", "--no-progress", "--seed", "3",
            "--lr", "1e-3", *extra]


def read_losses(out):
    with open(os.path.join(out, "log.csv")) as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def final_state(out):
    return SpanBertForPreTraining.from_pretrained(os.path.join(out, "checkpoints", "step-00000012")).state_dict()


def test_kill_9_then_resume_is_bit_identical(corpus_dir, tmp_path):
    straight = tmp_path / "straight"
    assert main(pretrain_args(corpus_dir, straight)) == 0

    resumed = tmp_path / "resumed"
    command = [sys.executable, "-m", "spanbert_fast", *pretrain_args(corpus_dir, resumed)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_checkpoint = resumed / "checkpoints" / "step-00000004" / "trainer_state.pt"
    deadline = time.time() + 240
    while not first_checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first_checkpoint.exists(), "the run never wrote its first checkpoint"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert main(pretrain_args(corpus_dir, resumed, "--resume")) == 0

    assert read_losses(resumed) == read_losses(straight)
    a, b = final_state(straight), final_state(resumed)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_checkpoint_folder_is_a_usable_model_with_its_tokenizer(corpus_dir, tmp_path):
    assert main(pretrain_args(corpus_dir, tmp_path, "--max-steps", "2")) == 0
    checkpoint = tmp_path / "checkpoints" / "step-00000002"
    assert {"config.json", "model.safetensors", "trainer_state.pt", "tokenizer.json"} <= set(os.listdir(checkpoint))
    assert (tmp_path / "training.png").is_file()


def test_demo_runs_and_names_its_output(tmp_path, capsys):
    assert main(["pretrain", "--demo", "--out", str(tmp_path), "--max-steps", "3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path) in printed and "loss" in printed
    assert (tmp_path / "checkpoints" / "step-00000003" / "model.safetensors").is_file()


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match=r"pretrain: error: .*nothing: no meta.json"):
        main(pretrain_args(str(tmp_path / "nothing"), tmp_path / "out"))


def test_init_from_with_another_vocabulary_is_refused(corpus_dir, tmp_path):
    SpanBertForPreTraining(tiny_config(vocab_size=1234)).save_pretrained(str(tmp_path / "ckpt"))
    args = pretrain_args(corpus_dir, tmp_path / "out", "--init-from", str(tmp_path / "ckpt"))
    args.remove("--preset"), args.remove("tiny")
    with pytest.raises(SystemExit, match="vocab_size 1234 differs from the corpus tokenizer's 600"):
        main(args)


def test_info_describes_a_corpus_and_its_padding(corpus_dir, capsys):
    assert main(["info", "--data", corpus_dir, "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "of at most 62 tokens" in out and "padding, batch 4" in out and "fixed shapes (--cuda-graphs)" in out


def test_cuda_graphs_need_packed_batches(corpus_dir, tmp_path):
    with pytest.raises((SystemExit, ValueError), match="--cuda-graphs needs --batch-layout packed"):
        main(pretrain_args(corpus_dir, tmp_path / "out", "--cuda-graphs", "--batch-layout", "padded"))


def test_checkpoints_hold_tokenizer_json_after_the_corpus_was_overwritten(tmp_path):
    """After `prepare --overwrite` the corpus names its tokenizer g1-tokenizer.json; checkpoints
    still hold a tokenizer.json, which fine-tuning, fill-mask and embed look for."""
    from spanbert_fast.data.tokenizer import load_tokenizer

    texts = demo_corpus_texts()[:6]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    data = tmp_path / "data"
    for overwrite in (False, True):
        documents = (Document(text=t, source=str(i)) for i, t in enumerate(texts))
        prepare_documents(documents, tokenizer, data, block_size=30, overwrite=overwrite, progress=False)
    main(["pretrain", "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny", "--batch-size", "2",
          "--max-steps", "2", "--no-progress"])
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000002"
    assert "tokenizer.json" in os.listdir(checkpoint)
    assert load_tokenizer(str(checkpoint)).get_vocab_size() == tokenizer.get_vocab_size()


def test_held_out_blocks_are_evaluated_at_each_checkpoint_and_the_end(corpus_dir, tmp_path, capsys):
    out = tmp_path / "run"
    main(pretrain_args(corpus_dir, out, "--eval-blocks", "8"))  # 12 steps, a checkpoint every 4
    with open(out / "eval_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [4, 8, 12]
    assert set(rows[0]) == {"step", "loss", "mlm_loss", "sbo_loss", "mlm_acc", "sbo_acc"}
    assert all(0.0 <= float(r["mlm_acc"]) <= 1.0 for r in rows)
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])  # the model learns something it was not shown
    import json

    for step, row in ((8, rows[1]), (12, rows[2])):  # the two checkpoints kept (keep_checkpoints=2)
        with open(out / "checkpoints" / f"step-{step:08d}" / "eval_results.json") as f:
            assert json.load(f)["loss"] == pytest.approx(float(row["loss"]))
    assert "held-out (8 blocks): step 12: loss" in capsys.readouterr().out


def test_held_out_split_is_disjoint_deterministic_and_checked():
    from spanbert_fast.data.loader import split_held_out

    class Corpus:
        special_ids, vocab_size, block_size = None, 10, 5

        def __len__(self):
            return 50

    train, held = split_held_out(Corpus(), 7, seed=1)
    assert len(held) == 7 and len(train) == 43
    assert sorted(set(train.indices) | set(held.indices)) == list(range(50))
    assert list(split_held_out(Corpus(), 7, seed=1)[1].indices) == list(held.indices)
    assert list(split_held_out(Corpus(), 7, seed=2)[1].indices) != list(held.indices)
    with pytest.raises(ValueError, match="between 1 and 49"):
        split_held_out(Corpus(), 50)


def test_pretrain_from_python_is_what_the_command_runs(corpus_dir, tmp_path):
    """`spanbert-fast pretrain` only parses options: the library driver gives the same run."""
    from spanbert_fast.train import pretrain

    assert main(pretrain_args(corpus_dir, tmp_path / "cli", "--max-steps", "3", "--eval-blocks", "4")) == 0
    result = pretrain("tiny", corpus_dir, str(tmp_path / "lib"), batch_size=4, max_steps=3, save_every=4,
                      log_every=1, progress=False, seed=3, lr=1e-3, eval_blocks=4)
    assert result.train.step == 3 and read_losses(tmp_path / "lib") == read_losses(tmp_path / "cli")
    assert result.model.validate_targets is False  # the masker and collator checked the targets
    assert result.held_out_blocks == 4 and set(result.metrics) >= {"step", "loss", "mlm_acc", "sbo_acc"}
    assert "tokenizer.json" in os.listdir(result.train.checkpoint)
    with pytest.raises(ValueError, match="max_steps"):
        pretrain("tiny", corpus_dir, str(tmp_path / "none"))


def test_eval_every_draws_a_held_out_curve_without_checkpoints(corpus_dir, tmp_path, capsys):
    """--eval-every evaluates the held-out blocks between checkpoints (none is saved for it); the
    summary prints the curve, and eval_log.csv holds it."""
    from spanbert_fast.train.evaluation import read_evaluation_log

    args = pretrain_args(corpus_dir, tmp_path, "--max-steps", "5", "--save-every", "0", "--eval-blocks", "4",
                         "--eval-every", "2")
    assert main(args) == 0
    assert [int(row["step"]) for row in read_evaluation_log(str(tmp_path))] == [2, 4, 5]
    assert os.listdir(tmp_path / "checkpoints") == ["step-00000005"]
    assert "held-out MLM accuracy by step: 2: " in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"eval_every \(--eval-every\) needs held-out blocks"):
        main(pretrain_args(corpus_dir, tmp_path / "none", "--eval-every", "2"))
    with pytest.raises(SystemExit, match=r"eval_every \(--eval-every\) must be 0"):
        main(pretrain_args(corpus_dir, tmp_path / "none", "--eval-blocks", "4", "--eval-every", "-1"))


def test_demo_corpus_is_pythons_own_documentation():
    import argparse
    import inspect

    from spanbert_fast.data.corpus import demo_corpus, python_help_topics, stdlib_docstrings

    topics, docstrings = python_help_topics(), stdlib_docstrings()
    assert len(topics) > 50 and len(docstrings) > 100  # on CPython 3.11: 79 and 155
    assert demo_corpus() == topics + docstrings == demo_corpus()  # the same every time, topics first
    assert demo_corpus_texts() == [document.text for document in topics + docstrings]
    argparse_docs = next(d for d in docstrings if os.path.basename(d.source) == "argparse.py")
    assert argparse_docs.text.startswith(inspect.cleandoc(argparse.__doc__))  # the module's, then its classes'


def test_demo_folder_holding_another_corpus_is_rebuilt(tmp_path, monkeypatch):
    """A demo folder from an older demo (another corpus) is prepared again; the demo's own is reused."""
    import json

    import spanbert_fast.data.corpus as corpus
    from spanbert_fast.train import prepare_demo_corpus

    monkeypatch.setattr(corpus, "demo_corpus", lambda: corpus.python_help_topics()[:6])
    meta = tmp_path / "data" / "meta.json"
    assert prepare_demo_corpus(str(tmp_path), report=lambda line: None) == str(tmp_path / "data")
    assert json.loads(meta.read_text())["demo_corpus"] == corpus.DEMO_CORPUS
    reports = []
    prepare_demo_corpus(str(tmp_path), report=reports.append)
    assert reports == []  # reused
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "demo_corpus"}))
    prepare_demo_corpus(str(tmp_path), report=reports.append)
    assert len(reports) == 1 and json.loads(meta.read_text())["demo_corpus"] == corpus.DEMO_CORPUS
