"""A run folder written before the ``train/`` package (issue 19) still resumes, bit for bit.

``tests/data/checkpoint_v0`` was written by the training loop of commit 453d7f7 (see
``tests/data/make_checkpoint_v0.py``): a run checkpointed at step 2 of 4. Resuming it with
today's code must reproduce the weights the uninterrupted old run had after step 4.
"""
import csv
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))
from make_checkpoint_v0 import CONFIG, HERE, SETTINGS, NumberedBatches  # noqa: E402  (from model_fixtures)

from spanbert_fast import SpanBertConfig, SpanBertForPreTraining  # noqa: E402
from spanbert_fast.hub import read_state_dict  # noqa: E402
from spanbert_fast.train import Trainer, TrainingArgs  # noqa: E402


def test_resume_from_a_checkpoint_written_by_the_old_code(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(os.path.join(HERE, "resumed"), run_dir)
    torch.manual_seed(123)  # the resume restores every RNG state: the fresh weights do not matter
    model = SpanBertForPreTraining(SpanBertConfig(**CONFIG)).set_backend("torch")
    args = TrainingArgs(out_dir=str(run_dir), resume=True, **SETTINGS)
    result = Trainer(model, NumberedBatches(), args).train()

    assert result.step == 4 and [int(row["step"]) for row in result.history] == [1, 2, 3, 4]
    expected = read_state_dict(os.path.join(HERE, "expected.safetensors"))
    resumed = read_state_dict(os.path.join(result.checkpoint, "model.safetensors"))
    assert sorted(resumed) == sorted(expected)
    for key, value in expected.items():
        # bit-exact on the machine that wrote it; a CPU with other SIMD kernels may round differently
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-6, msg=key)
    with open(run_dir / "log.csv") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [1, 2, 3, 4]
