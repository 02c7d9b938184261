"""Fixed-shape packed batches (for a CUDA-graph step) and the captured step itself.

On CPU: the capacity really bounds every batch the masker makes, the padding changes neither
the loss nor any gradient (torch and Triton backends), and bad settings fail clearly. On a GPU:
the captured step trains exactly like the eager one.
"""
import numpy as np
import pytest
import torch

from helpers import DEVICE
from model_fixtures import tiny_config
from spanbert_fast import SpanBertForPreTraining
from spanbert_fast.data.loader import PretrainingBatches
from spanbert_fast.data.static_shapes import pad_packed_batch, static_capacity
from spanbert_fast.train import Trainer, TrainingArgs, move_batch
from test_collate import VOCAB, InMemoryBlocks

BLOCK = 60  # InMemoryBlocks holds blocks of 5..59 tokens


class Blocks(InMemoryBlocks):
    block_size = BLOCK


def batches(batch_size=4, static=True, count=40, seed=0):
    return PretrainingBatches(Blocks(count, seed=seed), batch_size=batch_size, seed=seed, packed=True,
                              static_shapes=static)


def test_capacity_holds_every_batch_and_every_shape_is_fixed():
    source = batches(batch_size=3, count=90)
    capacity = source.static_capacity
    assert capacity == static_capacity(3, BLOCK + 2, 0.15)
    shapes = set()
    for epoch in range(3):
        for step in range(source.steps_per_epoch):
            batch = source.make_batch(epoch, step)
            shapes.add(tuple((k, tuple(v.shape)) for k, v in sorted(batch.items()) if torch.is_tensor(v)))
            assert batch["max_seqlen"] == BLOCK + 2
            lengths = (batch["cu_seqlens"][1:] - batch["cu_seqlens"][:-1]).long()
            assert int(lengths.sum()) == capacity.tokens and int(lengths.max()) <= BLOCK + 2
    assert len(shapes) == 1, "every batch must have the same shapes"


def test_padding_changes_neither_loss_nor_any_gradient():
    source = batches(batch_size=3, static=False)
    packed = source.make_batch(0, 0)
    capacity = static_capacity(3, BLOCK + 2)
    static = pad_packed_batch(packed, capacity)
    assert int(static["num_tokens"]) == packed["input_ids"].numel()
    assert static["input_ids"].numel() == capacity.tokens and static["mlm_labels"].numel() == capacity.mlm
    backend = "triton" if DEVICE == "cuda" else "torch"
    torch.manual_seed(0)
    model = SpanBertForPreTraining(tiny_config(vocab_size=VOCAB, hidden_size=64, num_attention_heads=2,
                                               intermediate_size=128, max_position_embeddings=64))
    model = model.to(DEVICE).set_backend(backend).eval()  # no dropout: identical masks are not the point

    def loss_and_grads(batch):
        model.zero_grad()
        output = model(**move_batch(batch, DEVICE))
        output.loss.backward()
        return output, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref, ref_grads = loss_and_grads(packed)
    out, grads = loss_and_grads(static)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    assert int(out.mlm_count) == int(ref.mlm_count) and int(out.sbo_count) == int(ref.sbo_count)
    assert int(out.mlm_correct) == int(ref.mlm_correct)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_padding_on_the_triton_path_matches_too():
    """The varlen kernel with padding sequences and empty ones (interpreter on CPU)."""
    source = batches(batch_size=2, static=False, count=10, seed=3)
    packed = source.make_batch(0, 0)
    static = pad_packed_batch(packed, static_capacity(2, BLOCK + 2))
    torch.manual_seed(0)
    model = SpanBertForPreTraining(tiny_config(vocab_size=VOCAB, hidden_size=32, num_attention_heads=1,
                                               intermediate_size=64, max_position_embeddings=64))
    model = model.to(DEVICE).set_backend("triton").eval()
    losses = [model(**move_batch(b, DEVICE)).loss for b in (packed, static)]
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)


def test_overflow_and_bad_settings_are_clear_errors():
    packed = batches(batch_size=3, static=False).make_batch(0, 0)
    with pytest.raises(ValueError, match="capacity"):
        pad_packed_batch(packed, static_capacity(1, BLOCK + 2))
    with pytest.raises(ValueError, match="longer than"):
        pad_packed_batch(packed, static_capacity(3, 8))
    with pytest.raises(ValueError, match="packed=True"):
        PretrainingBatches(Blocks(10), batch_size=2, static_shapes=True)


def test_cuda_graphs_refuse_what_they_cannot_capture(tmp_path):
    model = SpanBertForPreTraining(tiny_config())
    cpu = TrainingArgs(out_dir=str(tmp_path), max_steps=2, device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="CUDA device"):
        Trainer(model, [], cpu)
    both = TrainingArgs(out_dir=str(tmp_path), max_steps=2, device="cpu", cuda_graphs=True, compile=True,
                        grad_accum=2)
    with pytest.raises(ValueError, match="not both.*grad_accum=2"):
        Trainer(model, [], both)


@pytest.mark.gpu
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_captured_step_trains_like_the_eager_step(tmp_path, dropout):
    """Without dropout the graph replays give the eager run's losses and parameters; with
    dropout (fresh masks on every replay) training still runs and the loss falls."""
    source = batches(batch_size=4, count=40)
    config = tiny_config(vocab_size=VOCAB, hidden_size=64, num_attention_heads=2, intermediate_size=128,
                         max_position_embeddings=64, hidden_dropout_prob=dropout,
                         attention_probs_dropout_prob=dropout)
    runs = {}
    for graphs in (False, True):
        torch.manual_seed(0)
        model = SpanBertForPreTraining(config, backend="triton", validate_targets=False)
        args = TrainingArgs(out_dir=str(tmp_path / str(graphs)), max_steps=8, lr=1e-3, warmup_steps=2,
                            precision="fp32", progress=False, plot=False, log_every=1, cuda_graphs=graphs,
                            device="cuda")
        trainer = Trainer(model, iter([source.make_batch(0, i % source.steps_per_epoch) for i in range(8)]), args)
        result = trainer.train()
        runs[graphs] = (model, [float(row["loss"]) for row in result.history])
    (eager, eager_losses), (graphed, graph_losses) = runs[False], runs[True]
    assert all(np.isfinite(graph_losses)) and graph_losses[-1] < graph_losses[0]
    if dropout == 0.0:
        np.testing.assert_allclose(graph_losses, eager_losses, rtol=1e-4, atol=1e-5)
        for (name, p), q in zip(eager.named_parameters(), graphed.parameters()):
            torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.gpu
def test_captured_training_resumes_from_a_checkpoint(tmp_path):
    """--resume across --cuda-graphs on and off: the optimizer takes this run's settings (a
    checkpoint keeps capturable and lr as saved; a CPU or float lr, or capturable off, cannot be
    captured) and training goes on, with numbers in the log."""
    source = batches(batch_size=4, count=40)
    config = tiny_config(vocab_size=VOCAB, hidden_size=64, num_attention_heads=2, intermediate_size=128,
                         max_position_embeddings=64)

    def run(max_steps, graphs, resume):
        torch.manual_seed(0)
        model = SpanBertForPreTraining(config, backend="triton", validate_targets=False)
        args = TrainingArgs(out_dir=str(tmp_path), max_steps=max_steps, lr=1e-3, precision="bf16", progress=False,
                            plot=False, log_every=1, save_every=5, cuda_graphs=graphs, resume=resume, device="cuda")
        return Trainer(model, source, args).train()

    run(5, graphs=False, resume=False)
    run(10, graphs=True, resume=True)
    result = run(15, graphs=False, resume=True)
    assert result.step == 15
    assert all(isinstance(row["lr"], float) and np.isfinite(float(row["loss"])) for row in result.history[-5:])


def test_padding_fractions_by_layout():
    from spanbert_fast.data.static_shapes import padding_fractions

    full = padding_fractions(np.full(50, 60), block_size=60, batch_size=4)
    assert full == {"padded": 0.0, "packed": 0.0, "fixed": 0.0}
    # half the blocks full, half of 28 tokens (30 with [CLS]/[SEP]): fixed shapes pad 1/4 on average
    mixed = padding_fractions(np.array([60, 28] * 50), block_size=60, batch_size=4, samples=4000)
    assert abs(mixed["fixed"] - 0.25) < 0.02
    assert 0.0 < mixed["padded"] <= mixed["fixed"] + 1e-9  # padding to the longest row never pads more
    with pytest.raises(ValueError, match="fewer than one batch"):
        padding_fractions(np.full(3, 10), block_size=60, batch_size=4)
