"""SpanBERT span masking and span-boundary (SBO) targets, as the paper and its reference code do them.

For one block of ``n`` tokens (without [CLS]/[SEP]):

1. Budget: ``ceil(0.15 · n)`` tokens, computed exactly (the float product ``100 * 0.15`` is
   ``15.000000000000002``; we round it to 9 decimals first), capped at the number of maskable
   tokens. [CLS], [SEP] and [PAD] are never masked; [UNK] is an ordinary token
   here, as in the reference code, so it neither blocks nor splits a span.
2. Spans are drawn until the budget is met: a length ℓ in WORDS from ``P(ℓ) ∝ p·(1-p)^(ℓ-1)``,
   ℓ = 1..10, p = 0.2, renormalised (mean ≈ 3.8 words); an anchor uniform over the block's
   positions (redrawn, together with ℓ, when it is already masked or special); the anchor moves
   back to the start of its word and the span covers ℓ whole words from there (fewer at the end of
   the block). A word is a token plus its following ``##`` pieces; position 0 always counts as a
   word start (a block cut inside a long sentence may begin with a ``##`` piece). Tokens already
   masked do not count again; the span that reaches the budget is cut there, so exactly
   ``budget`` tokens are masked (the last span may end mid-word).
3. Merging: masked tokens form maximal runs; overlapping and adjacent spans therefore merge into
   one span, exactly like the reference ``merge_intervals``.
4. Replacement is decided per merged span (``replacement="span"``, the default): with prob. 0.8
   every token becomes [MASK], 0.1 every token becomes an independent random token (uniform over
   non-special ids, or from corpus unigram counts if given), 0.1 the tokens are kept.
   ``replacement="token"`` decides per token instead (BERT style).
5. SBO targets: for each merged span [s, e] with ``s > 0`` and ``e < n - 1`` (a span touching the
   first or last token would have [CLS]/[SEP] as a boundary and gets no SBO target, as in the
   reference code, but stays an MLM target), its first ``min(e - s + 1, 15)`` tokens are targets
   with boundaries ``s - 1`` and ``e + 1``. The relative position counts from the MERGED span's
   start (0..14): after merging, the model sees one span between two unmasked boundaries, so the
   position is measured from the boundary it actually sees.

Schemes (the paper's Table 6 ablation): ``"span"`` as above; ``"word"`` whole-word masking
(ℓ = 1 word); ``"subword"`` random single subwords (every token counts as a word, ℓ = 1).
Merging, replacement and SBO rules are the same for all three.

Randomness: :meth:`SpanMasker.mask` draws from ``np.random.Generator(PCG64([seed, epoch, index]))``,
so a block's mask depends only on (seed, epoch, block index): reproducible, independent of
worker/rank layout, and fresh every epoch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .tokenizer import SpecialIds

MASKING_SCHEMES = ("span", "word", "subword")
REPLACEMENT_MODES = ("span", "token")
# replacement kinds, per merged span (or per token)
REPLACE_MASK, REPLACE_RANDOM, REPLACE_KEEP = 0, 1, 2


def span_length_probabilities(max_words: int = 10, geometric_p: float = 0.2) -> np.ndarray:
    """P(ℓ) for ℓ = 1..max_words: ``p·(1-p)^(ℓ-1)`` renormalised (index 0 holds ℓ = 1)."""
    if isinstance(max_words, bool) or not isinstance(max_words, (int, np.integer)) or max_words < 1:
        raise ValueError(f"max_span_words must be an integer >= 1, got {max_words!r}")
    if not 0.0 < geometric_p <= 1.0:  # p = 0 gives 0/0 probabilities; p > 1 negative ones
        raise ValueError(f"geometric_p must be in (0, 1], got {geometric_p!r}")
    lengths = np.arange(1, max_words + 1)
    weights = geometric_p * (1.0 - geometric_p) ** (lengths - 1)
    return weights / weights.sum()


def mask_budget(n_tokens: int, mask_ratio: float = 0.15) -> int:
    """``ceil(mask_ratio · n_tokens)`` without float noise (ceil(0.15·100) is 15, not 16)."""
    return int(math.ceil(round(n_tokens * mask_ratio, 9)))


def masked_runs(masked: np.ndarray):
    """Merged spans of a bool mask: (starts, inclusive ends) of its maximal runs of True.

    Overlapping and adjacent spans therefore come out as one span (the reference's
    ``merge_intervals`` merges ``[a, b]`` and ``[b + 1, c]`` too).
    """
    edges = np.diff(np.concatenate(([0], np.asarray(masked, dtype=np.int8), [0])))
    starts = np.flatnonzero(edges == 1).astype(np.int64)
    ends = (np.flatnonzero(edges == -1) - 1).astype(np.int64)
    return starts, ends


def span_boundary_targets(starts: np.ndarray, ends: np.ndarray, n_tokens: int, max_targets: int = 15):
    """SBO targets of merged spans [starts[i], ends[i]] in a block of ``n_tokens`` tokens.

    Spans with ``start == 0`` or ``end == n_tokens - 1`` get none; every other span gives its first
    ``min(length, max_targets)`` tokens. Returns int64 arrays (positions, left, right, rel_pos):
    target position, ``start - 1``, ``end + 1`` and ``position - start``, span after span.
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    inside = np.flatnonzero((starts > 0) & (ends < n_tokens - 1))
    per_span = np.minimum(ends[inside] - starts[inside] + 1, max_targets)
    span_of_target = np.repeat(inside, per_span)
    first_target = np.repeat(np.cumsum(per_span) - per_span, per_span)
    rel_pos = np.arange(span_of_target.size, dtype=np.int64) - first_target
    return (starts[span_of_target] + rel_pos, starts[span_of_target] - 1, ends[span_of_target] + 1, rel_pos)


@dataclass
class MaskedBlock:
    """One block after masking. All positions index the block (0..n-1, no [CLS]); the collator
    shifts them by one for [CLS] and flattens them into the batch grid."""

    input_ids: np.ndarray  # [n] int64, replacements applied
    original_ids: np.ndarray  # [n] int64
    masked_positions: np.ndarray  # [m] int64, ascending
    span_starts: np.ndarray  # [S] int64, merged spans, ascending
    span_ends: np.ndarray  # [S] int64, inclusive
    span_replacement: np.ndarray  # [S] int8: REPLACE_MASK / _RANDOM / _KEEP (-1 with replacement="token")
    sbo_positions: np.ndarray  # [K] int64, target positions
    sbo_left: np.ndarray  # [K] int64, s - 1 of the target's span
    sbo_right: np.ndarray  # [K] int64, e + 1 of the target's span
    sbo_rel_pos: np.ndarray  # [K] int64, 0..max_sbo_targets-1
    drawn_spans: np.ndarray  # [R, 2] int64, spans as drawn (before merging), inclusive; diagnostics

    @property
    def mlm_labels(self) -> np.ndarray:
        """Original ids at ``masked_positions``."""
        return self.original_ids[self.masked_positions]

    @property
    def sbo_labels(self) -> np.ndarray:
        """Original ids at ``sbo_positions``."""
        return self.original_ids[self.sbo_positions]


class SpanMasker:
    """Draws SpanBERT masks for blocks; configuration fixed at construction (see module docstring).

    Args:
        special_ids: ids never masked and never drawn as random replacements.
        vocab_size: number of ids; random replacements are drawn from ``range(vocab_size)``.
        scheme: ``"span"`` | ``"word"`` | ``"subword"``.
        mask_ratio: share of a block's tokens to mask (0.15).
        max_span_words, geometric_p: the span-length law (10 words, p = 0.2).
        max_sbo_targets: SBO targets per span (the first 15 tokens).
        mask_prob, random_prob: replacement shares (0.8 [MASK], 0.1 random, rest kept).
        replacement: ``"span"`` (decide per merged span) or ``"token"``.
        unigram_counts: optional [vocab_size] counts; random tokens are then drawn ∝ counts
            (special ids excluded); otherwise uniformly over non-special ids.
        seed: base seed of :meth:`generator`.
    """

    def __init__(
        self,
        special_ids: SpecialIds,
        vocab_size: int,
        *,
        scheme: str = "span",
        mask_ratio: float = 0.15,
        max_span_words: int = 10,
        geometric_p: float = 0.2,
        max_sbo_targets: int = 15,
        mask_prob: float = 0.8,
        random_prob: float = 0.1,
        replacement: str = "span",
        unigram_counts: Optional[np.ndarray] = None,
        seed: int = 0,
    ):
        if scheme not in MASKING_SCHEMES:
            raise ValueError(f"scheme must be one of {MASKING_SCHEMES}, got {scheme!r}")
        if replacement not in REPLACEMENT_MODES:
            raise ValueError(f"replacement must be one of {REPLACEMENT_MODES}, got {replacement!r}")
        if not 0.0 < mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1], got {mask_ratio}")
        if mask_prob < 0 or random_prob < 0 or mask_prob + random_prob > 1:
            raise ValueError(f"need mask_prob, random_prob >= 0 and their sum <= 1, got {mask_prob}, {random_prob}")
        if isinstance(max_sbo_targets, bool) or not isinstance(max_sbo_targets, (int, np.integer)) or max_sbo_targets < 1:
            raise ValueError(f"max_sbo_targets must be an integer >= 1, got {max_sbo_targets!r}")
        span_length_probabilities(max_span_words, geometric_p)  # validates both, whatever the scheme
        self.special_ids = special_ids
        self.vocab_size = int(vocab_size)
        self.scheme = scheme
        self.mask_ratio = mask_ratio
        self.max_span_words = max_span_words if scheme == "span" else 1
        self.span_length_probs = span_length_probabilities(self.max_span_words, geometric_p)
        self._span_length_cdf = np.cumsum(self.span_length_probs)
        self.max_sbo_targets = max_sbo_targets
        self.mask_prob = mask_prob
        self.random_prob = random_prob
        self.replacement = replacement
        self.seed = int(seed)

        specials = np.array(sorted(set(special_ids.as_tuple())), dtype=np.int64)
        if specials.max() >= self.vocab_size:
            raise ValueError(f"special ids {special_ids} do not fit vocab_size {vocab_size}")
        self._specials = specials
        self._is_special = np.zeros(self.vocab_size, dtype=bool)  # never drawn as random replacements
        self._is_special[specials] = True
        self._never_masked = np.zeros(self.vocab_size, dtype=bool)  # [CLS], [SEP], [PAD]
        self._never_masked[[special_ids.cls, special_ids.sep, special_ids.pad]] = True
        if unigram_counts is None:
            self._random_ids = np.setdiff1d(np.arange(self.vocab_size, dtype=np.int64), specials)
            self._random_cdf = None
            if self._random_ids.size == 0 and random_prob > 0:
                raise ValueError(f"vocab_size {vocab_size} holds only special ids: no token to draw random "
                                 f"replacements from (a tokenizer trained on too little text?)")
        else:
            counts = np.asarray(unigram_counts, dtype=np.float64).copy()
            if counts.shape != (self.vocab_size,):
                raise ValueError(f"unigram_counts must have shape ({self.vocab_size},), got {counts.shape}")
            counts[specials] = 0.0
            if counts.sum() <= 0:
                raise ValueError("unigram_counts hold no non-special token")
            self._random_ids = None
            self._random_cdf = np.cumsum(counts) / counts.sum()

    # ------------------------------------------------------------------ randomness

    def generator(self, epoch: int, index: int) -> np.random.Generator:
        """The generator for block ``index`` in ``epoch``: PCG64 seeded with [seed, epoch, index]."""
        return np.random.Generator(np.random.PCG64([self.seed, int(epoch), int(index)]))

    def sample_random_tokens(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` replacement ids: uniform over non-special ids, or ∝ unigram counts."""
        if self._random_cdf is None:
            return self._random_ids[rng.integers(0, self._random_ids.size, size=count)]
        draws = np.searchsorted(self._random_cdf, rng.random(count), side="right")
        return np.minimum(draws, self.vocab_size - 1).astype(np.int64)

    def sample_span_words(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` span lengths in words from the clipped geometric law (all 1 unless scheme="span")."""
        draws = np.searchsorted(self._span_length_cdf, rng.random(count), side="right")
        return np.minimum(draws, self.max_span_words - 1) + 1

    # ------------------------------------------------------------------ masking

    def __call__(self, token_ids: np.ndarray, word_starts: np.ndarray, *, epoch: int, index: int) -> MaskedBlock:
        """Mask block ``index`` of ``epoch`` (deterministic in seed, epoch, index)."""
        return self.mask(token_ids, word_starts, self.generator(epoch, index))

    def mask(self, token_ids: np.ndarray, word_starts: np.ndarray, rng: np.random.Generator) -> MaskedBlock:
        """Mask one block with the given generator (rules in the module docstring)."""
        original = np.asarray(token_ids, dtype=np.int64)
        n = original.size
        if np.shape(word_starts) != (n,):
            raise ValueError(f"word_starts must have shape ({n},), got {np.shape(word_starts)}")
        if n and (original.min() < 0 or original.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in 0..{self.vocab_size - 1}")
        maskable = ~self._never_masked[original]
        budget = min(mask_budget(n, self.mask_ratio), int(maskable.sum()))

        masked, drawn = self._draw_spans(maskable, np.asarray(word_starts, dtype=bool), budget, rng)
        positions = np.flatnonzero(masked)

        starts, ends = masked_runs(masked)
        lengths = ends - starts + 1

        # replacement
        if self.replacement == "span":
            span_kind = self._replacement_kinds(rng, starts.size)
            token_kind = np.repeat(span_kind, lengths)
        else:
            span_kind = np.full(starts.size, -1, dtype=np.int8)
            token_kind = self._replacement_kinds(rng, positions.size)
        inputs = original.copy()
        inputs[positions[token_kind == REPLACE_MASK]] = self.special_ids.mask
        random_positions = positions[token_kind == REPLACE_RANDOM]
        inputs[random_positions] = self.sample_random_tokens(rng, random_positions.size)

        sbo_positions, sbo_left, sbo_right, sbo_rel_pos = span_boundary_targets(
            starts, ends, n, self.max_sbo_targets
        )
        return MaskedBlock(
            input_ids=inputs,
            original_ids=original,
            masked_positions=positions.astype(np.int64),
            span_starts=starts,
            span_ends=ends,
            span_replacement=span_kind,
            sbo_positions=sbo_positions,
            sbo_left=sbo_left,
            sbo_right=sbo_right,
            sbo_rel_pos=sbo_rel_pos,
            drawn_spans=np.asarray(drawn, dtype=np.int64).reshape(-1, 2),
        )

    def _replacement_kinds(self, rng: np.random.Generator, count: int) -> np.ndarray:
        draws = rng.random(count)
        kinds = np.full(count, REPLACE_KEEP, dtype=np.int8)
        kinds[draws < self.mask_prob + self.random_prob] = REPLACE_RANDOM
        kinds[draws < self.mask_prob] = REPLACE_MASK
        return kinds

    def _draw_spans(self, maskable: np.ndarray, word_starts: np.ndarray, budget: int, rng: np.random.Generator):
        """Draw spans until exactly ``budget`` tokens are masked; returns (masked bool [n], drawn spans)."""
        n = maskable.size
        masked = np.zeros(n, dtype=bool)
        drawn = []
        if budget <= 0:
            return masked, drawn
        if self.scheme == "subword":
            starts_flags = np.ones(n, dtype=bool)
        else:
            starts_flags = word_starts.copy()
            starts_flags[0] = True
        word_of = np.cumsum(starts_flags) - 1  # word index of every position
        word_bounds = np.append(np.flatnonzero(starts_flags), n)  # start of each word, then n
        n_words = word_bounds.size - 1

        count = 0
        while count < budget:
            # lengths and anchors come in batches (unused draws are dropped); reproducible because
            # the batch size depends only on the block and the budget
            batch = max(8, budget - count)
            span_words = self.sample_span_words(rng, batch).tolist()
            anchors = rng.integers(0, n, size=batch).tolist()
            for words, anchor in zip(span_words, anchors):
                if masked[anchor] or not maskable[anchor]:
                    continue  # as the reference: redraw length and anchor
                word = word_of[anchor]
                start = int(word_bounds[word])
                end = int(word_bounds[min(word + words, n_words)])  # exclusive
                new = maskable[start:end] & ~masked[start:end]
                added = int(np.count_nonzero(new))
                if count + added > budget:  # cut the span where the budget is reached
                    cut = int(np.flatnonzero(new)[budget - count - 1]) + 1
                    end = start + cut
                    new = new[:cut]
                    added = budget - count
                masked[start:end] |= new
                count += added
                drawn.append((start, end - 1))
                if count >= budget:
                    break
        return masked, drawn
