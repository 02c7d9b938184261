"""DDP on CPU (gloo): two ranks reproduce the single-process gradient of the global batch."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model_fixtures import tiny_batch, tiny_config
from spanbert_fast import SpanBertForPreTraining
from spanbert_fast.train import init_distributed

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")


def row_batch(batch, row):
    """The part of a collated batch that belongs to one row, re-indexed for a 1-row batch."""
    length = batch["input_ids"].shape[1]
    out = {"input_ids": batch["input_ids"][row:row + 1], "attention_mask": batch["attention_mask"][row:row + 1]}
    keep = batch["mlm_positions"] // length == row
    out["mlm_positions"] = batch["mlm_positions"][keep] - row * length
    out["mlm_labels"] = batch["mlm_labels"][keep]
    keep = batch["sbo_left"] // length == row
    for key in ("sbo_left", "sbo_right"):
        out[key] = batch[key][keep] - row * length
    for key in ("sbo_rel_pos", "sbo_labels"):
        out[key] = batch[key][keep]
    return out


def make_model():
    torch.manual_seed(0)
    return SpanBertForPreTraining(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, result_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    ctx = init_distributed("cpu")
    assert ctx.rank == rank and dist.get_backend() == "gloo"
    model = torch.nn.parallel.DistributedDataParallel(make_model())
    model(**row_batch(tiny_batch(), rank)).loss.backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in model.module.named_parameters()}, result_path)
    dist.barrier()  # both ranks done before either tears gloo down (else: "terminate called", SIGABRT)
    dist.destroy_process_group()


def test_two_gloo_ranks_match_single_process_gradient(tmp_path):
    result_path = str(tmp_path / "grads.pt")
    mp.spawn(_worker, args=(2, free_port(), result_path), nprocs=2, join=True)
    ddp_grads = torch.load(result_path)

    model = make_model()
    batch = tiny_batch()
    # DDP averages the per-rank mean losses: the global objective is their mean.
    loss = (model(**row_batch(batch, 0)).loss + model(**row_batch(batch, 1)).loss) / 2
    loss.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(ddp_grads[name], param.grad, atol=1e-6, rtol=1e-5, msg=name)


class RankBatches:
    """Resumable per-rank batch source: rank r's batch i is ``tiny_batch(seed=2 * i + r)``."""

    def __init__(self, rank, crash_at=None):
        self.rank, self.position, self.crash_at = rank, 0, crash_at

    def __iter__(self):
        while True:
            if self.position == self.crash_at:
                raise KeyboardInterrupt("simulated crash")
            self.position += 1
            yield tiny_batch(seed=2 * (self.position - 1) + self.rank)

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def _resume_worker(rank, world_size, port, out_dir):
    from spanbert_fast.train import Trainer, TrainingArgs

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    ctx = init_distributed("cpu")

    def train(name, crash_at=None, resume=False):
        torch.manual_seed(0)
        model = SpanBertForPreTraining(tiny_config())  # dropout on: each rank must keep its own RNG
        args = TrainingArgs(out_dir=os.path.join(out_dir, name), max_steps=4, lr=1e-3, log_every=1,
                            save_every=2, progress=False, plot=False, resume=resume)
        return Trainer(model, RankBatches(rank, crash_at), args, dist_ctx=ctx).train()

    straight = train("straight")
    try:
        train("resumed", crash_at=3)
    except KeyboardInterrupt:
        pass
    resumed = train("resumed", resume=True)
    if rank == 0:
        torch.save({"straight": [float(r["loss"]) for r in straight.history],
                    "resumed": [float(r["loss"]) for r in resumed.history]},
                   os.path.join(out_dir, "losses.pt"))
    dist.barrier()  # both ranks done before either tears gloo down (else: "terminate called", SIGABRT)
    dist.destroy_process_group()


def test_ddp_resume_is_bit_identical(tmp_path):
    mp.spawn(_resume_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    losses = torch.load(tmp_path / "losses.pt")
    assert len(losses["straight"]) == 4 and losses["resumed"] == losses["straight"]
    a = SpanBertForPreTraining.from_pretrained(str(tmp_path / "straight" / "checkpoints" / "step-00000004"))
    b = SpanBertForPreTraining.from_pretrained(str(tmp_path / "resumed" / "checkpoints" / "step-00000004"))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
