"""Poisoned allocations: every fresh tensor starts as garbage that cannot go unnoticed.

``torch.empty`` hands back whatever the allocator had: zeros on a fresh CPU process,
last step's activations on a warm CUDA caching allocator. Code that reads memory before
writing it therefore passes on one machine and fails on another. With the poison on,
the Python-level allocation functions fill what they return:

* floating and complex tensors with NaN (a NaN that is read spreads to the result);
* signed integers with their minimum value, unsigned ones with their maximum (an index
  read from such a buffer is out of range, a count is absurd);
* bool tensors with True.

Patched: ``torch.empty``, ``torch.empty_like``, ``torch.empty_strided``,
``Tensor.new_empty`` and ``Tensor.new_empty_strided``. Allocations made inside C++ ops
(the result of ``torch.mm``, ...) are not poisoned: those ops write every element.
While ``torch.compile`` traces, the original functions run, so the traced graphs are the
ones a user gets; the compiled code's own allocations are not poisoned.

Switch it on for a pytest run with ``--poison-alloc`` or ``SPANBERT_POISON_ALLOC=1``
(tests/conftest.py), or for a block of code with ``with poisoned_allocations(): ...``.
"""
from __future__ import annotations

import contextlib
import functools

import torch

ENV_VAR = "SPANBERT_POISON_ALLOC"

_PATCHED = (
    (torch, "empty"),
    (torch, "empty_like"),
    (torch, "empty_strided"),
    (torch.Tensor, "new_empty"),
    (torch.Tensor, "new_empty_strided"),
)
_originals: dict = {}


def poison_value(dtype: torch.dtype):
    """The fill for a fresh tensor of ``dtype`` (see the module docstring)."""
    if dtype.is_floating_point or dtype.is_complex:
        return float("nan")
    if dtype == torch.bool:
        return True
    info = torch.iinfo(dtype)
    return info.min if info.min < 0 else info.max


def poison_(tensor):
    """Fill ``tensor`` (every element of its storage view) with :func:`poison_value`."""
    if isinstance(tensor, torch.Tensor) and tensor.numel() > 0 and not tensor.is_quantized:
        with torch.no_grad():
            tensor.fill_(poison_value(tensor.dtype))
    return tensor


def _poisoning(original):
    @functools.wraps(original)
    def allocate(*args, **kwargs):
        tensor = original(*args, **kwargs)
        if torch.compiler.is_compiling():
            return tensor
        return poison_(tensor)

    allocate.__wrapped_original__ = original
    return allocate


def install() -> None:
    """Patch the allocation functions (idempotent)."""
    if _originals:
        return
    for owner, name in _PATCHED:
        original = getattr(owner, name)
        _originals[(owner, name)] = original
        setattr(owner, name, _poisoning(original))


def uninstall() -> None:
    """Restore the original allocation functions."""
    for (owner, name), original in _originals.items():
        setattr(owner, name, original)
    _originals.clear()


def installed() -> bool:
    return bool(_originals)


@contextlib.contextmanager
def poisoned_allocations():
    """Poison fresh allocations inside the block (nests with an already installed poison)."""
    already = installed()
    install()
    try:
        yield
    finally:
        if not already:
            uninstall()
