"""Whether Triton runs our kernels on CPU tensors through its interpreter (``TRITON_INTERPRET=1``).

The one place that reads the variable. Triton itself reads it when ``@triton.jit`` first wraps a
kernel, so the kernel files call :func:`interpreting` at import (interpreter-sized tiles, fp32
dots for bf16) and ``spanbert_fast.ops`` calls it when it picks a backend. tests/conftest.py sets
the variable before Triton is imported. Importing this module does not import Triton.
"""
from __future__ import annotations

import os


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET`` is set to anything but ``""`` or ``"0"``."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
