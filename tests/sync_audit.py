"""Find the host syncs of a region without a GPU.

On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` catches a device-to-host sync when it
happens. On a CPU machine nothing syncs, so :class:`HostSyncAudit` instead records every op
that *would* make the host wait for a CUDA device: reading a value (``.item()``, ``float()``,
``bool()``, ``tolist()``, ``.numpy()``) and ops whose output size depends on the data
(``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``, ``repeat_interleave``
without ``output_size``). It also looks inside our own ``torch.library`` ops (the Triton
launch code), which a dispatch mode otherwise sees only from the outside.

    with HostSyncAudit() as audit:
        step()
    assert audit.syncs == [], audit.report()
"""
from __future__ import annotations

import traceback
from typing import List

import torch
from torch._library import custom_ops
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Ops that need the data on the host to run or to size their output.
_DATA_DEPENDENT = {
    aten._local_scalar_dense.default,  # .item(), float(t), int(t), bool(t)
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.is_nonzero.default,
    aten.equal.default,
}
# Indexing ops that turn a boolean index into ``nonzero``.
_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
_OUR_NAMESPACE = "spanbert_fast"


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else []
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


def _user_frame() -> str:
    """The innermost stack frame outside torch and this file: where the sync comes from."""
    for frame in reversed(traceback.extract_stack()):
        name = frame.filename.replace("\\", "/")
        if "/torch/" not in name and not name.endswith("sync_audit.py"):
            return f"{frame.filename}:{frame.lineno} in {frame.name}: {frame.line}"
    return "<unknown>"


class HostSyncAudit(TorchDispatchMode):
    """Records (op, source line) of every would-be host sync inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.syncs: List[str] = []
        self._patched = {}
        self._depth = 0

    def _record(self, what: str) -> None:
        self.syncs.append(f"{what} at {_user_frame()}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DATA_DEPENDENT:
            self._record(str(func))
        elif func in _INDEXING and _has_bool_index(args):
            self._record(f"{func} with a boolean index")
        elif func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            self._record(f"{func} without output_size")
        if func.namespace == _OUR_NAMESPACE:
            # Run our op's Python implementation under this mode too, to see inside it.
            opdef = custom_ops.OPDEFS.get(f"{func.namespace}::{func._opname}")
            if opdef is not None and opdef._init_fn is not None:
                with self:
                    return opdef._init_fn(*args, **kwargs)
        return func(*args, **kwargs)

    # Tensor -> Python conversions that don't dispatch an aten op for CPU tensors. The mode is
    # re-entered for each of our ops (above): patch on the outermost entry only.
    def __enter__(self):
        if self._depth == 0:
            for name in ("tolist", "numpy"):
                original = getattr(torch.Tensor, name)
                self._patched[name] = original

                def wrapped(tensor, *a, __name=name, __original=original, **k):
                    self._record(f"Tensor.{__name}()")
                    return __original(tensor, *a, **k)

                setattr(torch.Tensor, name, wrapped)
        self._depth += 1
        return super().__enter__()

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            for name, original in self._patched.items():
                setattr(torch.Tensor, name, original)
            self._patched = {}
        return super().__exit__(*exc)

    def report(self) -> str:
        return "host syncs:\n  " + "\n  ".join(self.syncs)
