"""Shared task plumbing: epoch batches (resumable), collation, task.json, input errors."""
import json
import os

import pytest
import torch

from spanbert_fast.tasks.batching import EpochBatches, batched, collate_features
from spanbert_fast.tasks.task_model import read_task_file
from spanbert_fast.tasks.text_files import InputFileError


def ids_of(batch):
    return batch["input_ids"][:, 0].tolist()


def test_epoch_batches_cover_each_epoch_and_resume_where_they_stopped():
    features = [{"input_ids": [i, 1], "label": i % 2} for i in range(7)]

    def make():
        return EpochBatches(features, 3, lambda chunk: collate_features(chunk, pad_id=0), seed=5)

    source = make()
    stream = iter(source)
    seen = [ids_of(next(stream)) for _ in range(3)]  # one epoch: 3 + 3 + 1
    assert sorted(sum(seen, [])) == list(range(7)) and [len(b) for b in seen] == [3, 3, 1]
    first_of_epoch_two = ids_of(next(stream))
    state = source.state_dict()
    expected_next = ids_of(next(stream))
    resumed = make()
    resumed.load_state_dict(state)
    assert ids_of(next(iter(resumed))) == expected_next
    epoch_two = first_of_epoch_two + expected_next + ids_of(next(stream))
    assert sorted(epoch_two) == list(range(7))
    assert epoch_two != sum(seen, [])  # a fresh shuffle every epoch (seed 5: these two orders differ)
    assert EpochBatches(features, 7, lambda c: c, shuffle=False)._order(3) == list(range(7))


def test_collate_pads_and_masks():
    batch = collate_features([{"input_ids": [5, 6, 7], "token_labels": [-100, 1, -100], "token_type_ids": [0, 1, 1]},
                              {"input_ids": [8], "token_labels": [-100], "token_type_ids": [0]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 1, -100], [-100, -100, -100]]
    assert batch["token_type_ids"].tolist() == [[0, 1, 1], [0, 0, 0]]
    assert batch["input_ids"].dtype == torch.long
    # token_type_ids in some features only: the others are segment 0 (not dropped, no KeyError)
    mixed = collate_features([{"input_ids": [5]}, {"input_ids": [6, 7], "token_type_ids": [0, 1]}], pad_id=0)
    assert mixed["token_type_ids"].tolist() == [[0, 0], [0, 1]]
    with pytest.raises(ValueError, match="1 of 2 features in a batch have 'label'"):
        collate_features([{"input_ids": [5]}, {"input_ids": [6], "label": 1}], pad_id=0)


def test_bad_task_file_and_error_format(tmp_path):
    (tmp_path / "task.json").write_text('{"task": \n')
    with pytest.raises(InputFileError, match=r"task.json:2: not valid JSON"):
        read_task_file(str(tmp_path))
    assert read_task_file(str(tmp_path / "nowhere")) is None
    assert str(InputFileError("f.csv", None, "no rows")) == "f.csv: no rows"
    (tmp_path / "task.json").write_text(json.dumps({"task": "x"}))
    assert read_task_file(str(tmp_path)) == {"task": "x"}


def test_empty_features_or_bad_batch_size_are_errors():
    with pytest.raises(ValueError, match="no training features"):
        EpochBatches([], 2, list)
    with pytest.raises(ValueError, match="batch_size"):
        EpochBatches([{"input_ids": [1]}], 0, list)


def test_batched_reads_a_generator_one_batch_at_a_time():
    taken = []

    def items():
        for i in range(7):
            taken.append(i)
            yield i

    batches = batched(items(), 3)
    assert next(batches) == [0, 1, 2] and taken == [0, 1, 2]  # nothing read ahead
    assert list(batches) == [[3, 4, 5], [6]]
    assert list(batched([1, 2], 5)) == [[1, 2]] and list(batched([], 5)) == []
    for bad in (0, -1):  # 0 used to raise from range(); an empty result would lose every prediction
        with pytest.raises(ValueError, match=f"batch_size must be at least 1, got {bad}"):
            list(batched([1, 2], bad))


@pytest.mark.parametrize("name, reader", [
    ("train.conll", "ner"), ("train.csv", "classification"), ("train.jsonl", "classification"), ("dev.json", "qa"),
])
def test_non_utf8_input_names_file_and_line(tmp_path, name, reader):
    """Latin-1 bytes on line 3: an InputFileError with path:line, not a bare UnicodeDecodeError."""
    from spanbert_fast.tasks.classification import read_classification_file
    from spanbert_fast.tasks.ner import read_conll
    from spanbert_fast.tasks.qa import read_squad

    read = {"ner": read_conll, "classification": read_classification_file, "qa": read_squad}[reader]
    path = tmp_path / name
    path.write_bytes(b"first line\r\nsecond\r\ncaf\xe9 au lait\n")
    with pytest.raises(InputFileError, match=rf"{name}:3: not UTF-8 text \(invalid continuation byte at byte 23\)"):
        read(str(path))


def test_every_output_file_is_written_atomically(tmp_path, monkeypatch):
    """predictions.conll / predictions.jsonl / .npy / .npz go through os.replace of a temp file."""
    import numpy as np

    from task_fixtures import data_path, fixture_tokenizer, tiny_checkpoint
    from spanbert_fast.tasks import SpanBertForSequenceClassification, SpanBertForTokenClassification
    from spanbert_fast.tasks.classification import ClassificationTask
    from spanbert_fast.tasks.embeddings import save_embeddings
    from spanbert_fast.tasks.ner import NerTask

    init = tiny_checkpoint(tmp_path / "init")
    replaced, real_replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append(os.path.basename(dst)), real_replace(src, dst)))
    model = SpanBertForTokenClassification.from_pretrained(
        init, labels=["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"], backend="torch")
    NerTask().evaluate(model, fixture_tokenizer(), data_path("conll.txt"), str(tmp_path / "ner"))
    model = SpanBertForSequenceClassification.from_pretrained(
        init, labels=["negative", "neutral", "positive"], backend="torch")
    ClassificationTask().evaluate(model, fixture_tokenizer(), data_path("classification.csv"), str(tmp_path / "cls"))
    save_embeddings(str(tmp_path / "e.npy"), np.zeros((2, 3), np.float32))
    save_embeddings(str(tmp_path / "e.npz"), [np.zeros((2, 3), np.float32)], [[1, 2]])
    assert replaced == ["predictions.conll", "predictions.jsonl", "e.npy", "e.npz"]
    assert np.load(tmp_path / "e.npy").shape == (2, 3)
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_task_head_load_report_goes_to_logging_not_stdout(tmp_path, capsys, caplog):
    """A fresh head is a logged warning naming its weights (as HF warns), never printed; a
    complete fine-tuned folder loads silently (its report is INFO)."""
    import logging

    from task_fixtures import tiny_checkpoint
    from spanbert_fast.tasks import SpanBertForSequenceClassification

    encoder = tiny_checkpoint(tmp_path / "encoder")
    with caplog.at_level(logging.INFO, logger="spanbert_fast"):
        model = SpanBertForSequenceClassification.from_pretrained(encoder, labels=["neg", "pos"])
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].name == "spanbert_fast.hub"
    assert "missing (freshly initialised): classifier.out_proj.bias" in warnings[0].getMessage()
    assert model.load_report.missing == ["classifier.out_proj.bias", "classifier.out_proj.weight"]

    model.save_pretrained(str(tmp_path / "fine-tuned"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="spanbert_fast"):
        SpanBertForSequenceClassification.from_pretrained(str(tmp_path / "fine-tuned"))
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert capsys.readouterr().out == ""
