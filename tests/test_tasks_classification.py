"""Sequence classification: overfit the fixture rows, reload, metrics, bad input."""
import json
import os

import pytest
import torch

from task_fixtures import data_path, fixture_tokenizer, tiny_checkpoint
from spanbert_fast.cli import main
from spanbert_fast.tasks import SpanBertForSequenceClassification
from spanbert_fast.tasks.classification import ClassificationTask, classification_metrics, read_classification_file
from spanbert_fast.tasks.text_files import InputFileError
from spanbert_fast.tasks.finetune import finetune

FAST = dict(lr=3e-3, warmup_ratio=0.0, log_every=10, progress=False, backend="torch")


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("cls_init"))


def test_cli_overfits_csv_and_folder_reloads(init, tmp_path, capsys):
    out = str(tmp_path / "cls")
    csv_path = data_path("classification.csv")
    assert main(["finetune-cls", "--train", csv_path, "--eval", csv_path, "--init", init, "--out", out,
                 "--max-steps", "40", "--batch-size", "10", "--lr", "3e-3", "--warmup-ratio", "0",
                 "--no-progress", "--backend", "torch"]) == 0
    with open(os.path.join(out, "eval_results.json")) as f:
        metrics = json.load(f)
    assert metrics["accuracy"] == 1.0 and metrics["macro_f1"] == 1.0 and metrics["count"] == 10
    assert '"accuracy": 1.0' in capsys.readouterr().out
    model = SpanBertForSequenceClassification.from_pretrained(out, backend="torch")
    assert model.labels == ["negative", "neutral", "positive"] and model.load_report.missing == []
    again = ClassificationTask().evaluate(model, fixture_tokenizer(), csv_path, None)
    assert again["accuracy"] == 1.0
    with open(os.path.join(out, "predictions.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert all(r["label"] == r["prediction"] for r in rows) and len(rows) == 10
    assert os.path.isfile(os.path.join(out, "tokenizer.json")) and os.path.isfile(os.path.join(out, "log.csv"))


def test_mean_pooling_with_pooler_overfits_jsonl(init, tmp_path):
    jsonl = data_path("classification.jsonl")
    result = finetune(ClassificationTask(pooling="mean", use_pooler=True), train_path=jsonl, eval_path=jsonl,
                      init=init, out_dir=str(tmp_path / "mean"), batch_size=10, max_steps=40, **FAST)
    assert result.metrics["accuracy"] == 1.0
    reloaded = SpanBertForSequenceClassification.from_pretrained(str(tmp_path / "mean"), backend="torch")
    assert reloaded.pooling == "mean" and reloaded.use_pooler
    for name, tensor in result.model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor.cpu(), msg=name)


def test_encoder_checkpoint_gets_a_fresh_reported_head(init):
    model = SpanBertForSequenceClassification.from_pretrained(init, labels=["a", "b"], backend="torch")
    assert sorted(model.load_report.missing) == ["classifier.out_proj.bias", "classifier.out_proj.weight"]
    assert not any(k.startswith("bert.") for k in model.load_report.missing)


def test_metrics_known_case():
    labels = ["a", "b", "c"]
    # gold a a b b c ; predicted a b b b a -> a: P=1/2 R=1/2 F1=.5 ; b: P=2/3 R=1 F1=.8 ; c: P=0 R=0 F1=0
    metrics = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], labels)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["f1_per_label"] == pytest.approx({"a": 0.5, "b": 0.8, "c": 0.0})
    assert metrics["macro_f1"] == pytest.approx(1.3 / 3)


def test_unknown_eval_label_names_file_and_line(init, tmp_path):
    bad = tmp_path / "eval.csv"
    bad.write_text("text,label\nfine day,positive\nodd day,surprised\n")
    model = SpanBertForSequenceClassification.from_pretrained(init, labels=["negative", "positive"], backend="torch")
    with pytest.raises(InputFileError, match=rf"{bad}:3: label 'surprised' is not one of"):
        ClassificationTask().evaluate(model, fixture_tokenizer(), str(bad), None)


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": \n', r"bad.jsonl:2: not valid JSON"),
    ("keys.jsonl", '{"text": "a"}\n', r"keys.jsonl:1: each line must be an object"),
    ("header.csv", "sentence,label\na,x\n", r"header.csv:1: the CSV header must name"),
    ("columns.csv", "text,label\na,x\nb\n", r"columns.csv:3: expected 2 columns"),
], ids=["jsonl-malformed", "jsonl-missing-key", "csv-header", "csv-column-count"])
def test_bad_files_name_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputFileError, match=message):
        read_classification_file(str(path))


def test_continuing_from_a_finetuned_folder_keeps_its_label_ids(tmp_path):
    init = tiny_checkpoint(tmp_path / "init")
    first = SpanBertForSequenceClassification.from_pretrained(init, labels=["positive", "negative", "neutral"],
                                                              backend="torch")
    first.save_pretrained(str(tmp_path / "tuned"))
    examples = read_classification_file(data_path("classification.csv"))
    model = ClassificationTask().build_model(str(tmp_path / "tuned"), examples, "torch")
    assert model.labels == ["positive", "negative", "neutral"] and model.load_report.missing == []
    torch.testing.assert_close(model.classifier.out_proj.weight, first.classifier.out_proj.weight)
    extra = examples + [examples[0].__class__("new", "surprised", 99)]
    with pytest.raises(ValueError, match=r"adds \['surprised'\]"):
        ClassificationTask().build_model(str(tmp_path / "tuned"), extra, "torch")


def test_max_length_is_cut_to_the_model_positions(init, tmp_path, caplog):
    task = ClassificationTask(max_length=512)
    finetune(task, train_path=data_path("classification.csv"), init=init, out_dir=str(tmp_path / "out"),
             batch_size=10, max_steps=1, progress=False, backend="torch")
    assert task.max_length == 128 and "max_length 512 exceeds the 128 positions" in caplog.text


def test_csv_mixing_pair_and_single_rows_keeps_segment_ids(init, tmp_path):
    """Single rows get token_type_ids too (all 0), so a batch mixing them with pairs keeps the
    pairs' segment 1 whichever row comes first."""
    from types import SimpleNamespace

    from spanbert_fast.tasks.batching import collate_features

    path = data_path("classification_pairs.csv")
    examples = read_classification_file(path)
    assert [e.text_pair is not None for e in examples] == [True, False, True]
    stub = SimpleNamespace(label2id={"negative": 0, "positive": 1})
    features = ClassificationTask().features(examples, fixture_tokenizer(), stub, path)
    assert all("token_type_ids" in f for f in features)
    for order in ([0, 1, 2], [1, 0, 2]):
        batch = collate_features([features[i] for i in order], pad_id=0)
        types = batch["token_type_ids"].tolist()
        for row, index in enumerate(order):
            assert (1 in types[row]) == (examples[index].text_pair is not None)
    result = finetune(ClassificationTask(), train_path=path, eval_path=path, init=init,
                      out_dir=str(tmp_path / "out"), batch_size=3, max_steps=1, progress=False, backend="torch")
    assert result.metrics["count"] == 3


def test_bad_eval_file_fails_before_training(init, tmp_path):
    """An unknown eval label or a malformed eval file is reported before any training step."""
    bad = tmp_path / "eval.csv"
    bad.write_text("text,label\nfine day,positive\nodd day,surprised\n")
    out = tmp_path / "out"
    with pytest.raises(InputFileError, match=rf"{bad}:3: label 'surprised' is not one of"):
        finetune(ClassificationTask(), train_path=data_path("classification.csv"), eval_path=str(bad), init=init,
                 out_dir=str(out), batch_size=10, max_steps=1, progress=False, backend="torch")
    bad.write_text("text,label\nfine day\n")
    with pytest.raises(InputFileError, match=rf"{bad}:2: expected 2 columns"):
        finetune(ClassificationTask(), train_path=data_path("classification.csv"), eval_path=str(bad), init=init,
                 out_dir=str(out), batch_size=10, max_steps=1, progress=False, backend="torch")
    assert not out.exists()  # no Trainer, no checkpoint


@pytest.mark.parametrize("name", ["bom.csv", "bom.jsonl"])
def test_utf8_bom_is_accepted(tmp_path, name):
    """Excel's "CSV UTF-8" starts with a byte-order mark; the header is still text,label."""
    path = tmp_path / name
    body = ("text,label\nfine day,positive\n" if name.endswith(".csv")
            else '{"text": "fine day", "label": "positive"}\n')
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    [example] = read_classification_file(str(path))
    assert (example.text, example.label, example.line) == ("fine day", "positive", 2 if name.endswith(".csv") else 1)


def test_evaluation_progress_bar_shown_or_quiet(init, capsys):
    """A bar over the rows while predicting with progress=True; nothing on stderr by default."""
    model = SpanBertForSequenceClassification.from_pretrained(init, labels=["negative", "neutral", "positive"],
                                                              backend="torch")
    task, csv_path = ClassificationTask(), data_path("classification.csv")
    quiet = task.evaluate(model, fixture_tokenizer(), csv_path, None, batch_size=4)
    assert capsys.readouterr().err == ""
    shown = task.evaluate(model, fixture_tokenizer(), csv_path, None, batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert "predict: 100%" in err and "10/10" in err and "row/s" in err
    assert shown == quiet
