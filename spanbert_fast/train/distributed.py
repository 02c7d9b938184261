"""The training process: its rank and device under ``torchrun``, seeds, and batches on the device."""
from __future__ import annotations

import dataclasses
import os
import random
from typing import Dict, Optional

import numpy as np
import torch
import torch.distributed as dist


@dataclasses.dataclass
class DistributedContext:
    """Rank, world size and device; ``world_size == 1`` outside torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def check_device(device: Optional[str]) -> None:
    """Raise ValueError naming ``--device`` unless ``device`` is None, ``cpu``, or a CUDA device
    this machine has (``cuda``, ``cuda:N``)."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device (--device) must be cpu, cuda or cuda:N, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device (--device) is {device!r} but no CUDA GPU is available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device (--device) is {device!r} but this machine has "
                             f"{torch.cuda.device_count()} GPU(s)")


def init_distributed(device: Optional[str] = None) -> DistributedContext:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (NCCL on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    check_device(device)
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)  # "cuda" means this rank's GPU
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def move_batch(batch: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, object]:
    """The batch's tensors on ``device``; other values (``max_seqlen``) as they are.

    Copies to a GPU go through pinned memory: a copy from pageable memory first waits for the
    GPU to finish its queued work, which would stall the CPU once per step; from pinned
    memory it is queued like a kernel and the CPU runs ahead.
    """
    pin = torch.device(device).type == "cuda"

    def move(t: torch.Tensor) -> torch.Tensor:
        if pin and t.device.type == "cpu":
            t = t.pin_memory()
        return t.to(device, non_blocking=True)

    return {k: move(v) if torch.is_tensor(v) else v for k, v in batch.items()}
