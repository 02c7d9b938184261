"""Extractive QA: SQuAD reading, windows, decoding, official-style EM/F1, overfitting v1.1 and v2.0."""
import collections
import json
import os
import random
import re
import string

import pytest

from task_fixtures import data_path, fixture_tokenizer, tiny_checkpoint
from spanbert_fast.data.tokenizer import special_ids
from spanbert_fast.cli import main
from spanbert_fast.tasks import SpanBertForQuestionAnswering, squad_metrics
from spanbert_fast.tasks import squad_decoding
from spanbert_fast.tasks.prediction import predict_batches
from spanbert_fast.tasks.text_files import InputFileError
from spanbert_fast.tasks.finetune import finetune
from spanbert_fast.tasks.qa import (
    ContextTokens,
    QuestionAnsweringTask,
    ScoredWindow,
    SquadExample,
    decode_answers,
    decode_examples,
    exact_match_score,
    f1_score,
    make_features,
    max_context_flags,
    normalize_answer,
    read_squad,
    squad_version_of,
    tokenize_context,
    window_starts,
)


# --------------------------------------------------------------------------- metrics
def test_normalize_answer_rules():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple, a pear and the plum") == "apple pear and plum"
    assert normalize_answer("Theatre") == "theatre"  # articles only as whole words
    assert normalize_answer("  A  ") == ""


def test_exact_match_and_f1_known_cases():
    assert exact_match_score("the Eiffel Tower.", "Eiffel tower") == 1.0
    assert f1_score("Gustave Eiffel", "Eiffel") == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert f1_score("in 1889 by Eiffel", "1889") == pytest.approx(2 * (1 / 4) / (1 / 4 + 1))
    assert f1_score("", "") == 1.0 and f1_score("the", "") == 1.0  # both empty after normalising
    assert f1_score("Paris", "") == 0.0 and f1_score("", "Paris") == 0.0
    assert f1_score("red red", "red") == pytest.approx(2 * 0.5 / 1.5)  # counts overlap with multiplicity


def test_squad_metrics_takes_the_best_gold_and_splits_v2():
    def example(qid, answers, impossible=False):
        return SquadExample(qid, "q", "ctx", [(a, 0) for a in answers], impossible, None)

    examples = [example("a", ["Denver Broncos", "the Broncos"]), example("b", ["1889"]),
                example("c", [], impossible=True), example("d", [], impossible=True)]
    metrics = squad_metrics(examples, {"a": "Broncos", "b": "in 1889", "c": "", "d": "Paris"})
    # a: EM 1 (vs "the Broncos"), b: EM 0 F1 2/3, c: 1, d: 0
    assert metrics["exact"] == pytest.approx(50.0)
    assert metrics["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 0) / 4)
    assert metrics["HasAns_total"] == 2 and metrics["HasAns_exact"] == pytest.approx(50.0)
    assert metrics["NoAns_total"] == 2 and metrics["NoAns_f1"] == pytest.approx(50.0)
    assert squad_metrics(examples[:1], {})["exact"] == 0.0  # missing prediction scores 0
    assert "HasAns_exact" not in squad_metrics(examples[:2], {"a": "x", "b": "y"})


# --------------------------------------------------------------------------- the official SQuAD scripts
# Re-written here from the published definitions of evaluate-v1.1.py and evaluate-v2.0.py (the
# scripts distributed with SQuAD), as an independent oracle for squad_metrics.
def official_normalize(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def official_v1_f1(prediction, ground_truth):
    prediction_tokens = official_normalize(prediction).split()
    ground_truth_tokens = official_normalize(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def official_v1_evaluate(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa_item in paragraph["qas"]:
                total += 1
                if qa_item["id"] not in predictions:
                    continue
                ground_truths = [x["text"] for x in qa_item["answers"]]
                prediction = predictions[qa_item["id"]]
                exact_match += max(official_normalize(prediction) == official_normalize(g) for g in ground_truths)
                f1 += max(official_v1_f1(prediction, g) for g in ground_truths)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def official_v2_f1(a_gold, a_pred):
    gold_toks, pred_toks = official_normalize(a_gold).split(), official_normalize(a_pred).split()
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision, recall = 1.0 * num_same / len(pred_toks), 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def official_v2_evaluate(dataset, preds):
    exact_scores, f1_scores, has_ans = {}, {}, {}
    for article in dataset:
        for p in article["paragraphs"]:
            for qa_item in p["qas"]:
                qid = qa_item["id"]
                has_ans[qid] = bool(qa_item["answers"])
                gold_answers = [a["text"] for a in qa_item["answers"] if official_normalize(a["text"])] or [""]
                a_pred = preds[qid]
                exact_scores[qid] = max(int(official_normalize(a) == official_normalize(a_pred)) for a in gold_answers)
                f1_scores[qid] = max(official_v2_f1(a, a_pred) for a in gold_answers)

    def make_eval_dict(qid_list, prefix=""):
        total = len(qid_list)
        return {prefix + "exact": 100.0 * sum(exact_scores[k] for k in qid_list) / total,
                prefix + "f1": 100.0 * sum(f1_scores[k] for k in qid_list) / total, prefix + "total": total}

    out = make_eval_dict(list(exact_scores))
    for prefix, qids in (("HasAns_", [k for k, v in has_ans.items() if v]),
                         ("NoAns_", [k for k, v in has_ans.items() if not v])):
        if qids:
            out.update(make_eval_dict(qids, prefix))
    return out


ANSWER_POOL = ["the", "an", "A", "", "cat", "the cat", "The Cat.", "Paris", "paris!", "in Paris", "!!", "a an the",
               "Eiffel Tower", "the Eiffel  tower", "tower tower", "Gustave Eiffel", "1889", "in 1889"]


def scoring_file(tmp_path, questions, version=None, impossible_key=False, name="squad.json"):
    """A SQuAD file holding ``questions`` [(qid, [gold texts], is_impossible)], one context with every text."""
    context = " | ".join(text for text in ANSWER_POOL)
    qas = []
    for qid, golds, impossible in questions:
        item = {"id": qid, "question": "q?", "answers": [{"text": g, "answer_start": context.find(g)} for g in golds]}
        if impossible_key or impossible:
            item["is_impossible"] = impossible
        qas.append(item)
    dataset = {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}
    if version is not None:
        dataset["version"] = version
    path = tmp_path / name
    path.write_text(json.dumps(dataset), encoding="utf-8")
    return str(path), dataset["data"]


def test_squad_v1_pinned_examples(tmp_path):
    """Gold answers that normalise to "" are kept by the official v1.1 script (F1 0 there)."""
    path, data = scoring_file(tmp_path, [("q1", ["the"], False), ("q2", ["the", "cat"], False)], version="1.1")
    examples = read_squad(path, require_answers=False, check_offsets=False)
    one = squad_metrics(examples[:1], {"q1": "an"})
    assert (one["exact"], one["f1"], one["squad_version"]) == (100.0, 0.0, "1.1")
    two = squad_metrics(examples[1:], {"q2": ""})
    assert (two["exact"], two["f1"]) == (100.0, 0.0)
    official = official_v1_evaluate(data, {"q1": "an", "q2": ""})
    both = squad_metrics(examples, {"q1": "an", "q2": ""})
    assert (both["exact"], both["f1"]) == (official["exact_match"], official["f1"]) == (100.0, 0.0)
    # The same questions under the v2.0 rules: "the" is dropped (q1's gold becomes ""; q2's is "cat").
    v2 = squad_metrics(examples, {"q1": "an", "q2": ""}, squad_version="2.0")
    assert (v2["exact"], v2["f1"]) == (50.0, 50.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_squad_v1_file_scores_as_the_official_v1_script(tmp_path, seed):
    rng = random.Random(seed)
    questions = [(f"q{i}", rng.sample(ANSWER_POOL, rng.randint(1, 3)), False) for i in range(300)]
    predictions = {qid: rng.choice(ANSWER_POOL) for qid, _, _ in questions if rng.random() > 0.05}
    for version in (None, "1.1"):
        path, data = scoring_file(tmp_path, questions, version=version)
        ours = squad_metrics(read_squad(path, require_answers=False, check_offsets=False), predictions)
        official = official_v1_evaluate(data, predictions)
        assert ours["squad_version"] == "1.1" and "HasAns_exact" not in ours
        assert ours["exact"] == pytest.approx(official["exact_match"], abs=1e-9)
        assert ours["f1"] == pytest.approx(official["f1"], abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_squad_v2_file_scores_as_the_official_v2_script(tmp_path, seed):
    """Includes impossible questions that still list answers (the v2.0 script scores those answers)."""
    rng = random.Random(seed)
    questions = []
    for i in range(300):
        kind = rng.random()
        golds = [] if kind < 0.3 else rng.sample(ANSWER_POOL, rng.randint(1, 3))
        questions.append((f"q{i}", golds, kind < 0.3 or kind > 0.9))
    predictions = {qid: rng.choice(ANSWER_POOL) for qid, _, _ in questions}
    path, data = scoring_file(tmp_path, questions, version="v2.0", impossible_key=True)
    ours = squad_metrics(read_squad(path, require_answers=False, check_offsets=False), predictions)
    official = official_v2_evaluate(data, predictions)
    assert ours.pop("squad_version") == "2.0"
    assert ours.keys() == official.keys()
    for key, value in official.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key


def test_squad_version_follows_the_file(tmp_path):
    assert squad_version_of(None, impossible_keys=False, impossible_true=False) == "1.1"
    assert squad_version_of("1.1", impossible_keys=True, impossible_true=False) == "1.1"
    assert squad_version_of(None, impossible_keys=True, impossible_true=False) == "2.0"
    assert squad_version_of("v2.0", impossible_keys=False, impossible_true=False) == "2.0"
    assert squad_version_of("1.1", impossible_keys=True, impossible_true=True) == "2.0"
    assert read_squad(data_path("squad_v1.json"))[0].squad_version == "1.1"
    assert read_squad(data_path("squad_v2.json"))[0].squad_version == "2.0"
    with pytest.raises(ValueError, match="squad_version"):
        squad_metrics(read_squad(data_path("squad_v1.json")), {}, squad_version="3")


# --------------------------------------------------------------------------- windows
def test_window_starts_and_max_context():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(4, 4, 2) == [0]
    flags = max_context_flags([0, 3, 6], 4, 10)
    # token 3 is in windows 0 (i=3, 0 right context) and 1 (i=0): tie broken by earlier window
    # token 4: window 1 (min(1, 2)) beats window 0? (not in it) -> window 1
    owner = {}
    for w, start in enumerate([0, 3, 6]):
        for i, flag in enumerate(flags[w]):
            if flag:
                assert start + i not in owner
                owner[start + i] = w
    assert sorted(owner) == list(range(10))  # every token scored in exactly one window
    assert owner[4] == 1 and owner[8] == 2


def test_long_context_windows_keep_the_answer_offsets():
    tokenizer = fixture_tokenizer()
    examples = {e.qid: e for e in read_squad(data_path("squad_v1.json"))}
    example = examples["q5"]  # "Oskar Lind", past the first window
    features = make_features(example, tokenizer, max_length=48, doc_stride=16, max_query_length=16)
    assert len(features) >= 3
    context = tokenize_context(tokenizer, example.context)
    with_answer = [f for f in features if f["start_positions"] > 0]
    assert with_answer and features[0]["start_positions"] == 0 == features[0]["end_positions"]
    for feature in with_answer:
        first = feature["context_start"]
        start = feature["token_start"] + feature["start_positions"] - first
        end = feature["token_start"] + feature["end_positions"] - first
        assert example.context[context.offsets[start][0]: context.offsets[end][1]] == "Oskar Lind"
    for feature in features:
        assert len(feature["input_ids"]) <= 48
        assert feature["token_type_ids"].count(0) == feature["context_start"]


def test_decode_answers_limits_and_null_threshold():
    example = SquadExample("x", "q", "aa bb cc", [], False, None)
    context = ContextTokens([10, 11, 12], [(0, 2), (3, 5), (6, 8)])
    feature = {"context_start": 2, "token_start": 0, "max_context": [True, True, True]}
    # positions: 0 [CLS], 1 question, 2..4 context
    starts = [[1.0, 0.0, 5.0, 0.0, 0.0]]
    ends = [[1.0, 0.0, 0.0, 0.0, 4.0]]
    answer, nbest, _ = decode_answers(example, context, [feature], starts, ends)
    assert answer == "aa bb cc" and nbest[0]["score"] == 9.0
    answer, _, _ = decode_answers(example, context, [feature], starts, ends, max_answer_length=2)
    assert answer == "aa"  # start 2 with end 2 is the best span of at most two tokens
    # v2: null score 2.0 vs best span 9.0 -> answer; a threshold of -8 flips it to ""
    answer, nbest, diff = decode_answers(example, context, [feature], starts, ends, version_2=True)
    assert answer == "aa bb cc" and diff == pytest.approx(-7.0) and "" in [c["text"] for c in nbest]
    answer, _, _ = decode_answers(example, context, [feature], starts, ends, version_2=True, null_threshold=-8.0)
    assert answer == ""


# --------------------------------------------------------------------------- whole-word answers
WORD_CONTEXT = "Berlin is the capital of Deutschland. Café Müller serves crème in Zürich, Smith's way."
VOCABS = {"uncased": data_path("bert_uncased_vocab.txt"), "cased": data_path("bert_cased_vocab.txt")}


def decode_token_span(context_text, tokenizer, first, last):
    """The answer decode_answers gives when the model points at context tokens ``first..last``."""
    from spanbert_fast.data.tokenizer import load_tokenizer

    context = tokenize_context(tokenizer, context_text)
    n = len(context.ids)
    feature = {"context_start": 1, "token_start": 0, "max_context": [True] * n}
    starts, ends = [0.0] * (n + 1), [0.0] * (n + 1)
    starts[1 + first], ends[1 + last] = 10.0, 10.0
    example = SquadExample("x", "q", context_text, [], False, None)
    return decode_answers(example, context, [feature], [starts], [ends], max_answer_length=n)[0], context


def piece_index(tokenizer, context_text, word, piece):
    """Index of the ``piece``-th WordPiece of the first token of ``word`` in the context."""
    encoding = tokenizer.encode(context_text, add_special_tokens=False)
    start = context_text.index(word)
    first = next(i for i, (s, _) in enumerate(encoding.offsets) if s == start)
    return first + piece


@pytest.mark.parametrize("casing", ["uncased", "cased"])
def test_answers_are_whole_words_of_the_original_context(casing):
    """A span starting or ending inside a word (at a ## piece) answers whole words, with the
    context's own casing and accents, as BERT's get_final_text returns them."""
    from spanbert_fast.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(VOCABS[casing])
    tokens = tokenizer.encode("Deutschland Müller Zürich", add_special_tokens=False).tokens
    assert sum(not t.startswith("##") for t in tokens) == 3 and len(tokens) > 6 and "[UNK]" not in tokens
    capital = piece_index(tokenizer, WORD_CONTEXT, "capital", 0)
    cases = [  # (first token, last token) -> answer
        ((capital, piece_index(tokenizer, WORD_CONTEXT, "Deutschland", 0)), "capital of Deutschland"),
        ((capital, piece_index(tokenizer, WORD_CONTEXT, "Deutschland", 2)), "capital of Deutschland"),
        ((piece_index(tokenizer, WORD_CONTEXT, "Müller", 2), piece_index(tokenizer, WORD_CONTEXT, "Zürich", 1)),
         "Müller serves crème in Zürich"),
        ((piece_index(tokenizer, WORD_CONTEXT, "Smith", 1), piece_index(tokenizer, WORD_CONTEXT, "Smith", 1)),
         "Smith"),  # punctuation is a word of its own: "Smith's" stays "Smith", as get_final_text trims it
    ]
    for (first, last), expected in cases:
        answer, context = decode_token_span(WORD_CONTEXT, tokenizer, first, last)
        assert answer == expected, (casing, first, last, tokenizer.encode(WORD_CONTEXT).tokens[first + 1: last + 2])
        plain = WORD_CONTEXT[context.offsets[first][0]:context.offsets[last][1]]
        assert plain == expected or len(plain) < len(expected)  # the token cut alone is not a word


def test_whole_word_answers_count_once_and_need_word_boundaries():
    """Two spans widening to the same words are one n-best entry; a tokenizer without
    pre-tokenization (no word boundary known) keeps the token span."""
    from spanbert_fast.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(VOCABS["cased"])
    context = tokenize_context(tokenizer, "Deutschland")
    n = len(context.ids)
    feature = {"context_start": 1, "token_start": 0, "max_context": [True] * n}
    starts, ends = [0.0] + [5.0] * n, [0.0] + [5.0] * n
    example = SquadExample("x", "q", "Deutschland", [], False, None)
    answer, nbest, _ = decode_answers(example, context, [feature], [starts], [ends], n_best=5)
    assert answer == "Deutschland" and [c["text"] for c in nbest] == ["Deutschland"]
    no_words = ContextTokens(context.ids, context.offsets)  # word_ids unknown
    assert no_words.answer_chars(0, 0) == context.offsets[0]


# --------------------------------------------------------------------------- streaming prediction
SMALL_WINDOWS = dict(max_length=48, doc_stride=16, max_query_length=16)  # long contexts: 7 windows


@pytest.fixture(scope="module")
def untrained_qa(tmp_path_factory):
    """A QA model with a random head: arbitrary but fixed logits, enough to compare decoders."""
    init = tiny_checkpoint(tmp_path_factory.mktemp("qa-init"))
    return SpanBertForQuestionAnswering.from_pretrained(init, backend="torch").eval()


def predict_all_windows_then_decode(task, model, tokenizer, examples, version_2, batch_size):
    """The decoder before streaming: every window's logits kept until all were scored."""
    contexts, windows = [], []
    for index, example in enumerate(examples):
        contexts.append(tokenize_context(tokenizer, example.context))
        windows.extend((index, f) for f in make_features(example, tokenizer, task.max_length, task.doc_stride,
                                                         task.max_query_length, contexts[-1]))
    inputs = [{"input_ids": f["input_ids"], "token_type_ids": f["token_type_ids"]} for _, f in windows]
    logits_of = collections.defaultdict(list)
    done = 0
    for chunk, output in predict_batches(model, inputs, special_ids(tokenizer).pad, batch_size):
        for row in range(len(chunk)):
            index, feature = windows[done + row]
            length = len(feature["input_ids"])
            logits_of[index].append((feature, output.start_logits[row, :length].tolist(),
                                     output.end_logits[row, :length].tolist()))
        done += len(chunk)
    predictions, nbest, null_diffs = {}, {}, {}
    for index, example in enumerate(examples):
        features, starts, ends = zip(*logits_of[index])
        answer, candidates, null_diff = decode_answers(
            example, contexts[index], features, starts, ends, n_best=task.n_best,
            max_answer_length=task.max_answer_length, version_2=version_2, null_threshold=task.null_threshold)
        predictions[example.qid], nbest[example.qid], null_diffs[example.qid] = answer, candidates, null_diff
    return predictions, nbest, null_diffs


@pytest.mark.parametrize("name, version_2, batch_size", [
    ("squad_v1.json", False, 3), ("squad_v1.json", False, 64), ("squad_v2.json", True, 1), ("squad_v2.json", True, 4),
], ids=["v1-batch3", "v1-batch64-all-windows", "v2-batch1", "v2-batch4"])
def test_streaming_decoder_gives_the_same_predictions(untrained_qa, name, version_2, batch_size):
    """Same answers, n-best lists (scores included) and null odds as decoding after all windows."""
    tokenizer, examples = fixture_tokenizer(), read_squad(data_path(name))
    task = QuestionAnsweringTask(**SMALL_WINDOWS)
    window_counts = [len(make_features(e, tokenizer, **SMALL_WINDOWS)) for e in examples]
    assert sum(count > 1 for count in window_counts) >= 4 and 1 in window_counts  # mixed, batches cut examples
    streamed = task.predict(untrained_qa, tokenizer, examples, version_2, batch_size)
    expected = predict_all_windows_then_decode(task, untrained_qa, tokenizer, examples, version_2, batch_size)
    assert streamed == expected
    assert list(streamed[0]) == [e.qid for e in examples]  # in file order
    assert squad_metrics(examples, streamed[0]) == squad_metrics(examples, expected[0])


def test_decode_examples_holds_one_example_at_a_time():
    """Each example is decoded when the next one's first window arrives, never later."""
    context = ContextTokens([10, 11, 12], [(0, 2), (3, 5), (6, 8)])
    examples = [SquadExample(f"q{i}", "q", "aa bb cc", [], False, None) for i in range(4)]
    windows_per_example = [3, 1, 2, 4]
    produced = []

    def scored_windows():
        feature = {"context_start": 2, "token_start": 0, "max_context": [True, True, True]}
        for index, count in enumerate(windows_per_example):
            for _ in range(count):
                produced.append(index)
                yield ScoredWindow(index, context, feature, [0.0, 0.0, 3.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0, 2.0])

    decoded = []
    for index, answer, nbest, _ in decode_examples(examples, scored_windows()):
        decoded.append(index)
        held = len(produced) - sum(windows_per_example[:index])  # windows read but not yet decoded before
        assert held <= windows_per_example[index] + 1  # this example's windows + the one that closed it
        assert answer == "aa bb cc" and len(nbest) == 6  # the 6 spans of 3 tokens, each once however many windows
    assert decoded == [0, 1, 2, 3]


def test_decode_examples_rejects_windows_out_of_example_order():
    context = ContextTokens([10], [(0, 2)])
    examples = [SquadExample(f"q{i}", "q", "aa", [], False, None) for i in range(2)]
    window = dict(context=context, feature={"context_start": 2, "token_start": 0, "max_context": [True]},
                  start_logits=[0.0, 0.0, 1.0], end_logits=[0.0, 0.0, 1.0])
    scored = [ScoredWindow(0, **window), ScoredWindow(1, **window), ScoredWindow(0, **window)]
    with pytest.raises(ValueError, match="windows of example 0 come after those of example 1"):
        list(decode_examples(examples, scored))


def test_predict_decodes_each_example_once_its_windows_are_scored(untrained_qa, monkeypatch):
    """Through the model: when an example is decoded, at most one batch beyond its windows was scored."""
    tokenizer, examples = fixture_tokenizer(), read_squad(data_path("squad_v2.json"))
    task, batch_size = QuestionAnsweringTask(**SMALL_WINDOWS), 2
    scored, held = [0], []

    def counting_predict_batches(*args, **kwargs):
        for chunk, output in predict_batches(*args, **kwargs):
            scored[0] += len(chunk)
            yield chunk, output

    def recording_decode_answers(example, context, features, *args, **kwargs):
        held.append(scored[0] - decoded_windows[0])  # scored windows not decoded yet, this example's included
        decoded_windows[0] += len(features)
        return decode_answers(example, context, features, *args, **kwargs)

    decoded_windows = [0]
    monkeypatch.setattr(squad_decoding, "predict_batches", counting_predict_batches)
    monkeypatch.setattr(squad_decoding, "decode_answers", recording_decode_answers)
    task.predict(untrained_qa, tokenizer, examples, True, batch_size)
    window_counts = [len(make_features(e, tokenizer, **SMALL_WINDOWS)) for e in examples]
    assert decoded_windows[0] == scored[0] == sum(window_counts) > len(examples) + batch_size
    assert len(held) == len(examples)
    for count, pending in zip(window_counts, held):
        assert pending <= count + batch_size


# --------------------------------------------------------------------------- bad input
def squad_file(tmp_path, context, answer_text, answer_start, name="bad.json"):
    dataset = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "first", "question": "ok?", "answers": [{"text": context[:2], "answer_start": 0}]},
        {"id": "second", "question": "where?", "answers": [{"text": answer_text, "answer_start": answer_start}]},
    ]}]}]}
    path = tmp_path / name
    path.write_text(json.dumps(dataset, indent=1))
    line = next(i for i, l in enumerate(path.read_text().splitlines(), 1) if '"second"' in l)
    return str(path), line


def test_answer_outside_context_names_file_and_line(tmp_path):
    path, line = squad_file(tmp_path, "short context", "context here", 6)
    with pytest.raises(InputFileError, match=rf"bad.json:{line}: question second: answer .* outside its context"):
        read_squad(path)


def test_answer_text_mismatch_names_file_and_line(tmp_path):
    path, line = squad_file(tmp_path, "short context", "contxt", 6)
    with pytest.raises(InputFileError, match=rf"bad.json:{line}: question second: answer 'contxt' is not at"):
        read_squad(path)


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"data": [\n  {"paragraphs": [}\n]}\n')
    with pytest.raises(InputFileError, match=r"broken.json:2: not valid JSON"):
        read_squad(str(path))
    path.write_text('{"version": "1.1"}')
    with pytest.raises(InputFileError, match="not a SQuAD file"):
        read_squad(str(path))


@pytest.mark.parametrize("part, value, where", [
    ("answers", "MARK", r"data\[0\].paragraphs\[1\].qas\[0\].answers must be a list, got str"),
    ("answer", "MARK", r"data\[0\].paragraphs\[1\].qas\[0\].answers\[1\] must be an object, got str"),
    ("qa", ["MARK"], r"data\[0\].paragraphs\[1\].qas\[1\] must be an object, got list"),
    ("paragraph", "MARK", r"data\[0\].paragraphs\[2\] must be an object, got str"),
], ids=["answers", "answer", "qa", "paragraph"])
def test_non_object_parts_name_file_and_line(tmp_path, part, value, where):
    """Not an AttributeError: the part's JSON location and its line."""
    good = {"context": "ab cd", "qas": [{"id": "x", "question": "?", "answers": [{"text": "ab", "answer_start": 0}]}]}
    paragraph = json.loads(json.dumps(good))
    if part == "answers":
        paragraph["qas"][0]["answers"] = value
    elif part == "answer":
        paragraph["qas"][0]["answers"].append(value)
    elif part == "qa":
        paragraph["qas"].append(value)
    paragraphs = [good, paragraph] + ([value] if part == "paragraph" else [])
    path = tmp_path / "parts.json"
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}, indent=1))
    line = next(i for i, l in enumerate(path.read_text().splitlines(), 1) if "MARK" in l)
    if part == "qa":
        line -= 1  # the list that holds "MARK" opens on the line before
    with pytest.raises(InputFileError, match=rf"parts.json:{line}: {where}"):
        read_squad(str(path))


def test_reading_many_questions_is_linear_and_lines_stay_right(tmp_path):
    """The id -> line map is built in one pass: 20k questions read in well under 5 s."""
    import time

    context = "alpha beta gamma delta"
    qas = [{"id": f"q{i}", "question": "which?", "answers": [{"text": "beta", "answer_start": 6}]}
           for i in range(20_000)]
    qas.append({"id": "größe-ü", "question": "which?", "answers": [{"text": "zeta", "answer_start": 6}]})
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": context, "qas": qas}]}]}, indent=1))
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"data": [{"paragraphs": [{"context": context, "qas": qas[:-1]}]}]}, indent=1))
    started = time.perf_counter()
    examples = read_squad(str(good))
    assert time.perf_counter() - started < 5.0
    assert len(examples) == 20_000
    lines = path.read_text().splitlines()
    assert examples[12_345].line == next(i for i, l in enumerate(lines, 1) if '"q12345"' in l)
    # a non-ASCII id is found at its line, written \\u-escaped or as is
    line = next(i for i, l in enumerate(lines, 1) if "gr\\u00f6\\u00dfe" in l)
    with pytest.raises(InputFileError, match=rf"big.json:{line}: question größe-ü: answer 'zeta' is not at"):
        read_squad(str(path))
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps({"data": [{"paragraphs": [{"context": context, "qas": qas[-3:]}]}]}, indent=1,
                              ensure_ascii=False), encoding="utf-8")
    line = next(i for i, l in enumerate(raw.read_text(encoding="utf-8").splitlines(), 1) if "größe" in l)
    with pytest.raises(InputFileError, match=rf"raw.json:{line}: question größe-ü"):
        read_squad(str(raw))


# --------------------------------------------------------------------------- training
WINDOWS = dict(max_length=96, doc_stride=48, max_query_length=16)  # the long context spans 3 windows


@pytest.fixture(scope="module")
def trained_v2(tmp_path_factory):
    """One CLI fine-tuning run on the v2.0 fixture (the v1.1 questions + two impossible ones)."""
    root = tmp_path_factory.mktemp("qa")
    init = tiny_checkpoint(root / "init")
    out = str(root / "qa")
    squad = data_path("squad_v2.json")
    assert main(["finetune-qa", "--train", squad, "--eval", squad, "--init", init, "--out", out,
                 "--max-length", "96", "--doc-stride", "48", "--max-query-length", "16", "--batch-size", "16",
                 "--max-steps", "120", "--lr", "3e-3", "--warmup-ratio", "0", "--no-progress",
                 "--backend", "torch"]) == 0
    return out


@pytest.mark.slow
def test_cli_overfits_squad_v2_with_null_answers(trained_v2):
    with open(os.path.join(trained_v2, "eval_results.json")) as f:
        metrics = json.load(f)
    assert metrics["exact"] == 100.0 and metrics["f1"] == 100.0
    assert metrics["NoAns_total"] == 2 and metrics["HasAns_total"] == 7
    with open(os.path.join(trained_v2, "predictions.json")) as f:
        predictions = json.load(f)
    assert predictions["q8"] == "" and predictions["q9"] == ""
    assert predictions["q5"] == "Oskar Lind" and predictions["q4"] == "apples, pears and barley"
    with open(os.path.join(trained_v2, "null_odds.json")) as f:
        assert json.load(f)["q8"] > 0  # the null answer won


@pytest.mark.slow
def test_reloaded_model_answers_squad_v1(trained_v2, tmp_path):
    model = SpanBertForQuestionAnswering.from_pretrained(trained_v2, backend="torch")
    assert model.load_report.missing == []
    metrics = QuestionAnsweringTask(**WINDOWS).evaluate(model, fixture_tokenizer(), data_path("squad_v1.json"),
                                                        str(tmp_path))
    assert metrics == {"exact": 100.0, "f1": 100.0, "total": 7, "squad_version": "1.1"}
    assert not os.path.exists(tmp_path / "null_odds.json")  # v1.1 data: no null answers
    with open(tmp_path / "nbest_predictions.json") as f:
        nbest = json.load(f)["q2"]
    assert nbest[0]["text"] == "Gustave Eiffel" and len(nbest) <= 20


def test_finetune_from_python_with_v2_flag(tmp_path):
    """The Python API runs the same driver; a few steps are enough to check the wiring."""
    init = tiny_checkpoint(tmp_path / "init")
    squad = data_path("squad_v1.json")
    task = QuestionAnsweringTask(**WINDOWS, version_2=True)
    result = finetune(task, train_path=squad, eval_path=squad, init=init, out_dir=str(tmp_path / "qa"),
                      batch_size=16, max_steps=2, lr=1e-3, progress=False, backend="torch")
    assert result.train.step == 2 and set(result.metrics) >= {"exact", "f1", "total"}
    assert os.path.isfile(tmp_path / "qa" / "null_odds.json")  # decoded with null answers


def test_malformed_eval_file_fails_before_training(tmp_path):
    bad = tmp_path / "dev.json"
    bad.write_text('{"data": [\n  {"paragraphs": [}\n]}\n')
    out = tmp_path / "qa"
    with pytest.raises(InputFileError, match=rf"{bad}:2: not valid JSON"):
        finetune(QuestionAnsweringTask(**WINDOWS), train_path=data_path("squad_v1.json"), eval_path=str(bad),
                 init=tiny_checkpoint(tmp_path / "init"), out_dir=str(out), batch_size=16, max_steps=1,
                 progress=False, backend="torch")
    assert not out.exists()  # no Trainer, no checkpoint


@pytest.mark.parametrize("option, flag", [("doc_stride", "--doc-stride"), ("n_best", "--n-best"),
                                          ("max_answer_length", "--max-answer-length"),
                                          ("max_query_length", "--max-query-length")])
@pytest.mark.parametrize("value", [0, -1])
def test_window_and_decoding_options_must_be_positive(option, flag, value, tmp_path):
    """--doc-stride 0 used to loop forever in window_starts; each option is named."""
    with pytest.raises(ValueError, match=rf"{option} \({flag}\) must be an integer >= 1, got {value}"):
        QuestionAnsweringTask(**{option: value})
    squad = data_path("squad_v1.json")
    with pytest.raises(SystemExit, match=rf"finetune-qa: error: {option} \({flag}\) must be"):
        main(["finetune-qa", "--train", squad, "--init", str(tmp_path), "--out", str(tmp_path / "out"),
              flag, str(value)])
    with pytest.raises(ValueError, match="stride"):
        window_starts(10, 4, value)


def test_eval_file_answer_offsets_only_warn(tmp_path, caplog):
    """Scoring uses the answer text only: a wrong answer_start in an eval file is a warning."""
    path, line = squad_file(tmp_path, "short context", "contxt", 6)
    with pytest.raises(InputFileError, match="is not at answer_start"):
        read_squad(path)  # training files stay strict
    examples = QuestionAnsweringTask().read_eval(path)
    assert examples[1].answers == [("contxt", 6)]
    assert f"bad.json:{line}: question second: answer 'contxt' is not at answer_start 6" in caplog.text
    outside, _ = squad_file(tmp_path, "short context", "context here", 6, name="outside.json")
    assert QuestionAnsweringTask().read_eval(outside)[1].answers == [("context here", 6)]
    assert "lies outside its context" in caplog.text


def test_evaluation_progress_bar_counts_questions(untrained_qa, capsys):
    """A bar over the questions decoded with progress=True; nothing on stderr by default."""
    task, squad = QuestionAnsweringTask(**SMALL_WINDOWS), data_path("squad_v2.json")
    quiet = task.evaluate(untrained_qa, fixture_tokenizer(), squad, None, batch_size=4)
    assert capsys.readouterr().err == ""
    shown = task.evaluate(untrained_qa, fixture_tokenizer(), squad, None, batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert "predict: 100%" in err and "9/9" in err and "question/s" in err
    assert shown == quiet
