"""The training loop: optimizer groups, schedule, logs, checkpoints and bit-exact resume."""
import csv
import itertools
import os

import pytest
import torch

from model_fixtures import NumberedBatches, tiny_batch, tiny_config
from spanbert_fast import SpanBertForPreTraining
from spanbert_fast.train import (
    Trainer,
    TrainingArgs,
    list_checkpoints,
    parameter_groups,
    warmup_linear_decay,
)


def make_trainer(out_dir, batches, **overrides):
    torch.manual_seed(0)
    model = SpanBertForPreTraining(tiny_config()).set_backend("torch")
    settings = dict(max_steps=6, lr=1e-3, warmup_steps=2, log_every=1, progress=False, plot=False)
    args = TrainingArgs(out_dir=str(out_dir), **{**settings, **overrides})
    return Trainer(model, batches, args)


def test_weight_decay_only_on_matrices():
    model = SpanBertForPreTraining(tiny_config())
    decay, no_decay = parameter_groups(model, 0.01)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_warmup_then_linear_decay():
    f = warmup_linear_decay(warmup_steps=4, max_steps=12)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(8) == pytest.approx(0.5) and f(12) == 0.0


def test_loss_falls_and_files_are_written(tmp_path):
    same_batch = itertools.repeat(tiny_batch())  # one batch again and again: the loss must fall
    trainer = make_trainer(tmp_path, same_batch, max_steps=30, warmup_steps=0, lr=5e-3, plot=True)
    result = trainer.train()
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < 0.7 * losses[0]
    assert os.path.isfile(os.path.join(tmp_path, "log.csv")) and os.path.isfile(result.plot)
    with open(os.path.join(tmp_path, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and {"loss", "mlm_acc", "sbo_acc", "tokens_per_s", "lr"} <= set(rows[0])
    loaded = SpanBertForPreTraining.from_pretrained(result.checkpoint, strict=True)
    torch.testing.assert_close(loaded.decoder_weight, trainer.model.decoder_weight)


def test_resume_after_crash_is_bit_identical(tmp_path):
    straight = make_trainer(tmp_path / "straight", NumberedBatches()).train()

    crashing = make_trainer(tmp_path / "resumed", NumberedBatches(crash_at=4), save_every=3)
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    assert [os.path.basename(p) for p in list_checkpoints(tmp_path / "resumed")] == ["step-00000003"]
    resumed_trainer = make_trainer(tmp_path / "resumed", NumberedBatches(), save_every=3, resume=True)
    resumed = resumed_trainer.train()

    assert [r["loss"] for r in straight.history] == [float(r["loss"]) for r in resumed.history[:3]] + [
        r["loss"] for r in resumed.history[3:]
    ]
    a = SpanBertForPreTraining.from_pretrained(straight.checkpoint).state_dict()
    b = SpanBertForPreTraining.from_pretrained(resumed.checkpoint).state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        make_trainer(tmp_path, NumberedBatches(), resume=True).train()


def test_bad_args():
    with pytest.raises(ValueError, match="precision"):
        TrainingArgs(out_dir="x", max_steps=1, precision="int8")
    with pytest.raises(ValueError, match="max_steps"):
        TrainingArgs(out_dir="x", max_steps=0)


def test_resume_with_changed_settings_warns(tmp_path):
    make_trainer(tmp_path, NumberedBatches(), max_steps=2).train()
    with pytest.warns(UserWarning, match=r"lr: 0.001 -> 0.002"):
        make_trainer(tmp_path, NumberedBatches(), max_steps=3, lr=2e-3, resume=True).train()


def test_resume_with_a_changed_lr_and_weight_decay_trains_with_the_new_ones(tmp_path):
    make_trainer(tmp_path, NumberedBatches(), max_steps=2, weight_decay=0.01).train()
    with pytest.warns(UserWarning, match=r"lr: 0.001 -> 0.01"):
        resumed = make_trainer(tmp_path, NumberedBatches(), max_steps=6, lr=1e-2, weight_decay=0.1, resume=True)
        resumed._resume()
    assert resumed.step == 2 and resumed.scheduler.base_lrs == [1e-2, 1e-2]
    schedule = warmup_linear_decay(2, 6)  # this run's schedule, from its own peak
    decay, no_decay = resumed.optimizer.param_groups
    assert decay["lr"] == no_decay["lr"] == pytest.approx(1e-2 * schedule(2))
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    resumed.scheduler.step()
    assert decay["lr"] == pytest.approx(1e-2 * schedule(3))


def test_resume_restores_this_runs_optimizer_settings_not_the_checkpoints(tmp_path):
    """A checkpoint saved by a CUDA-graph run (capturable AdamW, tensor learning rates) resumed
    without graphs gets plain settings back (float lr, capturable off), and trains on; the
    other direction is the GPU test in test_static_shapes.py."""
    graphed = make_trainer(tmp_path, NumberedBatches(), max_steps=6, save_every=2)
    for group in graphed.optimizer.param_groups:  # what _set_graph_settings gives a cuda_graphs run
        group["capturable"], group["lr"] = True, torch.tensor(float(group["lr"]))
        group["fused"] = None  # as a checkpoint of an older, unfused run
    graphed.scheduler.base_lrs = [torch.tensor(lr) for lr in graphed.scheduler.base_lrs]
    graphed.step = 2
    graphed.save_checkpoint()
    resumed = make_trainer(tmp_path, NumberedBatches(), max_steps=6, save_every=2, resume=True)
    resumed._resume()
    assert resumed.step == 2
    for group in resumed.optimizer.param_groups:
        assert group["capturable"] is False and type(group["lr"]) is float and group["fused"] is True
    assert all(type(lr) is float for lr in resumed.scheduler.base_lrs)
    result = resumed.train()
    assert result.step == 6 and all(type(row["lr"]) is float for row in result.history)
