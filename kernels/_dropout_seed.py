"""The dropout seed of the Triton kernels: a one-element int64 tensor on the kernel's device.

Every kernel with dropout reads its Philox key from memory (``tl.load(SEED)``) instead of
taking it as a scalar argument. That keeps the seed a *tensor* from end to end:

* no host round trip: a fresh seed is ``torch.randint`` on the device, drawn from torch's
  own generator (so ``torch.manual_seed`` makes a run reproducible), never ``.item()``;
* ``torch.compile`` traces the ops without a graph break (a Python int drawn at run time
  would be one);
* a CUDA graph replays with a new mask each time: the seed tensor is written by the
  captured ``randint``, whose Philox offset torch advances on every replay, whereas an int
  would be frozen into the captured launch;
* the backward reads the same tensor (saved for backward), so it regenerates the same mask.

Callers may still pass a Python int (tests, reproducible one-off calls); it becomes a
``torch.full`` on the device, which needs no sync either.
"""
from __future__ import annotations

import operator
from typing import Optional, Union

import torch
import triton
import triton.language as tl

SeedLike = Union[int, torch.Tensor, None]
_SEED_HIGH = 2**62  # fresh seeds are drawn from [0, 2**62)


def is_int(value) -> bool:
    """Python or NumPy integer, not bool (``operator.index`` accepts both kinds)."""
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


@triton.jit
def load_seed(SEED, HAS_DROPOUT: tl.constexpr):
    """In a kernel: the Philox key from ``SEED`` ([1] int64), read only when it drops anything."""
    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(SEED)
    return seed


def check_seed(seed: SeedLike, fn: str) -> None:
    """``seed`` is None, an int in [0, 2**63) or a one-element int64 tensor (no host sync)."""
    if seed is None:
        return
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64 or seed.numel() != 1:
            raise ValueError(
                f"{fn}: a seed tensor must hold one int64 value, got {seed.dtype} of shape {tuple(seed.shape)}"
            )
        return
    if not is_int(seed) or not 0 <= seed < 2**63:
        raise ValueError(
            f"{fn}: seed must be None (fresh), an int in [0, 2**63) or a one-element int64 tensor, got {seed!r}"
        )


def as_seed_tensor(seed: SeedLike, device: torch.device, fn: str) -> torch.Tensor:
    """``seed`` as the ``[1]`` int64 tensor on ``device`` that a kernel reads its Philox key
    from; a fresh one from torch's generator on ``device`` when ``seed`` is None."""
    check_seed(seed, fn)
    if seed is None:
        return torch.randint(0, _SEED_HIGH, (1,), dtype=torch.int64, device=device)
    if isinstance(seed, torch.Tensor):
        device = torch.device(device)
        if seed.device.type != device.type or (device.index is not None and seed.device.index != device.index):
            raise ValueError(f"{fn}: the seed tensor must be on {device} like the inputs, got {seed.device}")
        return seed.reshape(1)
    return torch.full((1,), operator.index(seed), dtype=torch.int64, device=device)


def seed_tensor(seed: SeedLike, dropout_p: float, device: torch.device, fn: str) -> Optional[torch.Tensor]:
    """:func:`as_seed_tensor`, or None when ``dropout_p == 0`` (the kernels then never read it)."""
    if dropout_p == 0.0:
        check_seed(seed, fn)  # still a bad argument, even when unused
        return None
    return as_seed_tensor(seed, device, fn)
