"""fp32 inputs (parity tests) are autotuned over one small config; 16-bit ones over the list."""
import torch
import triton

from spanbert_fast.kernels._autotune import fp32_tunes_one_config


def test_fp32_gets_the_one_config_and_16_bit_the_whole_list():
    one = triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2)
    many = [triton.Config({"BLOCK_M": 128, "BLOCK_N": n}, num_warps=8, num_stages=3) for n in (64, 128)]
    prune = fp32_tunes_one_config(one, "Q")["early_config_prune"]
    assert prune(many, {"Q": torch.zeros(2, dtype=torch.float32)}) == [one]
    assert prune(many, {"Q": torch.zeros(2, dtype=torch.bfloat16)}) == many
    assert prune(many, {"K": torch.zeros(2)}) == many  # no such argument: nothing pruned


def test_attention_kernels_prune_with_it():
    from spanbert_fast.kernels import attention

    for kernel, rule in ((attention._attention_fwd_kernel, attention.FP32_FWD),
                         (attention._attention_bwd_dkdv_kernel, attention.FP32_BWD_DKDV),
                         (attention._attention_bwd_dq_kernel, attention.FP32_BWD_DQ)):
        assert kernel.early_config_prune is rule["early_config_prune"]


def test_row_kernels_with_dropout_keep_the_configs_where_philox_pays():
    """The norm-dropout kernels keep, with dropout, the configs holding 1-2 Philox calls' worth of
    elements a thread with >= 8 warps (static sm_90 counts: the rest cost > 1.3x p = 0); without
    dropout, and for kernels without Philox, the general rule alone."""
    import triton

    from spanbert_fast.kernels._layernorm_common import row_autotune

    configs = [triton.Config({"BLOCK_ROWS": rows}, num_warps=warps)
               for rows in (1, 2, 4, 8, 16) for warps in (2, 4, 8, 16, 32)]
    with_philox = row_autotune(registers_per_element=6, philox_columns=8)["prune_configs_by"]["early_config_prune"]
    general = row_autotune(registers_per_element=6)["prune_configs_by"]["early_config_prune"]

    def per_thread(c):
        return c.kwargs["BLOCK_ROWS"] * 1024 / (32 * c.num_warps)

    kept = with_philox(configs, {}, BLOCK_D=1024, HAS_DROPOUT=True)
    assert kept and all(8 <= per_thread(c) <= 16 and c.num_warps >= 8 for c in kept)
    assert {(c.kwargs["BLOCK_ROWS"], c.num_warps) for c in kept} >= {(2, 8), (4, 8), (4, 16)}
    assert with_philox(configs, {}, BLOCK_D=1024, HAS_DROPOUT=False) == general(configs, {}, BLOCK_D=1024)
    assert general(configs, {}, BLOCK_D=1024, HAS_DROPOUT=True) == general(configs, {}, BLOCK_D=1024)
    assert any(per_thread(c) == 4 for c in general(configs, {}, BLOCK_D=1024))  # the general rule keeps them
    # when no config fits the dropout rule (a 64-column row: 16 rows x 64 / 256 threads = 4), the general one decides
    assert with_philox(configs, {}, BLOCK_D=64, HAS_DROPOUT=True) == general(configs, {}, BLOCK_D=64)
