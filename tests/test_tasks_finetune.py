"""The fine-tuning driver: evaluation at every checkpoint (eval_log.csv, eval_results.json per checkpoint)."""
import csv
import json
import os

import pytest
import torch

from task_fixtures import data_path, fixture_tokenizer, tiny_checkpoint
from spanbert_fast.cli import main
from spanbert_fast.hub import find_weights_file, read_state_dict
from spanbert_fast.tasks import SpanBertForTokenClassification
from spanbert_fast.tasks.finetune import finetune
from spanbert_fast.train import EVAL_LOG, EVAL_RESULTS
from spanbert_fast.tasks.ner import NerTask

CONLL = data_path("conll.txt")
QUICK = dict(batch_size=2, lr=3e-3, warmup_ratio=0.0, log_every=1, progress=False, backend="torch")


def read_eval_log(out_dir):
    with open(os.path.join(out_dir, EVAL_LOG), newline="") as f:
        return list(csv.DictReader(f))


def checkpoint(out_dir, step):
    return os.path.join(out_dir, "checkpoints", f"step-{step:08d}")


def test_each_checkpoint_is_evaluated_and_logged_with_its_step(tmp_path):
    init = tiny_checkpoint(tmp_path / "init")
    out = str(tmp_path / "ner")
    result = finetune(NerTask(), train_path=CONLL, eval_path=CONLL, init=init, out_dir=out, max_steps=5,
                      save_every=2, keep_checkpoints=0, **QUICK)
    rows = read_eval_log(out)
    assert [int(r["step"]) for r in rows] == [2, 4, 5]  # the saved checkpoints, then the final model
    assert set(rows[0]) == {"step", "precision", "recall", "f1", "correct", "predicted", "gold"}
    assert [r["step"] for r in result.evaluations] == [2, 4, 5]
    assert result.evaluations[-1] == {"step": 5, **{k: v for k, v in result.metrics.items() if k != "per_type"}}
    for step, row in zip([2, 4, 5], result.evaluations):
        with open(os.path.join(checkpoint(out, step), EVAL_RESULTS)) as f:
            saved = json.load(f)
        assert saved["f1"] == row["f1"] and "per_type" in saved  # the full metrics beside the weights
        # the metrics are those of that checkpoint's weights
        model = SpanBertForTokenClassification.from_pretrained(checkpoint(out, step), backend="torch")
        assert NerTask().evaluate(model, fixture_tokenizer(), CONLL, None) == saved
    assert not os.path.exists(os.path.join(checkpoint(out, 2), "predictions.conll"))  # predictions: final only
    assert os.path.isfile(os.path.join(out, "predictions.conll"))


def test_checkpoint_evaluations_leave_training_unchanged(tmp_path):
    """Same losses and weights as without an eval file: train mode and the RNG are restored (dropout on)."""
    init = tiny_checkpoint(tmp_path / "init", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    runs = {}
    for name, eval_path in (("plain", None), ("evaluated", CONLL)):
        out = str(tmp_path / name)
        runs[name] = finetune(NerTask(), train_path=CONLL, eval_path=eval_path, init=init, out_dir=out,
                              max_steps=6, save_every=2, **QUICK)
    plain, evaluated = runs["plain"], runs["evaluated"]
    assert [r["step"] for r in evaluated.evaluations] == [2, 4, 6] and plain.evaluations == []
    assert [r["loss"] for r in evaluated.train.history] == [r["loss"] for r in plain.train.history]
    weights = [read_state_dict(find_weights_file(str(tmp_path / name))) for name in ("plain", "evaluated")]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_resumed_run_replaces_the_evaluations_after_its_checkpoint(tmp_path):
    init = tiny_checkpoint(tmp_path / "init")
    out = str(tmp_path / "ner")
    settings = dict(train_path=CONLL, eval_path=CONLL, init=init, out_dir=out, save_every=2, keep_checkpoints=0,
                    **QUICK)
    finetune(NerTask(), max_steps=6, **settings)
    first = read_eval_log(out)
    for step in (4, 6):  # as if the run had died after step 2's checkpoint but its log went on
        for name in os.listdir(checkpoint(out, step)):
            os.remove(os.path.join(checkpoint(out, step), name))
        os.rmdir(checkpoint(out, step))
    resumed = finetune(NerTask(), max_steps=6, resume=True, **settings)
    rows = read_eval_log(out)
    assert [int(r["step"]) for r in rows] == [2, 4, 6]  # no duplicates
    assert rows == first  # CPU resume is bit-exact, so the redone evaluations match
    assert [r["step"] for r in resumed.evaluations] == [4, 6]  # what this run evaluated
    finetune(NerTask(), max_steps=3, overwrite=True, **settings)  # a fresh run in the same folder starts a fresh log
    assert [int(r["step"]) for r in read_eval_log(out)] == [2, 3]


def test_without_save_every_only_the_final_model_is_evaluated(tmp_path, capsys):
    init = tiny_checkpoint(tmp_path / "init")
    out = str(tmp_path / "ner")
    assert main(["finetune-ner", "--train", CONLL, "--eval", CONLL, "--init", init, "--out", out,
                 "--max-steps", "3", "--batch-size", "2", "--no-progress", "--backend", "torch"]) == 0
    assert [int(r["step"]) for r in read_eval_log(out)] == [3]
    assert "evaluations at each checkpoint" not in capsys.readouterr().out
    assert main(["finetune-ner", "--train", CONLL, "--eval", CONLL, "--init", init, "--out", out,
                 "--max-steps", "3", "--save-every", "1", "--batch-size", "2", "--no-progress",
                 "--backend", "torch", "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert f"evaluations at each checkpoint ({os.path.join(out, EVAL_LOG)}):" in printed
    assert "  step 1: precision " in printed and "  step 3: precision " in printed


def test_bad_eval_batch_size_fails_before_training(tmp_path):
    out = tmp_path / "ner"
    with pytest.raises(ValueError, match=r"eval_batch_size \(--eval-batch-size\) must be at least 1, got 0"):
        finetune(NerTask(), train_path=CONLL, eval_path=CONLL, init=str(tmp_path), out_dir=str(out),
                 eval_batch_size=0, max_steps=1, **QUICK)
    assert not out.exists()


def test_new_head_initialisation_follows_the_seed(tmp_path):
    """Two fine-tunes with one --seed in one process start from the same head (the global RNG
    in between does not leak in); another seed gives another head."""
    init = tiny_checkpoint(tmp_path / "init")
    heads = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        torch.manual_seed(100 + len(heads))  # whatever the process did before
        result = finetune(NerTask(), train_path=CONLL, init=init, out_dir=str(tmp_path / name), max_steps=1,
                          seed=seed, **{**QUICK, "lr": 0.0})
        heads.append(result.model.classifier.weight.detach().clone())
    assert torch.equal(heads[0], heads[1])
    assert not torch.equal(heads[0], heads[2])


def test_checkpoints_hold_the_tokenizer_and_continue_without_tokenizer_flag(tmp_path, capsys):
    """Every fine-tune checkpoint folder is complete: ``finetune-qa --init <checkpoint>`` needs no
    --tokenizer, and the tokenizer it finds there is the one the run trained with."""
    from spanbert_fast.data.tokenizer import TOKENIZER_FILE, VOCAB_FILE, load_tokenizer

    squad = data_path("squad_v1.json")
    init = tiny_checkpoint(tmp_path / "init")
    os.remove(os.path.join(init, TOKENIZER_FILE))  # the tokenizer comes from --tokenizer only
    os.remove(os.path.join(init, VOCAB_FILE))
    tokenizer_dir = str(fixture_tokenizer_dir(tmp_path / "tok"))
    first = str(tmp_path / "qa")
    common = ["--train", squad, "--max-length", "64", "--doc-stride", "32", "--batch-size", "4",
              "--no-progress", "--backend", "torch"]
    assert main(["finetune-qa", "--init", init, "--tokenizer", tokenizer_dir, "--out", first,
                 "--max-steps", "2", "--save-every", "1", *common]) == 0
    for step in (1, 2):
        folder = checkpoint(first, step)
        assert sorted(f for f in os.listdir(folder) if f in (TOKENIZER_FILE, VOCAB_FILE)) == [TOKENIZER_FILE, VOCAB_FILE]
        assert load_tokenizer(folder).get_vocab() == fixture_tokenizer().get_vocab()
    second = str(tmp_path / "qa-continued")
    assert main(["finetune-qa", "--init", checkpoint(first, 1), "--out", second, "--max-steps", "1", *common]) == 0
    assert os.path.isfile(os.path.join(checkpoint(second, 1), TOKENIZER_FILE))


def fixture_tokenizer_dir(directory):
    from spanbert_fast.data.tokenizer import save_tokenizer

    return save_tokenizer(fixture_tokenizer(), directory)


def test_command_prints_a_training_summary(tmp_path, capsys):
    """Like ``pretrain``: first -> last loss over the steps, and where the model, checkpoint and log are."""
    init = tiny_checkpoint(tmp_path / "init")
    out = str(tmp_path / "ner")
    assert main(["finetune-ner", "--train", CONLL, "--init", init, "--out", out, "--max-steps", "3",
                 "--batch-size", "2", "--log-every", "1", "--no-progress", "--backend", "torch"]) == 0
    printed = capsys.readouterr().out.splitlines()
    with open(os.path.join(out, "log.csv"), newline="") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert printed[0].startswith(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} over 3 steps (")
    assert printed[1].startswith(f"model:      {os.path.abspath(out)} ")
    assert printed[2] == f"checkpoint: {checkpoint(out, 3)}"
    assert printed[3] == f"log:        {os.path.join(out, 'log.csv')}"
