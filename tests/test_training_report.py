"""What a training run shows: the progress bar and the training.png plot."""
import itertools
import re
import time

import torch

from model_fixtures import tiny_batch, tiny_config
from spanbert_fast import SpanBertForPreTraining
from spanbert_fast.train import Trainer, TrainingArgs


def slow_batches(seconds: float):
    """One batch again and again, each after ``seconds`` (past tqdm's 0.1 s between frames, so
    every update may draw)."""
    batch = tiny_batch()
    for _ in itertools.count():
        time.sleep(seconds)
        yield batch


def test_progress_bar_draws_the_finished_bar_once(tmp_path, capsys):
    torch.manual_seed(0)
    model = SpanBertForPreTraining(tiny_config()).set_backend("torch")
    args = TrainingArgs(out_dir=str(tmp_path), max_steps=3, lr=1e-3, log_every=1, progress=True, plot=False)
    result = Trainer(model, slow_batches(0.15), args).train()
    frames = [f for f in re.split(r"[\r\n]", capsys.readouterr().err) if f.startswith("train:")]
    finished = [f for f in frames if "100%" in f]
    assert len(finished) == 1, frames
    assert f"loss={result.history[-1]['loss']:.3f}" in finished[0]
    assert "3/3" in finished[0]


def test_training_png_draws_held_out_evaluations_and_a_distinct_throughput_colour(tmp_path, monkeypatch):
    """Every evaluation (each checkpoint's and the final model's) is a point of a held-out curve in
    its training curve's colour; tokens/s has a colour no loss curve has."""
    import matplotlib.pyplot as plt

    from spanbert_fast.train import CheckpointEvaluatingTrainer, evaluate_batches, finish_evaluation

    figures = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig) or real_close(fig))
    torch.manual_seed(0)
    model = SpanBertForPreTraining(tiny_config()).set_backend("torch")
    held_out = [tiny_batch(seed=99)]
    args = TrainingArgs(out_dir=str(tmp_path), max_steps=4, lr=1e-3, log_every=1, save_every=2,
                        progress=False, plot=True)
    trainer = CheckpointEvaluatingTrainer(model, itertools.repeat(tiny_batch()), args,
                                          evaluate=lambda m: evaluate_batches(m, held_out, trainer.device))
    result = trainer.train()
    finish_evaluation(trainer, evaluate_batches(model, held_out, trainer.device), result.checkpoint)

    assert (tmp_path / "training.png").is_file()
    lines = {line.get_label(): line for ax in figures[-1].axes for line in ax.get_lines()}
    for key in ("loss", "mlm_loss", "sbo_loss", "mlm_acc", "sbo_acc"):
        held_out_line = lines[f"held-out {key}"]
        assert list(held_out_line.get_xdata()) == [2, 4]
        assert list(held_out_line.get_ydata()) == [row[key] for row in trainer.evaluations]
        assert held_out_line.get_color() == lines[f"train {key}"].get_color()
    loss_colours = {lines[f"train {key}"].get_color() for key in ("loss", "mlm_loss", "sbo_loss")}
    assert len(loss_colours) == 3 and lines["tokens / s"].get_color() not in loss_colours


def test_periodic_evaluations_save_no_checkpoint_and_take_no_training_time(tmp_path, monkeypatch):
    """``evaluate_every`` evaluates between checkpoints too (once per step, the checkpoint's
    evaluation counts), writes no checkpoint for it, and its time stays out of tokens/s."""
    import json
    from types import SimpleNamespace

    import spanbert_fast.train.logging as training_logging
    from spanbert_fast.train import CheckpointEvaluatingTrainer, evaluate_batches
    from spanbert_fast.train.evaluation import read_evaluation_log

    pause = 1000.0  # each evaluation moves the log's clock on this far
    clock = SimpleNamespace(skipped=0.0)
    monkeypatch.setattr(training_logging, "time",
                        SimpleNamespace(perf_counter=lambda: time.perf_counter() + clock.skipped))

    def slow_evaluation(model):
        clock.skipped += pause
        return evaluate_batches(model, [tiny_batch(seed=99)], trainer.device)

    torch.manual_seed(0)
    model = SpanBertForPreTraining(tiny_config()).set_backend("torch")
    args = TrainingArgs(out_dir=str(tmp_path), max_steps=7, lr=1e-3, log_every=1, save_every=3,
                        keep_checkpoints=0, progress=False, plot=False)
    trainer = CheckpointEvaluatingTrainer(model, itertools.repeat(tiny_batch()), args,
                                          evaluate=slow_evaluation, evaluate_every=2)
    result = trainer.train()

    assert [row["step"] for row in trainer.evaluations] == [2, 3, 4, 6]  # not 7: the caller evaluates the final model
    assert [int(row["step"]) for row in read_evaluation_log(str(tmp_path))] == [2, 3, 4, 6]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000003", "step-00000006",
                                                                             "step-00000007"]
    assert json.loads((tmp_path / "checkpoints" / "step-00000006" / "eval_results.json").read_text())["loss"] == \
        trainer.evaluations[-1]["loss"]
    assert max(row["elapsed_s"] for row in result.history) < pause, [row["elapsed_s"] for row in result.history]


def test_training_png_draws_the_unigram_baseline_and_keeps_the_first_steps_off_the_loss_axis(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from spanbert_fast.train.logging import plot_history

    figures = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig) or real_close(fig))
    # a loss that falls from 16 to about 10 in the first tenth of the run, then slowly to 9
    history = [dict(step=s, loss=16.0 if s == 10 else 10.0 - s / 1000, mlm_acc=s / 2000, tokens_per_s=100.0)
               for s in range(10, 1010, 10)]
    evaluations = [dict(step=s, loss=10.5 - s / 1000, mlm_acc=s / 2500) for s in (200, 600, 1000)]
    plot_history(history, str(tmp_path / "training.png"), evaluations, unigram_baselines={"mlm_acc": 0.075})

    loss_axis, accuracy_axis = figures[-1].axes[:2]
    baseline = {line.get_label(): line for line in accuracy_axis.get_lines()}[
        "held-out mlm_acc of always the most frequent token (0.075)"]
    assert list(baseline.get_ydata()) == [0.075, 0.075]
    assert accuracy_axis.get_ylim()[0] == 0
    bottom, top = loss_axis.get_ylim()
    assert 10.0 < top < 12.0 and bottom < 9.0  # the later curve fills the axis; step 10's 16 is above it


def test_loss_axis_is_matplotlibs_own_when_nothing_would_be_cut_off():
    from spanbert_fast.train.logging import loss_axis_top

    rising = [dict(step=s, loss=float(s)) for s in range(1, 101)]
    assert loss_axis_top(rising, [], ["loss"]) is None
