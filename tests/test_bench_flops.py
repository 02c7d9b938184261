"""The useful-FLOP and MFU formulas of benchmarks/flops.py against hand-computed numbers."""

import pytest

from benchmarks import flops as F

# BERT-base, by hand: q, k, v, o with biases 4 * (768^2 + 768) = 2_362_368; the feed-forward
# pair 2 * 768 * 3072 + 3072 + 768 = 4_722_432; two LayerNorms 4 * 768 = 3_072.
BASE_PER_LAYER = 2_362_368 + 4_722_432 + 3_072  # = 7_087_872
BASE_N_NONEMBEDDING = 12 * BASE_PER_LAYER  # = 85_054_464, the "about 85M" of BERT-base


def test_encoder_parameters_bert_base_by_hand():
    assert BASE_PER_LAYER == 7_087_872
    assert F.encoder_parameters(768, 12, 3072) == BASE_N_NONEMBEDDING == 85_054_464


def test_encoder_parameters_match_the_model_encoder():
    from spanbert_fast import SpanBertConfig, SpanBertModel

    config = SpanBertConfig(vocab_size=50, hidden_size=24, num_hidden_layers=3, num_attention_heads=2,
                            intermediate_size=40, max_position_embeddings=16)
    encoder = SpanBertModel(config).encoder
    assert F.encoder_parameters(24, 3, 40) == sum(p.numel() for p in encoder.parameters())


def test_train_step_flops_bert_base_b32_s512():
    # 16384 tokens x (6 N + 12 L S d) + 6 x 2458 masked x d x V, each term by hand:
    per_token = 6 * 85_054_464 + 12 * 12 * 512 * 768  # 510_326_784 + 56_623_104
    assert per_token == 566_949_888
    encoder = 16_384 * 566_949_888  # = 9_288_906_964_992
    mlm = 6 * 2458 * 768 * 28996  # = 328_422_150_144
    assert encoder == 9_288_906_964_992 and mlm == 328_422_150_144
    flops = F.train_step_flops([512] * 32, 768, 12, 3072, 28996, n_masked=2458)
    assert flops == encoder + mlm == 9_617_329_115_136


def test_useful_tflops_reproduce_the_reference_hf_rows():
    # Reference run (one H100, 2026-11-22): HF BertForMaskedLM + SDPA, B32 x S512: base 56.6 ms -> 169.8 TFLOP/s,
    # large 132.7 ms -> 245.6 TFLOP/s (15 % of 16384 tokens masked).
    base = F.tflops(F.train_step_flops([512] * 32, 768, 12, 3072, 28996, 2458), 56.6)
    large = F.tflops(F.train_step_flops([512] * 32, 1024, 24, 4096, 28996, 2458), 132.7)
    assert base == pytest.approx(169.8, rel=2e-3)
    assert large == pytest.approx(245.6, rel=2e-3)


def test_padding_counts_real_tokens_only():
    # d = 2, one layer, ff = 4: N = 4 * (4 + 2) + (16 + 4 + 2) + 8 = 54.
    assert F.encoder_parameters(2, 1, 4) == 54
    # lengths 3 and 5: 6 * 54 * 8 tokens + 12 * 1 * 2 * (9 + 25) pairs.
    assert F.encoder_flops([3, 5], 2, 1, 4) == 6 * 54 * 8 + 12 * 2 * 34 == 3408
    assert F.encoder_flops([5, 3], 2, 1, 4) == F.encoder_flops([3, 5], 2, 1, 4)
    assert F.encoder_flops([4, 4], 2, 1, 4) != F.encoder_flops([3, 5], 2, 1, 4)  # S^2 term


def test_head_flops_by_hand():
    assert F.mlm_head_flops(10, 4, 7) == 6 * 10 * 28 == 1680
    # SBO: W_1 on [2d + P] = 10 columns (40), W_2 (16), decoder (28) -> 84 per target.
    assert F.sbo_head_flops(10, 4, 7, 2) == 6 * 10 * 84 == 5040
    with_sbo = F.train_step_flops([3, 5], 2, 1, 4, 7, n_masked=3, n_sbo_targets=2, sbo_position_size=1)
    assert with_sbo == 3408 + 6 * 3 * 2 * 7 + 6 * 2 * ((4 + 1) * 2 + 4 + 2 * 7)


def test_matmul_tflops_and_mfu():
    assert F.matmul_flops(8192, 8192, 8192) == 2 * 8192**3 == 1_099_511_627_776
    assert F.tflops(2e12, 1000.0) == pytest.approx(2.0)  # 2e12 FLOPs in one second
    assert F.tflops(F.matmul_flops(8192, 8192, 8192), 1.5345) == pytest.approx(716.5, rel=1e-3)
    assert F.mfu_percent(358.25, 716.5) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="peak_tflops"):
        F.mfu_percent(1.0, 0.0)
