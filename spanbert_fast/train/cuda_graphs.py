"""The whole training step as one CUDA graph (``TrainingArgs.cuda_graphs``, ``pretrain --cuda-graphs``).

A BERT-base step launches a few thousand kernels; many are small, and each costs Python and
launch overhead on the host (Triton's launcher is several µs). Replaying a captured graph
launches them all at once. What makes the step capturable:

* fixed shapes: packed batches padded to a :class:`~spanbert_fast.data.static_shapes.StaticCapacity`
  (same sizes, same ``max_seqlen`` every step), copied into the graph's own input tensors;
* no host sync anywhere in forward, backward, clipping and AdamW (``tests/test_host_syncs.py``);
* dropout seeds drawn on the device (``torch.randint``), whose Philox offset torch advances
  on each replay, so every step gets new masks;
* AdamW with ``capturable=True`` and a tensor learning rate, which the LR scheduler updates
  in place between replays; autocast without its weight-cast cache.

The first ``warmup_steps`` steps run eagerly on a side stream (Triton compiles and
autotunes there, and the optimizer creates its state); the next step is captured, then
every step replays. Gradients are allocated during capture and overwritten by each replay.
Single GPU only: DDP, ``torch.compile``, gradient accumulation and fp16 loss scaling are
refused (use ``--compile``'s own ``mode="reduce-overhead"`` for the compiled route).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple, TypeVar

import torch

GRAPH_WARMUP_STEPS = 3
T = TypeVar("T")


def on_side_stream(step: Callable[[], T], device=None) -> T:
    """Run ``step`` eagerly on a side stream, ordered after and before the current stream's
    work: PyTorch's rule for the warm-up iterations before a capture."""
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device=device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        result = step()
    current.wait_stream(side)
    return result


def capture(update: Callable[[], T], device=None) -> Tuple[torch.cuda.CUDAGraph, T]:
    """``update`` captured as a CUDA graph (not run: replay it), and the tensors it returned,
    which each replay rewrites in place."""
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = update()
    torch.cuda.synchronize(device)
    return graph, outputs


def check_graphable(device: torch.device, world_size: int, compile: bool, grad_accum: int, precision: str) -> None:
    """Raise a clear error for the settings a captured step does not support."""
    problems = []
    if device.type != "cuda":
        problems.append(f"CUDA graphs need a CUDA device, got {device}")
    if world_size > 1:
        problems.append("CUDA graphs run on a single GPU (no DDP); drop --cuda-graphs under torchrun")
    if compile:
        problems.append("use either --compile or --cuda-graphs, not both")
    if grad_accum != 1:
        problems.append(f"CUDA graphs capture one micro-batch per step; got grad_accum={grad_accum}")
    if precision == "fp16":
        problems.append("fp16 loss scaling reads the inf check on the host; use bf16 or fp32 with CUDA graphs")
    if problems:
        raise ValueError("cuda_graphs: " + "; ".join(problems))


class CapturedTrainingStep:
    """A training step run as a CUDA graph after a few eager warm-up steps.

    Built from the step's parts (:class:`~spanbert_fast.train.loop.Trainer` passes its own):
    ``update(micro_batches, record=None) -> (outputs, grad_norm)`` is the device work (forward,
    backward, clipping, optimizer update), which is captured; ``zero_grad()`` drops the gradients;
    ``finish()`` is the host bookkeeping after each step (LR schedule, step counter). Calling it
    with a batch and ``record(output, batch)`` (the metric window's) returns the gradient norm.
    """

    def __init__(self, update: Callable, zero_grad: Callable[[], None], finish: Callable[[], None],
                 device=None, warmup_steps: int = GRAPH_WARMUP_STEPS):
        self.update, self.zero_grad, self.finish, self.device = update, zero_grad, finish, device
        self.warmup_left = warmup_steps
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.static_batch: Dict[str, object] = {}
        self.static_output = None
        self.static_grad_norm: Optional[torch.Tensor] = None

    def eager_step(self, batch: Dict[str, object], record: Optional[Callable] = None) -> torch.Tensor:
        _, grad_norm = self.update([batch], record)
        self.zero_grad()
        self.finish()
        return grad_norm

    def __call__(self, batch: Dict[str, object], record: Optional[Callable] = None) -> torch.Tensor:
        if self.graph is None and self.warmup_left > 0:
            self.warmup_left -= 1
            if self.warmup_left == 0:  # compiled and tuned by now: the step must not sync
                return on_side_stream(lambda: self._sync_checked_step(batch, record), self.device)
            return on_side_stream(lambda: self.eager_step(batch, record), self.device)
        if self.graph is None:
            self._capture(batch)
        else:
            self._load(batch)
        self.graph.replay()
        if record is not None:
            record(self.static_output, self.static_batch)
        self.finish()
        return self.static_grad_norm

    def _sync_checked_step(self, batch: Dict[str, object], record: Optional[Callable]) -> torch.Tensor:
        """An eager step under ``set_sync_debug_mode("error")``: a host sync cannot be captured,
        and the capture's own error would not say where it is."""
        torch.cuda.synchronize(self.device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            return self.eager_step(batch, record)
        except RuntimeError as error:
            if "synchroniz" not in str(error):
                raise
            raise RuntimeError(
                "cuda_graphs: the training step reads a GPU value on the host, which a CUDA graph cannot "
                "capture (see the traceback for where). Use the Triton backend on packed batches with "
                "SpanBertForPreTraining(config, validate_targets=False), as `spanbert-fast pretrain "
                "--cuda-graphs` does."
            ) from error
        finally:
            torch.cuda.set_sync_debug_mode("default")

    def _capture(self, batch: Dict[str, object]) -> None:
        self.static_batch = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        self.zero_grad()  # the capture allocates the grads it overwrites
        graph, (outputs, self.static_grad_norm) = capture(lambda: self.update([self.static_batch]), self.device)
        self.static_output = outputs[0]
        self.graph = graph  # only a complete capture is ever replayed

    def _load(self, batch: Dict[str, object]) -> None:
        """Copy a new batch into the captured input tensors (same keys, shapes and Python values)."""
        if batch.keys() != self.static_batch.keys():
            raise ValueError(f"cuda_graphs: batch keys changed from {sorted(self.static_batch)} to {sorted(batch)}")
        for key, value in batch.items():
            static = self.static_batch[key]
            if isinstance(static, torch.Tensor):
                if value.shape != static.shape or value.dtype != static.dtype:
                    raise ValueError(
                        f"cuda_graphs: batch[{key!r}] is {value.dtype}{tuple(value.shape)}, the captured step "
                        f"has {static.dtype}{tuple(static.shape)}; feed fixed-shape batches "
                        "(spanbert_fast.data.static_shapes.pad_packed_batch)"
                    )
                static.copy_(value, non_blocking=True)
            elif value != static:
                raise ValueError(f"cuda_graphs: batch[{key!r}] = {value!r} differs from the captured {static!r}")
