"""The pre-training step never makes the host wait for the GPU (issue #8).

A host sync (``.item()``, ``nonzero``, boolean indexing, ...) stalls the CPU until the GPU
catches up, so kernel launches stop overlapping with GPU work, and it breaks CUDA-graph
capture. On CPU the :class:`~sync_audit.HostSyncAudit` finds every op that would sync on
CUDA, inside our Triton launch code too; on a GPU, ``torch.cuda.set_sync_debug_mode`` checks
the real thing. Both run :meth:`Trainer.training_step` -- forward, backward, clipping, fused
AdamW, LR schedule -- as ``spanbert-fast pretrain`` does (Triton backend, packed batch,
``validate_targets=False``).
"""
import pytest
import torch

from helpers import DEVICE
from model_fixtures import tiny_batch, tiny_config
from spanbert_fast import SpanBertForPreTraining
from spanbert_fast.data.collate import pack_batch
from spanbert_fast.train import Trainer, TrainingArgs, move_batch
from sync_audit import HostSyncAudit


def make_trainer(tmp_path, device=DEVICE) -> Trainer:
    torch.manual_seed(0)
    # head dim 32; validate_targets=False as `spanbert-fast pretrain` does: the masker checked the ids
    model = SpanBertForPreTraining(tiny_config(num_attention_heads=1), backend="triton", validate_targets=False)
    args = TrainingArgs(out_dir=str(tmp_path), max_steps=10, progress=False, plot=False, device=str(device))
    return Trainer(model, [], args)


def audit_step(trainer: Trainer, batch) -> HostSyncAudit:
    batch = move_batch(batch, trainer.device)
    with HostSyncAudit() as audit:
        trainer.training_step([batch])
    return audit


def test_audit_catches_syncs():
    """The audit is not blind: each kind of sync is reported, with the line it comes from."""
    x = torch.randn(8)
    with HostSyncAudit() as audit:
        x.sum().item()
        x[x > 0]
        x.tolist()
        torch.nonzero(x)
        y = x * 2  # no sync
    assert len(audit.syncs) == 4, audit.report()
    assert "test_host_syncs.py" in audit.syncs[0]
    assert y.shape == x.shape


def test_audit_sees_inside_our_ops():
    """A sync inside a Triton launch function (here the loss's opt-in value check) is caught."""
    hidden, weight = torch.randn(6, 32), torch.randn(97, 32)
    targets = torch.tensor([1, 2, -100])
    positions = torch.tensor([0, 3, 5])
    from spanbert_fast import ops

    with HostSyncAudit() as audit:
        ops.masked_lm_loss(hidden, targets, weight, None, positions, validate=False, backend="triton")
    assert audit.syncs == [], audit.report()
    with HostSyncAudit() as audit:
        ops.masked_lm_loss(hidden, targets, weight, None, positions, validate=True, backend="triton")
    assert audit.syncs, "validate=True reads the ranges on the host: the audit must see it"


def test_packed_training_step_has_no_host_sync(tmp_path):
    trainer = make_trainer(tmp_path)
    batch = pack_batch(tiny_batch())
    trainer.training_step([move_batch(batch, trainer.device)])  # first step: lazy state, Triton JIT
    audit = audit_step(trainer, batch)
    assert audit.syncs == [], audit.report()
    assert trainer.step == 2


def test_padded_training_step_syncs_only_to_unpad(tmp_path):
    """A padded batch on the Triton path unpads once per forward (its longest row sizes the
    kernel grid): that is the one sync, and why `pretrain` feeds packed batches on CUDA."""
    trainer = make_trainer(tmp_path)
    audit = audit_step(trainer, tiny_batch())
    assert audit.syncs, "unpad reads max_seqlen on the host"
    assert all("packing.py" in sync and "in unpad" in sync for sync in audit.syncs), audit.report()


@pytest.mark.gpu
def test_packed_training_step_has_no_cuda_sync(tmp_path):
    trainer = make_trainer(tmp_path, device="cuda")
    batch = move_batch(pack_batch(tiny_batch()), trainer.device)
    trainer.training_step([batch])  # warm-up: Triton compiles and autotunes (which syncs)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.training_step([batch])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert trainer.step == 2


@pytest.mark.gpu
def test_batches_reach_the_gpu_through_pinned_memory(monkeypatch):
    """A host-to-device copy from pageable memory waits for the GPU's queue: move_batch pins."""
    pinned = []
    pin_memory = torch.Tensor.pin_memory
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t, *a, **k: pinned.append(t) or pin_memory(t, *a, **k))
    moved = move_batch({"input_ids": torch.arange(5), "max_seqlen": 7}, torch.device("cuda"))
    torch.cuda.synchronize()
    assert moved["input_ids"].is_cuda and moved["input_ids"].tolist() == [0, 1, 2, 3, 4]
    assert moved["max_seqlen"] == 7 and len(pinned) == 1
