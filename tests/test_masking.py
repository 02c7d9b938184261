"""Span masking (spanbert_fast.data.masking): span-length law, exact budget, merging, 80/10/10 per span,
specials never masked, SBO targets and their edge rules, determinism, ablation schemes.

Statistical tests use fixed seeds, so they are deterministic; their tolerances are ~4 standard
deviations (or a chi-square p-value of 0.001) so that a correct implementation passes with any seed
and a wrong law (e.g. unclipped, or off by one) fails clearly.
"""
import math

import numpy as np
import pytest

from spanbert_fast.data.masking import (
    REPLACE_KEEP,
    REPLACE_MASK,
    REPLACE_RANDOM,
    SpanMasker,
    mask_budget,
    masked_runs,
    span_boundary_targets,
    span_length_probabilities,
)
from spanbert_fast.data.tokenizer import SpecialIds

BERT_CASED = SpecialIds(pad=0, unk=100, cls=101, sep=102, mask=103)
VOCAB = 28996


def random_block(rng, n, max_word_tokens=3):
    """Token ids outside the special range and word-start flags for words of 1..max_word_tokens."""
    token_ids = rng.integers(1000, VOCAB, size=n)
    word_starts = np.zeros(n, dtype=bool)
    position = 0
    while position < n:
        word_starts[position] = True
        position += int(rng.integers(1, max_word_tokens + 1))
    return token_ids, word_starts


def merge_intervals(intervals):
    """Plain re-statement of the reference merge: sort, merge overlapping or adjacent."""
    merged = []
    for start, end in sorted(map(list, intervals)):
        if merged and merged[-1][1] + 1 >= start:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def test_span_length_law_matches_design():
    probs = span_length_probabilities()
    design = [0.224, 0.179, 0.143, 0.115, 0.092, 0.073, 0.059, 0.047, 0.038, 0.030]
    np.testing.assert_allclose(probs, design, atol=6e-4)
    assert probs.sum() == pytest.approx(1.0)
    assert (np.arange(1, 11) * probs).sum() == pytest.approx(3.80, abs=0.01)


@pytest.mark.parametrize("n", [0, 1, 2, 6, 7, 20, 100, 101, 333, 510])
def test_budget_is_ceil_of_fifteen_percent_exactly(n):
    expected = (15 * n + 99) // 100  # integer ceil(0.15 n)
    assert mask_budget(n) == expected
    masker = SpanMasker(BERT_CASED, VOCAB, seed=3)
    rng = np.random.default_rng(n)
    for index in range(5):
        token_ids, word_starts = random_block(rng, n)
        block = masker(token_ids, word_starts, epoch=0, index=index)
        assert block.masked_positions.size == expected
        assert np.unique(block.masked_positions).size == expected


def test_drawn_span_lengths_follow_clipped_geometric_law():
    masker = SpanMasker(BERT_CASED, VOCAB, seed=11)
    rng = np.random.default_rng(0)
    lengths = []
    for index in range(30):
        n = 20_000
        token_ids, word_starts = random_block(rng, n)
        block = masker(token_ids, word_starts, epoch=0, index=index)
        word_ends = np.append(word_starts[1:], True)  # last token of each word
        for start, end in block.drawn_spans[:-1]:  # the last drawn span may be cut by the budget
            assert word_starts[start], "a span starts at a word start"
            if end == n - 1:
                continue  # ran into the block end: fewer words than drawn
            assert word_ends[end], "an uncut span ends at a word end"
            lengths.append(int(word_starts[start : end + 1].sum()))
    lengths = np.array(lengths)
    assert lengths.size >= 10_000
    observed = np.bincount(lengths, minlength=11)[1:]
    assert observed.sum() == lengths.size, "no span longer than 10 words"
    expected = span_length_probabilities() * lengths.size
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 27.88, f"chi-square {chi2:.1f} over 9 dof (p < 0.001)"
    assert np.all(np.abs(observed - expected) < 4 * np.sqrt(expected))
    assert lengths.mean() == pytest.approx(3.80, abs=0.06)


def test_masked_spans_are_merged_drawn_spans():
    masker = SpanMasker(BERT_CASED, VOCAB, seed=5)
    rng = np.random.default_rng(1)
    adjacent_seen = 0
    for index in range(200):
        token_ids, word_starts = random_block(rng, 300)
        block = masker(token_ids, word_starts, epoch=0, index=index)
        merged = merge_intervals(block.drawn_spans.tolist())
        assert [[s, e] for s, e in zip(block.span_starts, block.span_ends)] == merged
        covered = np.concatenate([np.arange(s, e + 1) for s, e in merged])
        np.testing.assert_array_equal(block.masked_positions, covered)
        # merged spans never touch: there is an unmasked token between any two
        assert np.all(block.span_starts[1:] > block.span_ends[:-1] + 1)
        drawn = sorted(map(tuple, block.drawn_spans.tolist()))
        adjacent_seen += sum(b[0] == a[1] + 1 for a, b in zip(drawn, drawn[1:]))
    assert adjacent_seen > 0, "the sample should contain adjacent drawn spans that had to merge"


def test_masked_runs_merges_overlapping_and_adjacent_spans():
    masked = np.zeros(12, dtype=bool)
    masked[[1, 2]] = True  # span [1, 2]
    masked[[3, 4]] = True  # adjacent span [3, 4] -> one span [1, 4]
    masked[[7, 8, 9]] = True
    masked[[8, 9, 10]] = True  # overlapping -> [7, 10]
    starts, ends = masked_runs(masked)
    assert starts.tolist() == [1, 7] and ends.tolist() == [4, 10]


def test_replacement_is_decided_per_span_with_80_10_10_shares():
    masker = SpanMasker(BERT_CASED, VOCAB, seed=2)
    rng = np.random.default_rng(2)
    kinds = []
    for index in range(120):
        token_ids, word_starts = random_block(rng, 5000)
        block = masker(token_ids, word_starts, epoch=0, index=index)
        for start, end, kind in zip(block.span_starts, block.span_ends, block.span_replacement):
            inputs, originals = block.input_ids[start : end + 1], block.original_ids[start : end + 1]
            if kind == REPLACE_MASK:
                assert np.all(inputs == BERT_CASED.mask)
            elif kind == REPLACE_KEEP:
                np.testing.assert_array_equal(inputs, originals)
            else:
                assert kind == REPLACE_RANDOM
                assert not np.isin(inputs, BERT_CASED.as_tuple()).any()
                assert np.all((inputs >= 0) & (inputs < VOCAB))
            kinds.append(kind)
        unmasked = np.setdiff1d(np.arange(5000), block.masked_positions)
        np.testing.assert_array_equal(block.input_ids[unmasked], block.original_ids[unmasked])
    kinds = np.array(kinds)
    assert kinds.size >= 10_000
    for kind, share in ((REPLACE_MASK, 0.8), (REPLACE_RANDOM, 0.1), (REPLACE_KEEP, 0.1)):
        tolerance = 4 * math.sqrt(share * (1 - share) / kinds.size)
        assert np.mean(kinds == kind) == pytest.approx(share, abs=tolerance)


def test_random_tokens_are_drawn_per_token_within_a_span():
    masker = SpanMasker(BERT_CASED, VOCAB, seed=0, mask_prob=0.0, random_prob=1.0)
    token_ids, word_starts = random_block(np.random.default_rng(3), 510)
    block = masker(token_ids, word_starts, epoch=0, index=0)
    longest = int(np.argmax(block.span_ends - block.span_starts))
    replaced = block.input_ids[block.span_starts[longest] : block.span_ends[longest] + 1]
    assert replaced.size > 1 and np.unique(replaced).size > 1


def test_unigram_replacement_follows_counts():
    counts = np.zeros(VOCAB, dtype=np.int64)
    counts[[BERT_CASED.mask, 5000]] = [10**6, 7]  # a special id must never be drawn
    masker = SpanMasker(BERT_CASED, VOCAB, seed=0, mask_prob=0.0, random_prob=1.0, unigram_counts=counts)
    token_ids, word_starts = random_block(np.random.default_rng(4), 510)
    block = masker(token_ids, word_starts, epoch=0, index=0)
    assert np.all(block.input_ids[block.masked_positions] == 5000)


def test_per_token_replacement_option():
    masker = SpanMasker(BERT_CASED, VOCAB, seed=0, replacement="token")
    rng = np.random.default_rng(5)
    mixed = 0
    for index in range(50):
        token_ids, word_starts = random_block(rng, 510)
        block = masker(token_ids, word_starts, epoch=0, index=index)
        for start, end in zip(block.span_starts, block.span_ends):
            is_mask = block.input_ids[start : end + 1] == BERT_CASED.mask
            mixed += bool(is_mask.any() and not is_mask.all())
    assert mixed > 0


def test_cls_sep_pad_are_never_masked_but_unk_is_ordinary():
    masker = SpanMasker(BERT_CASED, VOCAB, seed=0, mask_ratio=0.5)
    rng = np.random.default_rng(6)
    never = np.array([BERT_CASED.cls, BERT_CASED.sep, BERT_CASED.pad])
    unk_masked = 0
    for index in range(100):
        token_ids, word_starts = random_block(rng, 200)
        special_at = rng.choice(200, size=40, replace=False)
        token_ids[special_at] = rng.choice(never, size=40)
        unk_at = np.setdiff1d(np.arange(200), special_at)[:10]
        token_ids[unk_at] = BERT_CASED.unk
        block = masker(token_ids, word_starts, epoch=0, index=index)
        assert not np.isin(block.original_ids[block.masked_positions], never).any()
        assert block.masked_positions.size == 100  # ceil(0.5 * 200) of 160 maskable tokens
        np.testing.assert_array_equal(block.input_ids[special_at], token_ids[special_at])
        unk_masked += int(np.isin(unk_at, block.masked_positions).sum())
    assert unk_masked > 0  # only [CLS], [SEP], [PAD] are exempt; [UNK] is maskable
    # budget capped by the maskable tokens
    block = masker(np.array([101, 5000, 102, 0]), np.ones(4, dtype=bool), epoch=0, index=0)
    assert block.masked_positions.tolist() == [1]


def test_sbo_targets_on_hand_built_spans():
    # block of 40 tokens; spans: [0, 2] touches the start, [5, 5], [8, 27] (20 tokens), [37, 39] touches the end
    positions, left, right, rel_pos = span_boundary_targets([0, 5, 8, 37], [2, 5, 27, 39], 40)
    assert positions.tolist() == [5] + list(range(8, 23))
    assert left.tolist() == [4] + [7] * 15
    assert right.tolist() == [6] + [28] * 15
    assert rel_pos.tolist() == [0] + list(range(15))
    # a span ending one before the last token still has a boundary inside the block
    positions, left, right, rel_pos = span_boundary_targets([1], [38], 40)
    assert positions.tolist() == list(range(1, 16)) and left.tolist() == [0] * 15 and right.tolist() == [39] * 15


def test_sbo_targets_follow_merged_spans_in_masked_blocks():
    masker = SpanMasker(BERT_CASED, VOCAB, seed=9)
    rng = np.random.default_rng(7)
    edge_spans = long_spans = 0
    for index in range(300):
        n = int(rng.integers(20, 120))
        token_ids, word_starts = random_block(rng, n)
        block = masker(token_ids, word_starts, epoch=0, index=index)
        expected = []
        for start, end in zip(block.span_starts.tolist(), block.span_ends.tolist()):
            if start == 0 or end == n - 1:
                edge_spans += 1
                continue
            long_spans += end - start + 1 > 15
            for rel in range(min(end - start + 1, 15)):
                expected.append((start + rel, start - 1, end + 1, rel))
        got = list(zip(block.sbo_positions.tolist(), block.sbo_left.tolist(),
                       block.sbo_right.tolist(), block.sbo_rel_pos.tolist()))
        assert got == expected
        np.testing.assert_array_equal(block.sbo_labels, token_ids[block.sbo_positions])
        np.testing.assert_array_equal(block.mlm_labels, token_ids[block.masked_positions])
        assert not np.isin(block.sbo_left, block.masked_positions).any()
        assert not np.isin(block.sbo_right, block.masked_positions).any()
    assert edge_spans > 0


def test_sbo_cap_and_whole_block_span():
    masker = SpanMasker(BERT_CASED, VOCAB, seed=0, mask_ratio=1.0)
    token_ids = np.arange(1000, 1030)
    block = masker(token_ids, np.ones(30, dtype=bool), epoch=0, index=0)
    assert block.masked_positions.tolist() == list(range(30))
    assert block.span_starts.tolist() == [0] and block.span_ends.tolist() == [29]
    assert block.sbo_positions.size == 0  # the only span touches both ends: MLM only


def test_masks_are_deterministic_per_seed_epoch_index():
    token_ids, word_starts = random_block(np.random.default_rng(8), 510)
    masker = SpanMasker(BERT_CASED, VOCAB, seed=4)
    first = masker(token_ids, word_starts, epoch=2, index=17)
    again = SpanMasker(BERT_CASED, VOCAB, seed=4)(token_ids, word_starts, epoch=2, index=17)
    np.testing.assert_array_equal(first.input_ids, again.input_ids)
    np.testing.assert_array_equal(first.masked_positions, again.masked_positions)
    other_epoch = masker(token_ids, word_starts, epoch=3, index=17)
    other_index = masker(token_ids, word_starts, epoch=2, index=18)
    other_seed = SpanMasker(BERT_CASED, VOCAB, seed=5)(token_ids, word_starts, epoch=2, index=17)
    for other in (other_epoch, other_index, other_seed):
        assert not np.array_equal(first.masked_positions, other.masked_positions)


@pytest.mark.parametrize("scheme", ["word", "subword"])
def test_ablation_schemes_draw_single_units(scheme):
    masker = SpanMasker(BERT_CASED, VOCAB, seed=1, scheme=scheme)
    rng = np.random.default_rng(9)
    for index in range(50):
        token_ids, word_starts = random_block(rng, 300)
        block = masker(token_ids, word_starts, epoch=0, index=index)
        assert block.masked_positions.size == 45
        for start, end in block.drawn_spans[:-1]:
            if scheme == "subword":
                assert start == end
            else:
                assert word_starts[start] and word_starts[start + 1 : end + 1].sum() == 0
                assert end == 299 or word_starts[end + 1]


def test_block_starting_mid_word_anchors_at_zero():
    masker = SpanMasker(BERT_CASED, VOCAB, seed=0)
    word_starts = np.zeros(40, dtype=bool)  # one long "word" of ## pieces: position 0 counts as its start
    block = masker(np.arange(2000, 2040), word_starts, epoch=0, index=0)
    assert block.drawn_spans.tolist() == [[0, 5]]  # one span from 0, cut at the budget of 6


def test_invalid_configuration_is_rejected():
    with pytest.raises(ValueError, match="scheme"):
        SpanMasker(BERT_CASED, VOCAB, scheme="entity")
    with pytest.raises(ValueError, match="token ids"):
        SpanMasker(BERT_CASED, VOCAB)(np.array([5, VOCAB]), np.ones(2, dtype=bool), epoch=0, index=0)
    with pytest.raises(ValueError, match="word_starts"):
        SpanMasker(BERT_CASED, VOCAB)(np.arange(1000, 1010), np.ones(9, dtype=bool), epoch=0, index=0)


@pytest.mark.parametrize("arguments, name", [
    ({"max_span_words": 0}, "max_span_words"),  # hung: no span length to draw
    ({"max_span_words": 2.5}, "max_span_words"),
    ({"geometric_p": 0.0}, "geometric_p"),  # NaN probabilities
    ({"geometric_p": 1.5}, "geometric_p"),
    ({"max_sbo_targets": 0}, "max_sbo_targets"),
    ({"scheme": "word", "max_span_words": 0}, "max_span_words"),
], ids=["max_span_words=0", "max_span_words=2.5", "geometric_p=0", "geometric_p=1.5", "max_sbo_targets=0",
        "word-scheme-max_span_words=0"])
def test_span_law_arguments_are_validated(arguments, name):
    with pytest.raises(ValueError, match=name):
        SpanMasker(BERT_CASED, VOCAB, **arguments)
    assert np.isfinite(span_length_probabilities(1, 1.0)).all()


def test_vocabulary_of_only_specials_is_rejected_by_name():
    """It failed at the first masked block with numpy's 'high <= 0'."""
    specials = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)
    with pytest.raises(ValueError, match="vocab_size 5 holds only special ids"):
        SpanMasker(specials, 5)
    SpanMasker(specials, 5, random_prob=0.0)  # no random replacement: nothing to draw, allowed
