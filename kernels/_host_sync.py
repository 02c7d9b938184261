"""When the launch functions may read values on the host for their optional input checks."""
from __future__ import annotations

import torch


def may_sync(t: torch.Tensor) -> bool:
    """Value checks need a host sync: skip them while compiling or capturing a CUDA graph
    (a sync there is an error, and the shapes were checked already)."""
    if torch.compiler.is_compiling():
        return False
    if t.is_cuda and torch.cuda.is_current_stream_capturing():
        return False
    return True
