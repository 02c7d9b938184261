"""What this machine runs: package versions, the device, and which backends can run here
(``spanbert-fast info``, and what a bug report needs)."""
from __future__ import annotations

import importlib
import platform


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception:
        return "not installed"


def collect_info() -> dict:
    """Everything a bug report needs: versions, device, backend availability."""
    import torch

    import spanbert_fast
    from spanbert_fast import ops

    cuda = torch.cuda.is_available()
    triton_ok = ops.triton_available()
    if cuda and triton_ok:
        triton_backend = "available (CUDA)"
    elif triton_ok and ops.triton_interpreter_on():
        triton_backend = "interpreter only (TRITON_INTERPRET=1, CPU; slow, for tests)"
    elif triton_ok:
        triton_backend = "installed, but no CUDA GPU: backend='auto' uses the torch reference"
    else:
        triton_backend = "unavailable (triton not installed)"
    return {
        "spanbert-fast": spanbert_fast.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none (CPU build)",
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "tokenizers": _version("tokenizers"),
        "safetensors": _version("safetensors"),
        "numpy": _version("numpy"),
        "backend auto": "triton" if (cuda and triton_ok) else "torch",
        "backend triton": triton_backend,
        "backend torch": "available",
    }
