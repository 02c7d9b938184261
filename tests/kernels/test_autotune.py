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
