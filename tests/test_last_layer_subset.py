"""``config.last_layer_subset``: the last layer ends only at the rows the heads read.

Every test compares against the same model with the switch off (the full last layer), same
weights, dropout off, fp32: the loss, the counts and every parameter gradient must agree
(``FP32_TOL``; only the summation order of the weight gradients differs). Batches: the
hand-made ``tiny_batch`` (repeated SBO boundaries) without its ``head_rows`` key (the model
computes it), a collated span-masked batch whose first row is padded (so padded flat rows and
unpadded tokens differ), and both in ``pack_batch``'s packed form (which has ``head_rows``).
"""
import json

import numpy as np
import pytest
import torch

from helpers import DEVICE, assert_close_fp32
from model_fixtures import tiny_batch, tiny_config
from spanbert_fast import SpanBertForPreTraining
from spanbert_fast.data import SpanMasker, SpecialIds
from spanbert_fast.data.collate import collate_masked_blocks, pack_batch

SPECIALS = SpecialIds(pad=0, unk=4, cls=1, sep=2, mask=3)
VOCAB = 97  # tiny_config's


def kernel_ready_config(**overrides):
    return tiny_config(hidden_size=64, num_attention_heads=2, intermediate_size=128, **overrides)  # head dim 32


def collated_batch(lengths=(9, 30, 17), seed=0):
    """Span-masked blocks through the real collator; the first row is the shortest (padded)."""
    rng = np.random.default_rng(seed)
    masker = SpanMasker(SPECIALS, VOCAB, seed=seed)
    blocks = [masker(rng.integers(5, VOCAB, size=n), rng.random(n) < 0.7, epoch=0, index=i)
              for i, n in enumerate(lengths)]
    return collate_masked_blocks(blocks, SPECIALS)


def without_head_rows(batch):
    return {k: v for k, v in batch.items() if k != "head_rows"}


def make_batch(kind):
    batch = collated_batch() if kind.startswith("collated") else without_head_rows(tiny_batch())
    return pack_batch(batch) if kind.endswith("packed") else batch


BATCH_KINDS = ["handmade-padded", "handmade-packed", "collated-padded", "collated-packed"]


def to_device(batch):
    return {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in batch.items()}


def run(model, batch, subset: bool):
    """(output, {name: grad}) of one forward + backward with the switch set to ``subset``."""
    model.config.last_layer_subset = subset
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_same_training_signal(subset, full, subset_grads, full_grads):
    for field in ("loss", "mlm_loss", "sbo_loss"):
        assert_close_fp32(getattr(subset, field), getattr(full, field), name=field)
    for field in ("mlm_correct", "sbo_correct", "mlm_count", "sbo_count"):
        assert torch.equal(getattr(subset, field), getattr(full, field)), field
    assert subset_grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        assert_close_fp32(subset_grads[name], grad, name=name)


def backend_model(backend):
    if backend == "triton":
        pytest.importorskip("triton")
        return SpanBertForPreTraining(kernel_ready_config()).to(DEVICE).set_backend("triton").eval()
    return SpanBertForPreTraining(tiny_config()).set_backend("torch").eval()


def randomise(model):
    """Non-trivial biases and norms, so that a wrong row anywhere changes the result."""
    torch.manual_seed(1)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("kind", BATCH_KINDS)
def test_loss_counts_and_every_grad_equal_the_full_last_layer(backend, kind):
    model = randomise(backend_model(backend))
    batch = make_batch(kind)
    if backend == "triton":
        batch = to_device(batch)
    subset, subset_grads = run(model, batch, subset=True)
    full, full_grads = run(model, batch, subset=False)
    assert_same_training_signal(subset, full, subset_grads, full_grads)
    # The subset output holds the final states at head_rows, which index the batch's rows.
    head_rows = torch.unique(torch.cat([batch["mlm_positions"], batch["sbo_left"], batch["sbo_right"]]))
    assert torch.equal(subset.head_rows, head_rows) and full.head_rows is None
    assert_close_fp32(subset.last_hidden_state, full.last_hidden_state.flatten(0, -2)[head_rows], name="states")


def test_last_layer_runs_past_attention_only_at_head_rows():
    """The feed-forward of the last layer sees R rows; every other layer sees all B*L."""
    model = SpanBertForPreTraining(tiny_config()).eval()
    batch = collated_batch()
    seen = [[] for _ in model.bert.encoder.layer]
    for layer, rows in zip(model.bert.encoder.layer, seen):
        layer.intermediate.register_forward_hook(lambda m, args, out, rows=rows: rows.append(args[0].shape))
    model(**batch)
    head_rows = batch["head_rows"].numel()
    assert seen[-1] == [torch.Size([head_rows, 32])]
    assert all(shapes == [torch.Size([*batch["input_ids"].shape, 32])] for shapes in seen[:-1])
    assert head_rows < batch["attention_mask"].sum() / 2


def test_duplicated_positions_and_padded_head_rows():
    """A row read by several heads (an MLM position that is also a boundary, repeated
    positions), and ``head_rows`` padded to a fixed capacity by repeating its last row."""
    model = randomise(SpanBertForPreTraining(tiny_config()).eval())
    batch = without_head_rows(tiny_batch())
    batch["mlm_positions"] = torch.tensor([3, 4, 4, 6, 12])
    batch["mlm_labels"] = torch.tensor([7, 8, 8, 9, 10])
    full, full_grads = run(model, batch, subset=False)
    subset, subset_grads = run(model, batch, subset=True)  # head_rows from torch.unique in the model
    assert_same_training_signal(subset, full, subset_grads, full_grads)
    unique = torch.tensor([2, 3, 4, 6, 11, 12, 13])
    assert torch.equal(subset.head_rows, unique)
    capacity = torch.cat([unique, unique[-1:].expand(5)])  # static shape: 12 rows, sorted, repeats
    padded, padded_grads = run(model, dict(batch, head_rows=capacity), subset=True)
    assert padded.last_hidden_state.shape == (12, 32)
    assert_same_training_signal(padded, full, padded_grads, full_grads)


@pytest.mark.parametrize("row", [0, -1], ids=["first-row", "last-row"])
def test_ignored_targets_may_point_outside_head_rows(row):
    """Fixed-capacity padding of the targets (label -100 at a row no head reads, before the
    first or after the last head row) is accepted by the check and changes nothing."""
    model = randomise(SpanBertForPreTraining(tiny_config()).eval())
    batch = collated_batch()
    row = row % batch["input_ids"].numel()
    assert row not in batch["head_rows"]
    pad = lambda t, value: torch.cat([t, t.new_full((3,), value)])  # noqa: E731
    padded = dict(batch, mlm_positions=pad(batch["mlm_positions"], row), mlm_labels=pad(batch["mlm_labels"], -100),
                  sbo_left=pad(batch["sbo_left"], row), sbo_right=pad(batch["sbo_right"], row),
                  sbo_rel_pos=pad(batch["sbo_rel_pos"], 0), sbo_labels=pad(batch["sbo_labels"], -100))
    full, full_grads = run(model, batch, subset=False)
    subset, subset_grads = run(model, padded, subset=True)
    assert_same_training_signal(subset, full, subset_grads, full_grads)


def test_train_mode_without_dropout_equals_the_full_last_layer():
    model = randomise(SpanBertForPreTraining(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)))
    model.train()
    batch = collated_batch()
    subset, subset_grads = run(model, batch, subset=True)
    full, full_grads = run(model, batch, subset=False)
    assert_same_training_signal(subset, full, subset_grads, full_grads)


def test_switch_off_gives_the_full_final_states():
    model = SpanBertForPreTraining(tiny_config(last_layer_subset=False)).eval()
    batch = collated_batch()
    out = model(**batch)
    assert out.head_rows is None
    assert out.last_hidden_state.shape == (*batch["input_ids"].shape, 32)
    expected = model.bert(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    torch.testing.assert_close(out.last_hidden_state, expected, atol=0, rtol=0)


def test_bare_encoder_stays_full_unless_asked():
    model = SpanBertForPreTraining(tiny_config()).eval()
    batch = collated_batch()
    full = model.bert(batch["input_ids"], batch["attention_mask"], output_hidden_states=True)
    assert full.last_hidden_state.shape == (*batch["input_ids"].shape, 32)
    rows = batch["head_rows"]
    subset = model.bert(batch["input_ids"], batch["attention_mask"], output_hidden_states=True,
                        head_rows=rows)
    assert_close_fp32(subset.last_hidden_state, full.last_hidden_state.flatten(0, 1)[rows], name="last")
    assert len(subset.hidden_states) == len(full.hidden_states)
    assert subset.hidden_states[-1] is subset.last_hidden_state
    for mine, theirs in zip(subset.hidden_states[:-1], full.hidden_states[:-1]):
        torch.testing.assert_close(mine, theirs, atol=0, rtol=0)


@pytest.mark.parametrize("head_rows, name", [
    (lambda rows: rows[1:], "mlm_positions|sbo_left|sbo_right"),  # misses a head row
    (lambda rows: rows.flip(0), "mlm_positions"),  # not sorted
    (lambda rows: rows[:0], "mlm_positions"),  # empty
])
def test_a_wrong_head_rows_key_is_refused(head_rows, name):
    model = SpanBertForPreTraining(tiny_config()).eval()
    batch = collated_batch()
    with pytest.raises(ValueError, match=f"head_rows must be sorted and contain every index of ({name})"):
        model(**dict(batch, head_rows=head_rows(batch["head_rows"])))


def test_config_switch_is_saved_and_defaults_on(tmp_path):
    assert tiny_config().last_layer_subset is True
    SpanBertForPreTraining(tiny_config(last_layer_subset=False)).save_pretrained(str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["last_layer_subset"] is False
    assert SpanBertForPreTraining.from_pretrained(str(tmp_path)).config.last_layer_subset is False
    on = SpanBertForPreTraining.from_pretrained(str(tmp_path), last_layer_subset=True)
    assert on.config.last_layer_subset is True


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_train_mode_with_dropout_trains_every_parameter(backend):
    """With dropout the two paths draw different masks, so only the sanity of the step is checked."""
    model = backend_model(backend).train()
    batch = make_batch("collated-padded")
    if backend == "triton":
        batch = to_device(batch)
    out, grads = run(model, batch, subset=True)
    assert torch.isfinite(out.loss)
    assert out.last_hidden_state.shape == (batch["head_rows"].numel(), model.config.hidden_size)
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_ignored_targets_at_padding_rows_on_the_triton_path():
    """Ignored targets (label -100) may point anywhere, padding included: on the Triton path the
    padded row maps onto a neighbouring real token instead of past the packed tokens."""
    model = randomise(SpanBertForPreTraining(kernel_ready_config()).set_backend("triton").eval())
    batch = without_head_rows(collated_batch())  # the model takes head_rows from every index
    row = batch["input_ids"].numel() - 1  # a padding position of the last row
    assert batch["attention_mask"].flatten()[row] == 0
    pad = lambda t, v: torch.cat([t, t.new_full((3,), v)])  # noqa: E731
    batch = dict(batch, mlm_positions=pad(batch["mlm_positions"], row), mlm_labels=pad(batch["mlm_labels"], -100))
    full, _ = run(model, batch, False)
    subset, _ = run(model, batch, True)
    torch.testing.assert_close(subset.loss, full.loss, atol=1e-5, rtol=1e-5)
