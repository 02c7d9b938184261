"""How ``tests/data/checkpoint_v0/`` was made (run once; the folder is committed as it came out).

A run folder written by the training loop of commit 453d7f7, the last one before the
``train/`` package (issue 19): a 16-wide two-layer model trained on CPU in fp32 for 4 steps of
``tiny_batch(seed=step)``, checkpointed at step 2. ``resumed/`` keeps the run as the crash
left it (``log.csv`` and ``checkpoints/step-00000002``); ``expected.safetensors`` holds the
weights of the uninterrupted run after step 4, which a resume from step 2 must reproduce
(``tests/test_checkpoint_fixture.py``).

    .venv/bin/python tests/data/make_checkpoint_v0.py   # from the repository root (rewrites the folder)
"""
import os
import shutil
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from model_fixtures import NumberedBatches  # noqa: E402  (batch i is tiny_batch(seed=i), resumable)

from spanbert_fast import SpanBertConfig, SpanBertForPreTraining  # noqa: E402
from spanbert_fast.train import Trainer, TrainingArgs  # noqa: E402

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoint_v0")
CONFIG = dict(vocab_size=97, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
              max_position_embeddings=16, sbo_position_embedding_size=8)
SETTINGS = dict(max_steps=4, lr=1e-3, warmup_steps=1, log_every=1, save_every=2, keep_checkpoints=0,
                progress=False, plot=False, device="cpu", precision="fp32")


def main():
    torch.manual_seed(0)
    model = SpanBertForPreTraining(SpanBertConfig(**CONFIG)).set_backend("torch")
    with tempfile.TemporaryDirectory() as run_dir:
        result = Trainer(model, NumberedBatches(), TrainingArgs(out_dir=run_dir, **SETTINGS)).train()
        shutil.rmtree(HERE, ignore_errors=True)
        os.makedirs(os.path.join(HERE, "resumed", "checkpoints"))
        shutil.copytree(os.path.join(run_dir, "checkpoints", "step-00000002"),
                        os.path.join(HERE, "resumed", "checkpoints", "step-00000002"))
        with open(os.path.join(run_dir, "log.csv")) as f:  # the rows the crash at step 3 left
            rows = f.read().splitlines(keepends=True)[:3]
        with open(os.path.join(HERE, "resumed", "log.csv"), "w") as f:
            f.writelines(rows)
        shutil.copy(os.path.join(result.checkpoint, "model.safetensors"), os.path.join(HERE, "expected.safetensors"))


if __name__ == "__main__":
    main()
