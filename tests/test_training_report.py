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
