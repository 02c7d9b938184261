"""Autotuning helpers shared by the kernels."""
from __future__ import annotations

import torch
import triton


def fp32_tunes_one_config(config: triton.Config, tensor_arg: str) -> dict:
    """``prune_configs_by`` for :func:`triton.autotune`: fp32 inputs run one small config.

    fp32 is for parity tests and reference runs (training runs bf16). Its ``ieee`` dot
    products compile slowly (tens of seconds per config) and its tiles are twice the bytes,
    so tuning the 16-bit config lists there would cost minutes of compiling on the first call
    of every shape, mostly for configs that do not fit in shared memory.
    """

    def prune(configs, named_args, **kwargs):
        tensor = named_args.get(tensor_arg)
        if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32:
            return [config]
        return configs

    return {"early_config_prune": prune}
