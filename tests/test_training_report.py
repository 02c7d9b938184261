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
