"""Relation extraction: the TACRED scorer, reading and masking, overfit + reload, CLI, bad input."""
import json
import logging
import os

import pytest
import torch

from task_fixtures import data_path, fixture_tokenizer, tiny_checkpoint, tiny_task_config
from spanbert_fast import SpanBertForPreTraining, SpanBertForRelationExtraction
from spanbert_fast.cli import main
from spanbert_fast.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, vocab_tokens
from spanbert_fast.tasks.text_files import InputFileError
from spanbert_fast.tasks.finetune import finetune
from spanbert_fast.tasks.relation import (
    RelationExample,
    RelationExtractionTask,
    add_marker_tokens,
    assign_entity_markers,
    check_unique_ids,
    encode_examples,
    keep_both_entities,
    read_tacred,
    tacred_scores,
)

TRAIN_JSON, TRAIN_JSONL = data_path("tacred_small.json"), data_path("tacred_small.jsonl")
RELATIONS = ["no_relation", "org:city_of_headquarters", "org:founded_by", "per:city_of_birth", "per:employee_of",
             "per:title"]
MARKERS = ["[SUBJ-ORGANIZATION]", "[SUBJ-PERSON]", "[OBJ-CITY]", "[OBJ-ORGANIZATION]", "[OBJ-PERSON]", "[OBJ-TITLE]"]


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    """The tiny preset's shape (hidden 128, 2 layers, 2 heads, FFN 512), no dropout; the fixture
    tokenizer has no [unusedN] entries, so the markers grow the vocabulary."""
    return tiny_checkpoint(tmp_path_factory.mktemp("re_init"), hidden_size=128, intermediate_size=512)


@pytest.fixture(scope="module")
def init_with_unused(tmp_path_factory):
    """A checkpoint whose vocab.txt has four [unusedN] entries after the special tokens (as BERT's)."""
    directory = tmp_path_factory.mktemp("re_unused")
    words = [t for t in vocab_tokens(fixture_tokenizer()) if t not in SPECIAL_TOKENS]
    vocabulary = list(SPECIAL_TOKENS) + [f"[unused{i}]" for i in range(4)] + words
    (directory / "vocab.txt").write_text("".join(t + "\n" for t in vocabulary), encoding="utf-8")
    torch.manual_seed(0)
    SpanBertForPreTraining(tiny_task_config(len(vocabulary))).save_pretrained(str(directory))
    return str(directory)


def example(words, subj, obj, relation="per:title", subj_type="PERSON", obj_type="TITLE", id_="x"):
    return RelationExample(id_, list(words), subj[0], subj[1], obj[0], obj[1], subj_type, obj_type, relation, 1)


# --------------------------------------------------------------------------- scorer
@pytest.mark.parametrize("gold, predicted, expected", [
    # nothing predicted: precision 100 by the published scorer's convention, recall 0 without gold
    (["no_relation"] * 3, ["no_relation"] * 3, (100.0, 0.0, 0.0, 0, 0, 0)),
    (["per:title", "org:founded_by", "no_relation"], ["per:title", "org:founded_by", "no_relation"],
     (100.0, 100.0, 100.0, 2, 2, 2)),
    # swapped relations: wrong guesses count against precision and recall
    (["per:title", "org:founded_by"], ["org:founded_by", "per:title"], (0.0, 0.0, 0.0, 0, 2, 2)),
    # a relation predicted for gold no_relation: precision only
    (["no_relation", "per:title"], ["per:title", "per:title"], (50.0, 100.0, 200 / 3, 1, 2, 1)),
    # no_relation predicted for a gold relation: recall only
    (["per:title", "org:founded_by"], ["per:title", "no_relation"], (100.0, 50.0, 200 / 3, 1, 1, 2)),
], ids=["all-no-relation", "all-correct", "swapped", "gold-none-predicted-relation", "predicted-none"])
def test_tacred_scores_hand_cases(gold, predicted, expected):
    scores = tacred_scores(gold, predicted)
    got = tuple(scores[k] for k in ("precision", "recall", "f1", "correct", "predicted", "gold"))
    assert got == pytest.approx(expected)
    assert scores["total"] == len(gold)


def test_tacred_scores_per_relation_rows():
    scores = tacred_scores(["per:title", "per:title", "org:founded_by", "no_relation"],
                           ["per:title", "no_relation", "per:title", "org:founded_by"])
    assert scores["per_relation"]["per:title"] == pytest.approx(
        {"precision": 50.0, "recall": 50.0, "f1": 50.0, "correct": 1, "predicted": 2, "gold": 2})
    assert scores["per_relation"]["org:founded_by"] == pytest.approx(
        {"precision": 0.0, "recall": 0.0, "f1": 0.0, "correct": 0, "predicted": 1, "gold": 1})
    assert "no_relation" not in scores["per_relation"]
    with pytest.raises(ValueError, match="2 gold relations but 1 predictions"):
        tacred_scores(["a", "b"], ["a"])


# --------------------------------------------------------------------------- reading and encoding
def test_json_list_and_jsonl_read_alike():
    from_list, from_lines = read_tacred(TRAIN_JSON), read_tacred(TRAIN_JSONL)
    assert len(from_list) == 48 and {e.relation for e in from_list} == set(RELATIONS)
    assert [e.line for e in from_list] == list(range(2, 50)) and [e.line for e in from_lines] == list(range(1, 49))
    for a, b in zip(from_list, from_lines):
        assert (a.id, a.words, a.markers, a.relation) == (b.id, b.words, b.markers, b.relation)
    bracketed = next(e for e in from_list if "(" in e.words)  # -LRB- / -RRB- become brackets
    assert ")" in bracketed.words and "-LRB-" not in bracketed.words


def test_markers_take_unused_entries_in_a_fixed_order_then_grow():
    vocabulary = ["[PAD]", "[unused0]", "[UNK]", "[unused1]", "word"]
    markers = assign_entity_markers({"[OBJ-CITY]", "[SUBJ-PERSON]", "[OBJ-AGE]"}, vocabulary, len(vocabulary))
    assert list(markers) == ["[SUBJ-PERSON]", "[OBJ-AGE]", "[OBJ-CITY]"]
    assert markers == {"[SUBJ-PERSON]": {"token": "[unused0]", "id": 1}, "[OBJ-AGE]": {"token": "[unused1]", "id": 3},
                       "[OBJ-CITY]": {"token": "[OBJ-CITY]", "id": 5}}
    # continuing from a saved mapping keeps it and places only the new markers
    more = assign_entity_markers({"[OBJ-CITY]", "[SUBJ-ORG]"}, vocabulary + ["[OBJ-CITY]"], 6, saved=markers)
    assert list(more)[:3] == list(markers) and more["[SUBJ-ORG]"] == {"token": "[SUBJ-ORG]", "id": 6}


def test_entity_words_become_one_marker_each(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused1]", "was", "born",
                                "in", ",", "the"]) + "\n")
    tokenizer = load_tokenizer(vocab)
    markers = {"[SUBJ-PERSON]": 5, "[OBJ-CITY]": 6}
    born = example(["Ada", "Lovelace", "was", "born", "in", "London"], (0, 1), (5, 5), obj_type="CITY")
    [ids], cut = encode_examples([born], tokenizer, markers, 64, "mem")
    assert ids == [2, 5, 7, 8, 9, 6, 3] and cut == 0  # [CLS] [SUBJ-PERSON] was born in [OBJ-CITY] [SEP]
    # the object first: markers sit where their entities were
    flipped = example(["London", ",", "the", "Ada", "Lovelace"], (3, 4), (0, 0), obj_type="CITY")
    [ids], _ = encode_examples([flipped], tokenizer, markers, 64, "mem")
    assert ids == [2, 6, 10, 11, 5, 3]
    no_marker = r"mem:1: example 'x': field 'obj_type': the model has no marker \[OBJ-AGE\]"
    with pytest.raises(InputFileError, match=no_marker):
        encode_examples([example(["a", "b"], (0, 0), (1, 1), obj_type="AGE")], tokenizer, markers, 64, "mem")


@pytest.mark.parametrize("length, first, second, budget", [
    (20, 0, 1, 6), (20, 18, 19, 6), (20, 8, 11, 6), (20, 3, 9, 7), (20, 2, 17, 6), (20, 0, 19, 2), (20, 5, 6, 2),
    (9, 1, 7, 8), (30, 10, 12, 3),
], ids=["start", "end", "middle", "pair-fits", "far-apart", "ends-budget-2", "adjacent-budget-2", "one-short",
        "budget-3"])
def test_truncation_keeps_both_entities(length, first, second, budget):
    body = list(range(length))
    kept = keep_both_entities(body, first, second, budget)
    assert len(kept) == budget and first in kept and second in kept
    assert kept == sorted(kept)  # context dropped, order kept
    if second - first + 1 <= budget:
        assert kept == list(range(kept[0], kept[0] + budget))  # one window
    else:  # a window around each: the words just past the first and before the second are gone
        assert first + budget // 2 not in kept and second - (budget - budget // 2) not in kept


def test_short_enough_body_is_kept_whole():
    assert keep_both_entities([7, 8, 9], 0, 2, 3) == [7, 8, 9]


def test_long_example_is_cut_around_its_entities(init, caplog):
    tokenizer = load_tokenizer(init)
    words = ["the"] * 40 + ["Ada"] + ["the"] * 40 + ["London"] + ["the"] * 40
    long = example(words, (40, 40), (81, 81), obj_type="CITY")
    markers = {"[SUBJ-PERSON]": 900, "[OBJ-CITY]": 901}
    [ids], cut = encode_examples([long], tokenizer, markers, 16, "mem")
    assert len(ids) == 16 and cut == 1 and ids.count(900) == 1 and ids.count(901) == 1
    assert ids.index(900) < ids.index(901)


# --------------------------------------------------------------------------- training, reload, CLI
def test_cli_overfits_the_fixture_and_the_folder_reloads(init, tmp_path, capsys):
    out = str(tmp_path / "re")
    assert main(["finetune-re", "--train", TRAIN_JSON, "--eval", TRAIN_JSONL, "--init", init, "--out", out,
                 "--max-steps", "24", "--batch-size", "16", "--lr", "3e-3", "--warmup-ratio", "0",
                 "--no-progress", "--backend", "torch"]) == 0
    with open(os.path.join(out, "eval_results.json")) as f:
        scores = json.load(f)
    assert (scores["precision"], scores["recall"], scores["f1"]) == (100.0, 100.0, 100.0)
    assert (scores["correct"], scores["gold"], scores["total"]) == (34, 34, 48)
    assert set(scores["per_relation"]) == set(RELATIONS) - {"no_relation"}
    assert '"f1": 100.0' in capsys.readouterr().out
    examples = read_tacred(TRAIN_JSONL)
    with open(os.path.join(out, "predictions.json")) as f:
        predictions = json.load(f)
    assert predictions == {e.id: e.relation for e in examples}

    with open(os.path.join(out, "task.json")) as f:
        saved = json.load(f)
    assert saved["task"] == "relation-extraction" and list(saved["id2label"].values()) == RELATIONS
    assert list(saved["head"]["entity_markers"]) == MARKERS  # the recorded order
    reloaded = SpanBertForRelationExtraction.from_pretrained(out, backend="torch")
    assert reloaded.load_report.missing == [] and reloaded.labels == RELATIONS and reloaded.pooling == "cls"
    # no [unusedN] entries: each marker was added to the tokenizer and the embeddings grew by one row each
    tokenizer = load_tokenizer(out)
    base = fixture_tokenizer().get_vocab_size()
    assert reloaded.config.vocab_size == base + 6 == tokenizer.get_vocab_size(with_added_tokens=True)
    assert [tokenizer.token_to_id(m) for m in MARKERS] == list(range(base, base + 6))
    task = RelationExtractionTask()
    # predictions.json came from the trained model; the reloaded folder predicts the same
    assert task.predict(reloaded, tokenizer, examples, TRAIN_JSONL) == [predictions[e.id] for e in examples]


def test_entity_start_pooling_on_unused_entries(init_with_unused, tmp_path):
    """Four [unusedN] entries for six markers: four mapped onto them, two grown; the marker states
    feed the classifier, and the reloaded folder predicts as the trained model did."""
    task = RelationExtractionTask(pooling="entity-start")
    result = finetune(task, train_path=TRAIN_JSONL, eval_path=TRAIN_JSON, init=init_with_unused,
                      out_dir=str(tmp_path / "es"), batch_size=16, max_steps=15, lr=3e-3, warmup_ratio=0.0,
                      progress=False, backend="torch")
    model, base = result.model, len(vocab_tokens(load_tokenizer(init_with_unused)))
    assert [v["token"] for v in model.entity_markers.values()] == [f"[unused{i}]" for i in range(4)] + MARKERS[4:]
    assert [v["id"] for v in model.entity_markers.values()] == [5, 6, 7, 8, base, base + 1]
    assert model.config.vocab_size == base + 2 and model.classifier.in_features == 2 * model.config.hidden_size
    assert result.metrics["f1"] == 100.0
    reloaded = SpanBertForRelationExtraction.from_pretrained(str(tmp_path / "es"), backend="torch")
    assert reloaded.pooling == "entity-start" and reloaded.entity_markers == model.entity_markers
    tokenizer = load_tokenizer(str(tmp_path / "es"))
    examples = read_tacred(TRAIN_JSON)
    sequences = task.encode(examples, tokenizer, reloaded, "x")
    width = max(map(len, sequences))
    inputs = torch.tensor([ids + [0] * (width - len(ids)) for ids in sequences])  # [PAD] = 0
    mask = (inputs != 0).long()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(inputs, mask).logits, model.cpu().eval()(inputs, mask).logits)


def test_continuing_keeps_markers_and_labels(init, tmp_path):
    task = RelationExtractionTask()
    first = task.build_model(init, read_tacred(TRAIN_JSON), "torch")
    first.save_pretrained(str(tmp_path / "tuned"))
    tokenizer = load_tokenizer(init)
    task.encode(read_tacred(TRAIN_JSON)[:1], tokenizer, first, TRAIN_JSON)  # grows the tokenizer
    tokenizer.save(str(tmp_path / "tuned" / "tokenizer.json"))
    extra = [example(["Ada", "is", "36"], (0, 0), (2, 2), relation="per:title", obj_type="NUMBER", id_="age")]
    again = task.build_model(str(tmp_path / "tuned"), read_tacred(TRAIN_JSON) + extra, "torch")
    assert again.labels == first.labels and list(again.entity_markers)[:6] == list(first.entity_markers)
    assert again.entity_markers["[OBJ-NUMBER]"]["id"] == first.config.vocab_size
    torch.testing.assert_close(again.classifier.weight, first.classifier.weight)


def test_tokenizer_without_the_models_markers_is_refused(init):
    model = RelationExtractionTask().build_model(init, read_tacred(TRAIN_JSON), "torch")
    tokenizer = load_tokenizer(init)
    tokenizer.add_special_tokens(["[SOMETHING-ELSE]"])  # takes the id of the first grown marker
    with pytest.raises(ValueError, match=r"\[SUBJ-ORGANIZATION\] is '\[SUBJ-ORGANIZATION\]' with id \d+ in task.json"):
        add_marker_tokens(tokenizer, model.entity_markers)


# --------------------------------------------------------------------------- evaluation checks
def write_examples(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def fixture_rows():
    with open(TRAIN_JSON) as f:
        return json.load(f)


def test_unseen_relation_is_logged_and_counted_wrong(init, tmp_path, caplog):
    rows = fixture_rows()[:4]
    rows[1] = {**rows[1], "relation": "per:age"}
    path = write_examples(tmp_path / "eval.jsonl", rows)
    task = RelationExtractionTask()
    model = task.build_model(init, read_tacred(TRAIN_JSON), "torch")
    with caplog.at_level(logging.WARNING):
        examples = task.read_eval(path, model)
    unseen = f"'per:age' (example '{rows[1]['id']}', line 2)"
    assert f"{path}: relations the model was not trained on: {unseen}" in caplog.text
    scores = task.evaluate(model, load_tokenizer(init), path, None, examples=examples)
    assert scores["per_relation"]["per:age"]["gold"] == 1 and scores["per_relation"]["per:age"]["correct"] == 0


def test_repeated_id_is_an_error_at_evaluation_only(tmp_path):
    path = write_examples(tmp_path / "eval.jsonl", [GOOD, {**GOOD, "id": "e2"}, GOOD])
    assert len(read_tacred(path)) == 3  # training on it is fine
    with pytest.raises(InputFileError, match=r"eval.jsonl:3: example 'e1': field 'id': repeated \(first at line 1\)"):
        check_unique_ids(read_tacred(path), path)


def test_unseen_entity_type_at_evaluation_is_an_error(init, tmp_path):
    rows = fixture_rows()[:3]
    rows[2] = {**rows[2], "obj_type": "NUMBER"}
    path = write_examples(tmp_path / "eval.jsonl", rows)
    model = RelationExtractionTask().build_model(init, read_tacred(TRAIN_JSON), "torch")
    with pytest.raises(InputFileError, match=rf"eval.jsonl:3: example '{rows[2]['id']}': field 'obj_type': "
                                             r"\[OBJ-NUMBER\] was not seen in training"):
        RelationExtractionTask().read_eval(path, model)


GOOD = {"id": "e1", "token": ["Ada", "Lovelace", "was", "born", "in", "London"], "subj_start": 0, "subj_end": 1,
        "obj_start": 5, "obj_end": 5, "subj_type": "PERSON", "obj_type": "CITY", "relation": "per:city_of_birth"}


@pytest.mark.parametrize("change, message", [
    ({"subj_end": 6}, r"example 'e1': field 'subj_end': 6 is outside the 6 tokens \(0..5\)"),
    ({"obj_start": -1}, r"example 'e1': field 'obj_start': -1 is outside the 6 tokens"),
    ({"obj_start": 1, "obj_end": 2}, r"example 'e1': field 'obj_start': object words 1..2 overlap subject words 0..1"),
    ({"subj_start": 3, "subj_end": 2}, r"example 'e1': field 'subj_start': 3 is after subj_end 2"),
    ({"subj_type": None}, r"example 'e1': field 'subj_type': must be a non-empty type name"),
    ({"obj_type": "NEW YORK"}, r"example 'e1': field 'obj_type': must be a non-empty type name without spaces"),
    ({"token": []}, r"example 'e1': field 'token': empty token list"),
    ({"token": "Ada was born"}, r"example 'e1': field 'token': must be a list of word strings"),
    ({"subj_start": "0"}, r"example 'e1': field 'subj_start': must be an integer word index"),
    ({"relation": ""}, r"example 'e1': field 'relation': must be a non-empty string"),
    ({"subj_type": ..., "obj_type": ...}, r"example 'e1': field 'subj_type': missing \(so are 'obj_type'\)"),
    ({"id": ...}, r"example #2 \(no id\): field 'id': missing"),
], ids=["span-past-end", "negative-start", "overlap", "start-after-end", "type-missing-value", "type-with-space",
        "empty-tokens", "tokens-not-list", "index-not-int", "empty-relation", "missing-fields", "missing-id"])
@pytest.mark.parametrize("layout", ["jsonl", "json"])
def test_bad_example_names_file_line_id_and_field(tmp_path, change, message, layout):
    bad = {k: v for k, v in {**GOOD, **change}.items() if v is not ...}
    rows = [{**GOOD, "id": "e0"}, bad]
    path = tmp_path / f"bad.{layout}"
    if layout == "jsonl":
        write_examples(path, rows)
    else:  # the list layout of TACRED's files: "[", one object per line, "]"
        path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n", encoding="utf-8")
    line = 2 if layout == "jsonl" else 3
    with pytest.raises(InputFileError, match=rf"^{path}:{line}: {message}") as error:
        read_tacred(str(path))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("content, message", [
    ('[{"id": 1},\n oops]', r"bad.json:2: not valid JSON"),
    ('[{"id": 1}\n {"id": 2}]', r"bad.json:2: not valid JSON \(expected ',' or ']'\)"),
    ('[]\n[]', r"bad.json:2: not valid JSON \(extra data after the list\)"),
    ('[]', r"bad.json: no examples"),
    ('[\n 3\n]', r"bad.json:2: example #1: expected an object with the fields id, token"),
    (json.dumps(GOOD) + "\n{oops\n", r"bad.json:2: not valid JSON"),
], ids=["json-malformed", "json-missing-comma", "json-trailing-data", "empty-list", "not-an-object",
        "jsonl-malformed"])
def test_bad_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputFileError, match=message):
        read_tacred(str(path))


@pytest.mark.parametrize("which", ["train", "eval"])
def test_a_bad_file_stops_before_training(init, tmp_path, which):
    rows = fixture_rows()
    rows[40] = {**rows[40], "obj_start": rows[40]["subj_start"]}  # overlaps the subject: the last rows still read
    bad = write_examples(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "out"
    paths = {"train_path": bad, "eval_path": TRAIN_JSON} if which == "train" else \
        {"train_path": TRAIN_JSON, "eval_path": bad}
    with pytest.raises(InputFileError, match=rf"{bad}:41: example '{rows[40]['id']}': field 'obj_start'"):
        finetune(RelationExtractionTask(), init=init, out_dir=str(out), batch_size=16, max_steps=1, progress=False,
                 backend="torch", **paths)
    assert not out.exists()  # no Trainer, no checkpoint


@pytest.mark.gpu
@pytest.mark.parametrize("pooling", ["cls", "entity-start"])
def test_cuda_bf16_triton_overfits_and_reloads(init, tmp_path, pooling):
    """On CUDA: Triton kernels, bf16 autocast, marker lookup (torch.isin) and grown embeddings on
    the device; the reloaded folder predicts what predictions.json holds."""
    out = str(tmp_path / pooling)
    result = finetune(RelationExtractionTask(pooling=pooling), train_path=TRAIN_JSON, eval_path=TRAIN_JSONL,
                      init=init, out_dir=out, batch_size=16, max_steps=40, lr=3e-3, warmup_ratio=0.0,
                      progress=False, backend="triton", device="cuda")
    assert result.metrics["f1"] == 100.0
    with open(os.path.join(out, "predictions.json")) as f:
        predictions = json.load(f)
    reloaded = SpanBertForRelationExtraction.from_pretrained(out, backend="triton").cuda()
    examples = read_tacred(TRAIN_JSONL)
    predicted = RelationExtractionTask(pooling=pooling).predict(reloaded, load_tokenizer(out), examples, TRAIN_JSONL)
    assert predicted == [predictions[e.id] for e in examples]
