"""Which implementation of the hot ops runs: ``backend = "auto" | "torch" | "triton"``.

``"torch"`` is the pure-PyTorch reference in :mod:`spanbert_fast.ops`; ``"triton"`` the kernels of
:mod:`spanbert_fast.kernels`, on CUDA tensors or, under the Triton interpreter
(``TRITON_INTERPRET=1``), on CPU tensors; ``"auto"`` picks Triton for CUDA tensors when it is
installed and the reference otherwise. A model holds one backend (given at construction,
:func:`check_backend`) and passes it down to every op call; each op resolves it here.
Importing this module imports neither Triton nor a kernel.
"""
from __future__ import annotations

from typing import Optional

import torch

from spanbert_fast.kernels._host_sync import may_sync  # torch only: keeps triton optional
from spanbert_fast.kernels._interpreter import interpreting  # reads an env variable, no triton

BACKENDS = ("auto", "torch", "triton")
SUPPORTED_HEAD_DIMS = (32, 64, 128)  # head dims the attention kernel has
_triton_importable: Optional[bool] = None  # found out once


def check_backend(backend: str) -> str:
    """``backend`` when it is one of :data:`BACKENDS`, else a ValueError."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


_triton_importable: Optional[bool] = None  # found out once


def triton_available() -> bool:
    """True when Triton can be imported (it is not needed for the torch backend)."""
    global _triton_importable
    if _triton_importable is None:
        try:
            import triton  # noqa: F401
        except Exception:  # ImportError, or a broken install raising at import
            _triton_importable = False
        else:
            _triton_importable = True
    return _triton_importable


def triton_interpreter_on() -> bool:
    """True when Triton kernels run on CPU tensors through the interpreter."""
    return interpreting()


def resolve_backend(backend: str, tensor: torch.Tensor) -> str:
    """Turn ``"auto"|"torch"|"triton"`` into the backend that will run on ``tensor``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if tensor.is_cuda and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the `triton` package; install it or use backend='torch'")
        if not tensor.is_cuda and not triton_interpreter_on():
            raise ValueError(
                "backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before triton is "
                "imported to run the kernels on CPU (slow; for tests); use backend='torch' on CPU"
            )
    return backend


def host_sync_allowed(tensor: torch.Tensor) -> bool:
    """False while ``torch.compile`` traces or a CUDA graph captures: optional value checks
    (one host sync each) are skipped there."""
    return may_sync(tensor)


def resolve_attention_backend(backend: str, tensor: torch.Tensor, head_dim: int) -> str:
    """:func:`resolve_backend` for attention: ``"auto"`` keeps head dims the kernel lacks on torch."""
    resolved = resolve_backend(backend, tensor)
    if backend == "auto" and head_dim not in SUPPORTED_HEAD_DIMS:
        return "torch"
    return resolved
