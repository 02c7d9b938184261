"""Collator (padded batch format agreed with the model, packed varlen form) and the resumable,
DDP-sharded batch stream."""
import numpy as np
import pytest
import torch

from spanbert_fast.data.collate import BATCH_KEYS, collate_masked_blocks, pack_batch
from spanbert_fast.data.loader import PretrainingBatches
from spanbert_fast.data.masking import SpanMasker
from spanbert_fast.data.prepare import Block
from spanbert_fast.data.tokenizer import SpecialIds

SPECIALS = SpecialIds(pad=0, unk=100, cls=101, sep=102, mask=103)
VOCAB = 5000


def make_block(rng, n):
    word_starts = rng.random(n) < 0.6
    return Block(rng.integers(200, VOCAB, size=n), word_starts)


class InMemoryBlocks:
    """The parts of BlockDataset the batch stream uses, over blocks held in memory."""

    special_ids = SPECIALS
    vocab_size = VOCAB

    def __init__(self, count, seed=0):
        rng = np.random.default_rng(seed)
        self.blocks = [make_block(rng, int(rng.integers(5, 60))) for _ in range(count)]

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, index):
        return self.blocks[index]

    def unigram_counts(self):
        return np.bincount(np.concatenate([b.token_ids for b in self.blocks]), minlength=VOCAB)


@pytest.fixture
def masked_blocks():
    rng = np.random.default_rng(0)
    masker = SpanMasker(SPECIALS, VOCAB, seed=1)
    blocks = [make_block(rng, n) for n in (37, 12, 60, 1, 25)]
    return [masker(b.token_ids, b.word_starts, epoch=0, index=i) for i, b in enumerate(blocks)]


def test_padded_batch_layout(masked_blocks):
    batch = collate_masked_blocks(masked_blocks, SPECIALS)
    assert set(batch) == set(BATCH_KEYS)
    assert all(v.dtype == torch.int64 for v in batch.values())
    rows, width = batch["input_ids"].shape
    assert (rows, width) == (5, 62)
    for row, block in enumerate(masked_blocks):
        n = block.input_ids.size
        ids = batch["input_ids"][row]
        assert ids[0] == SPECIALS.cls and ids[n + 1] == SPECIALS.sep
        assert ids[1 : n + 1].tolist() == block.input_ids.tolist()
        assert torch.all(ids[n + 2 :] == SPECIALS.pad)
        assert batch["attention_mask"][row].tolist() == [1] * (n + 2) + [0] * (width - n - 2)
    assert collate_masked_blocks(masked_blocks, SPECIALS, pad_to_multiple_of=16)["input_ids"].shape == (5, 64)


def test_flat_indices_point_at_the_original_tokens(masked_blocks):
    batch = collate_masked_blocks(masked_blocks, SPECIALS)
    width = batch["input_ids"].shape[1]
    original = torch.full_like(batch["input_ids"], SPECIALS.pad)
    for row, block in enumerate(masked_blocks):
        original[row, 1 : block.original_ids.size + 1] = torch.from_numpy(block.original_ids)
    flat_original, flat_inputs = original.flatten(), batch["input_ids"].flatten()

    positions = batch["mlm_positions"]
    assert torch.all(positions[1:] > positions[:-1]), "row-major order"
    assert positions.numel() == sum(b.masked_positions.size for b in masked_blocks)
    assert torch.equal(batch["mlm_labels"], flat_original[positions])
    assert not torch.isin(flat_original[positions], torch.tensor(SPECIALS.as_tuple())).any()
    expected_inputs = torch.cat([torch.from_numpy(b.input_ids[b.masked_positions]) for b in masked_blocks])
    assert torch.equal(flat_inputs[positions], expected_inputs)

    assert batch["sbo_labels"].numel() > 0
    assert torch.equal(batch["sbo_left"] // width, batch["sbo_right"] // width), "boundaries in one row"
    targets = batch["sbo_left"] + 1 + batch["sbo_rel_pos"]
    assert torch.equal(batch["sbo_labels"], flat_original[targets])
    assert torch.isin(targets, positions).all()
    assert not torch.isin(batch["sbo_left"], positions).any()
    assert not torch.isin(batch["sbo_right"], positions).any()
    for left, right in zip(batch["sbo_left"].tolist(), batch["sbo_right"].tolist()):
        assert flat_original[left] not in SPECIALS.as_tuple() and flat_original[right] not in SPECIALS.as_tuple()
    assert batch["sbo_rel_pos"].max() < 15


def test_packed_form_maps_every_index(masked_blocks):
    batch = collate_masked_blocks(masked_blocks, SPECIALS)
    packed = pack_batch(batch)
    lengths = [b.input_ids.size + 2 for b in masked_blocks]
    assert packed["cu_seqlens"].dtype == torch.int32
    assert packed["cu_seqlens"].tolist() == np.cumsum([0] + lengths).tolist()
    assert packed["max_seqlen"] == max(lengths)
    flat = batch["input_ids"].flatten()
    assert torch.equal(packed["input_ids"], flat[batch["attention_mask"].flatten().bool()])
    assert torch.equal(packed["input_ids"], flat[packed["unpad_index"]])
    assert packed["position_ids"].tolist() == [p for n in lengths for p in range(n)]
    for key in ("mlm_positions", "sbo_left", "sbo_right"):
        assert torch.equal(packed["input_ids"][packed[key]], flat[batch[key]]), key
    left_padded = dict(batch, attention_mask=batch["attention_mask"].flip(1))
    with pytest.raises(ValueError, match="right padding"):
        pack_batch(left_padded)


def union_of_head_indices(batch):
    return torch.unique(torch.cat([batch["mlm_positions"], batch["sbo_left"], batch["sbo_right"]]))


def test_head_rows_are_the_sorted_union_of_the_head_indices(masked_blocks):
    batch = collate_masked_blocks(masked_blocks, SPECIALS)
    assert torch.equal(batch["head_rows"], union_of_head_indices(batch))
    assert batch["head_rows"].numel() < batch["mlm_positions"].numel() + 2 * batch["sbo_left"].numel()  # shared boundaries
    packed = pack_batch(batch)
    assert torch.equal(packed["head_rows"], union_of_head_indices(packed))
    assert torch.equal(packed["unpad_index"][packed["head_rows"]], batch["head_rows"])  # the same tokens
    without = {k: v for k, v in batch.items() if k != "head_rows"}  # e.g. a hand-made padded batch
    assert torch.equal(pack_batch(without)["head_rows"], packed["head_rows"])


def test_batch_stream_can_yield_packed_batches():
    dataset = InMemoryBlocks(20)
    padded = PretrainingBatches(dataset, batch_size=4, seed=1).make_batch(0, 2)
    packed = PretrainingBatches(dataset, batch_size=4, seed=1, packed=True).make_batch(0, 2)
    expected = pack_batch(padded)
    assert "head_rows" in padded and "head_rows" in packed  # what `spanbert-fast pretrain` feeds the model
    assert packed.keys() == expected.keys() and packed["max_seqlen"] == expected["max_seqlen"]
    for key, value in expected.items():
        if torch.is_tensor(value):
            assert torch.equal(packed[key], value), key


def test_batch_stream_is_deterministic_and_resumes_exactly():
    dataset = InMemoryBlocks(50)
    stream = PretrainingBatches(dataset, batch_size=4, seed=7)
    assert stream.steps_per_epoch == 12
    iterator = iter(stream)
    batches = [next(iterator) for _ in range(30)]  # crosses two epoch boundaries
    assert stream.state_dict()["epoch"] == 2 and stream.state_dict()["step"] == 6

    resumed = PretrainingBatches(dataset, batch_size=4, seed=7)
    resumed.load_state_dict({"epoch": 0, "step": 10, "seed": 7, "global_batch_size": 4, "num_blocks": 50})
    iterator = iter(resumed)
    for expected in batches[10:16]:
        batch = next(iterator)
        assert all(torch.equal(batch[k], expected[k]) for k in BATCH_KEYS)

    epoch0 = np.concatenate([stream.batch_indices(0, s) for s in range(12)])
    epoch1 = np.concatenate([stream.batch_indices(1, s) for s in range(12)])
    assert np.unique(epoch0).size == 48 and not np.array_equal(epoch0, epoch1)
    # the same block is masked afresh in another epoch
    block = int(epoch0[0])
    first = stream.masker(*dataset[block], epoch=0, index=block)
    later = stream.masker(*dataset[block], epoch=1, index=block)
    assert not np.array_equal(first.masked_positions, later.masked_positions)


def test_ranks_get_disjoint_slices_of_the_global_batch():
    dataset = InMemoryBlocks(40)
    single = PretrainingBatches(dataset, batch_size=8, seed=3)
    ranks = [PretrainingBatches(dataset, batch_size=2, seed=3, rank=r, world_size=4) for r in range(4)]
    assert all(r.steps_per_epoch == single.steps_per_epoch == 5 for r in ranks)
    for step in range(5):
        pieces = [r.batch_indices(1, step) for r in ranks]
        np.testing.assert_array_equal(np.concatenate(pieces), single.batch_indices(1, step))
    # each rank's batch equals its slice of the single-process batch (same masks per block)
    whole = single.make_batch(0, 2)
    part = ranks[1].make_batch(0, 2)
    width = whole["input_ids"].shape[1]
    rows = whole["input_ids"][2:4]
    assert torch.equal(part["input_ids"], rows[:, : part["input_ids"].shape[1]])
    assert torch.all(rows[:, part["input_ids"].shape[1] :] == SPECIALS.pad)
    in_rows = (whole["mlm_positions"] // width >= 2) & (whole["mlm_positions"] // width < 4)
    assert torch.equal(part["mlm_labels"], whole["mlm_labels"][in_rows])
    with pytest.raises(ValueError, match="rank 4"):
        PretrainingBatches(dataset, batch_size=2, seed=3, rank=4, world_size=4)


def test_batch_stream_workers_and_checks():
    dataset = InMemoryBlocks(30)
    serial = PretrainingBatches(dataset, batch_size=5, seed=1, masking="word", unigram_replacement=True)
    parallel = PretrainingBatches(dataset, batch_size=5, seed=1, masking="word", unigram_replacement=True,
                                  num_workers=2)
    serial_batches, parallel_batches = iter(serial), iter(parallel)
    for _ in range(3):
        a, b = next(serial_batches), next(parallel_batches)
        assert all(torch.equal(a[k], b[k]) for k in BATCH_KEYS)
    assert parallel.state_dict()["step"] == 3
    assert serial.masker.scheme == "word"
    with pytest.raises(ValueError, match="seed=1"):
        PretrainingBatches(dataset, batch_size=5, seed=2).load_state_dict(serial.state_dict())
    with pytest.raises(ValueError, match="fewer than one global batch"):
        PretrainingBatches(dataset, batch_size=8, world_size=4)
