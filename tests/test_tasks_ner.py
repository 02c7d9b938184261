"""Token classification: CoNLL reader, first-subword labels, entity scorer, overfit, bad input."""
import os

import pytest

from task_fixtures import data_path, fixture_tokenizer, tiny_checkpoint
from spanbert_fast.cli import main
from spanbert_fast.data.tokenizer import load_tokenizer
from spanbert_fast.tasks import SpanBertForTokenClassification, entity_scores
from spanbert_fast.tasks.batching import IGNORE_INDEX
from spanbert_fast.tasks.text_files import InputFileError
from spanbert_fast.tasks.finetune import finetune
from spanbert_fast.tasks.ner import ConllSentence, NerTask, encode_sentence, entity_spans, read_conll


# --------------------------------------------------------------------------- scorer
def test_entity_spans_bio_rules():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG", "B-PER"]
    assert entity_spans(tags) == {("PER", 0, 1), ("LOC", 3, 4), ("LOC", 5, 5), ("ORG", 6, 6), ("PER", 7, 7)}
    assert entity_spans(["O", "O"]) == set()
    with pytest.raises(ValueError, match="E-PER"):
        entity_spans(["E-PER"])


def test_entity_scores_known_case():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "B-LOC"]]
    # gold: PER(0,1) LOC(3,3) ORG(0,0); predicted: PER(0,0) LOC(3,3) ORG(0,0) LOC(1,1): 2 correct
    scores = entity_scores(gold, predicted)
    assert (scores["correct"], scores["predicted"], scores["gold"]) == (2, 4, 3)
    assert scores["precision"] == pytest.approx(0.5) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert scores["per_type"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert scores["per_type"]["LOC"]["precision"] == 0.5 and scores["per_type"]["LOC"]["recall"] == 1.0
    assert entity_scores(gold, gold)["f1"] == 1.0


def test_entity_scores_type_must_match():
    assert entity_scores([["B-PER", "I-PER"]], [["B-LOC", "I-LOC"]])["f1"] == 0.0


# --------------------------------------------------------------------------- data
def test_read_conll_fixture():
    sentences = read_conll(data_path("conll.txt"))
    assert len(sentences) == 5
    assert sentences[0].words[:2] == ["Gustave", "Eiffel"] and sentences[0].tags[:3] == ["B-PER", "I-PER", "O"]
    assert sentences[0].lines[0] == 3  # the -DOCSTART- line and the blank line come first


@pytest.mark.parametrize("inside", ["\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\xa0", "\u2028", "\u2029", "\u3000"],
                         ids=["x1c", "x1d", "x1e", "x1f", "x85", "nbsp", "u2028", "u2029", "u3000"])
def test_only_spaces_and_tabs_separate_columns(tmp_path, inside):
    """str.split() also splits on these; in CoNLL they are part of the token."""
    path = tmp_path / "odd.conll"
    path.write_text(f"Gustave NNP\tB-PER\nEif{inside}fel  NNP \t I-PER \r\n \t\nParis NNP B-LOC\n", encoding="utf-8")
    sentences = read_conll(str(path))
    assert [s.words for s in sentences] == [["Gustave", f"Eif{inside}fel"], ["Paris"]]
    assert [s.tags for s in sentences] == [["B-PER", "I-PER"], ["B-LOC"]]
    assert [s.lines for s in sentences] == [[1, 2], [4]]


def test_first_subword_carries_the_label(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##be", "##lie", "##vable",
                                "things"]) + "\n")
    tokenizer = load_tokenizer(vocab)
    sentence = ConllSentence(["unbelievable", "things"], ["B-X", "O"], [1, 2])
    feature = encode_sentence(sentence, tokenizer, 64, {"O": 0, "B-X": 1}, "mem")
    # [CLS] un ##be ##lie ##vable things [SEP]
    assert feature["input_ids"] == [2, 5, 6, 7, 8, 9, 3]
    assert feature["token_labels"] == [IGNORE_INDEX, 1, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 0, IGNORE_INDEX]
    assert feature["first_subword"] == {0: 1, 1: 5}
    cut = encode_sentence(sentence, tokenizer, 4, {"O": 0, "B-X": 1}, "mem")  # [CLS] un ##be [SEP]
    assert cut["token_labels"] == [IGNORE_INDEX, 1, IGNORE_INDEX, IGNORE_INDEX] and cut["first_subword"] == {0: 1}


@pytest.mark.parametrize("content, message", [
    ("a X O\nb X\n", r"bad.conll:2: 2 columns, but line 1 has 3"),
    ("lonely\n", r"bad.conll:1: a token line needs at least two columns"),
    ("\n\n", r"bad.conll: no sentences"),
], ids=["column-count", "one-column", "empty"])
def test_bad_conll_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.conll"
    path.write_text(content)
    with pytest.raises(InputFileError, match=message):
        read_conll(str(path))


def test_unknown_eval_tag_is_logged_and_scored_as_missed(tmp_path, caplog):
    """Gold tags are only used for scoring: a tag the model lacks is reported (file, line), not fatal."""
    path = tmp_path / "eval.conll"
    path.write_text("Paris B-LOC\n\nRome B-CITY\n")
    init = tiny_checkpoint(tmp_path / "init")
    model = SpanBertForTokenClassification.from_pretrained(init, labels=["O", "B-LOC", "I-LOC"], backend="torch")
    scores = NerTask().evaluate(model, fixture_tokenizer(), str(path), None)
    assert scores["gold"] == 2 and "CITY" in scores["per_type"] and scores["per_type"]["CITY"]["recall"] == 0.0
    assert f"{path}: tags the model was not trained on: 'B-CITY' (line 3)" in caplog.text


@pytest.mark.parametrize("which", ["train", "eval"])
def test_non_bio_tags_fail_before_training(tmp_path, which):
    """IO tags (PER, LOC) are an error naming file and line -- for the eval file too, before any step."""
    bad = tmp_path / f"{which}.conll"
    bad.write_text("Gustave B-PER\nEiffel I-PER\n\nParis LOC\n")
    conll = data_path("conll.txt")
    paths = {"train": conll, "eval": conll, which: str(bad)}
    init = tiny_checkpoint(tmp_path / "init")
    out = tmp_path / "out"
    with pytest.raises(InputFileError, match=rf"{bad}:4: tag 'LOC' is not BIO/IOB2"):
        finetune(NerTask(), train_path=paths["train"], eval_path=paths["eval"], init=init, out_dir=str(out),
                 batch_size=5, max_steps=1, progress=False, backend="torch")
    assert not out.exists()  # no Trainer, no checkpoint


# --------------------------------------------------------------------------- training
def test_cli_overfits_conll_and_reloads(tmp_path, capsys):
    init = tiny_checkpoint(tmp_path / "init")
    out = str(tmp_path / "ner")
    conll = data_path("conll.txt")
    assert main(["finetune-ner", "--train", conll, "--eval", conll, "--init", init, "--out", out,
                 "--max-steps", "50", "--batch-size", "5", "--lr", "3e-3", "--warmup-ratio", "0",
                 "--no-progress", "--backend", "torch"]) == 0
    assert '"f1": 1.0' in capsys.readouterr().out
    model = SpanBertForTokenClassification.from_pretrained(out, backend="torch")
    assert model.labels == ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"]
    scores = NerTask().evaluate(model, fixture_tokenizer(), conll, str(tmp_path / "again"))
    assert scores["f1"] == 1.0 and scores["gold"] == 9
    with open(os.path.join(tmp_path, "again", "predictions.conll")) as f:
        assert f.readline().split() == ["Gustave", "B-PER", "B-PER"]


def test_cli_reports_bad_training_file_in_one_line(tmp_path):
    bad = tmp_path / "train.conll"
    bad.write_text("Paris NNP B-LOC\nRome B-LOC\n")
    init = tiny_checkpoint(tmp_path / "init")
    with pytest.raises(SystemExit, match=rf"finetune-ner: error: {bad}:2: 2 columns, but line 1 has 3"):
        main(["finetune-ner", "--train", str(bad), "--init", init, "--out", str(tmp_path / "out"), "--no-progress"])


def test_evaluation_progress_bar_shown_or_quiet(tmp_path, capsys):
    """A bar over the sentences while predicting with progress=True; nothing on stderr by default."""
    model = SpanBertForTokenClassification.from_pretrained(tiny_checkpoint(tmp_path / "init"),
                                                           labels=["O", "B-PER", "I-PER"], backend="torch")
    conll = data_path("conll.txt")
    quiet = NerTask().evaluate(model, fixture_tokenizer(), conll, None, batch_size=2)
    assert "predict" not in capsys.readouterr().err
    shown = NerTask().evaluate(model, fixture_tokenizer(), conll, None, batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "predict: 100%" in err and "5/5" in err and "sentence/s" in err
    assert shown == quiet


@pytest.mark.parametrize("progress", [True, False], ids=["progress", "quiet"])
def test_finetune_shows_the_prediction_bar_with_the_training_bar(tmp_path, capsys, progress):
    """The driver's final evaluation follows the training loop's progress switch (--no-progress)."""
    conll = data_path("conll.txt")
    finetune(NerTask(), train_path=conll, eval_path=conll, init=tiny_checkpoint(tmp_path / "init"),
             out_dir=str(tmp_path / "out"), batch_size=5, max_steps=1, progress=progress, backend="torch")
    err = capsys.readouterr().err
    assert ("train: 100%" in err) == progress and ("predict: 100%" in err) == progress
