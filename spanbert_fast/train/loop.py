"""One training loop for pre-training and fine-tuning: :class:`Trainer`.

It runs AdamW (weight decay only on ≥2-dim weights) with linear warm-up and linear decay,
gradient clipping, gradient accumulation, bf16 autocast on CUDA (fp16 + GradScaler optional,
fp32 on CPU), optional ``torch.compile`` or a CUDA-graph step (:mod:`.cuda_graphs`), and
bit-exact ``resume`` on CPU. Under ``torchrun`` it wraps the model in DDP (NCCL on GPU, gloo on
CPU; :mod:`.distributed`); the batch source gives each rank its own slice, and only rank 0
writes files: the log, TensorBoard, progress bar and plot (:mod:`.logging`) and the
checkpoints (:mod:`.checkpoint`, which documents their layout and guarantees), in the output
folder it holds locked for the run (:mod:`.run_folder`: one run at a time; a fresh run into a
folder holding a run needs ``overwrite``).

What the loop needs from its inputs:

* ``model(**batch)`` returns an object with ``.loss`` and, optionally,
  ``.metrics()`` -> ``{name: tensor}`` (logged; e.g. MLM/SBO accuracy); the model has
  ``save_pretrained`` and ``load_weights`` (:class:`spanbert_fast.pretrained.SpanBertPreTrainedModel`).
* ``batches``: an iterable of batch dicts (tensors on CPU). When it has
  ``state_dict()`` / ``load_state_dict()`` its position is saved in checkpoints
  and restored on resume; it must then restart from the batch after the last one
  it yielded. Throughput counts each batch's real tokens (:func:`spanbert_fast.data.collate.real_tokens`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch

from spanbert_fast.data.collate import real_tokens
from spanbert_fast.train import checkpoint
from spanbert_fast.train.cuda_graphs import CapturedTrainingStep, check_graphable
from spanbert_fast.train.distributed import (
    DistributedContext,
    check_device,
    init_distributed,
    move_batch,
    seed_everything,
)
from spanbert_fast.train.logging import (
    PLOT_PNG,
    CsvLog,
    MetricWindow,
    bar_fields,
    log_scalars,
    open_tensorboard,
    plot_history,
    progress_bar,
)
from spanbert_fast.train.run_folder import RunFolder, open_run_folder


@dataclasses.dataclass
class TrainingArgs:
    """Optimisation and bookkeeping settings (defaults as SpanBERT pre-training: AdamW betas
    (0.9, 0.999), eps 1e-8, weight decay 0.01, grad clip 1.0; lr 1e-4, the paper's for the large model)."""

    out_dir: str
    max_steps: int
    lr: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.01
    adam_betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    grad_accum: int = 1  # micro-batches per optimizer step
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    compile: bool = False
    cuda_graphs: bool = False  # capture the whole step as one CUDA graph (spanbert_fast.train.cuda_graphs)
    log_every: int = 10
    save_every: int = 0  # steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept (0 = all); the one just saved always is
    seed: int = 0
    resume: bool = False  # continue the run in out_dir from its newest usable checkpoint
    overwrite: bool = False  # replace the run in out_dir (see spanbert_fast.train.run_folder)
    progress: bool = True
    plot: bool = True
    device: Optional[str] = None  # default: cuda when available, else cpu

    def __post_init__(self):
        """One-line ValueErrors naming the field and its command-line flag."""
        def require(ok: bool, field: str, rule: str) -> None:
            if not ok:
                flag = "--" + field.replace("_", "-")
                raise ValueError(f"{field} ({flag}) must be {rule}, got {getattr(self, field)!r}")

        require(self.max_steps > 0, "max_steps", "positive")
        require(self.grad_accum > 0, "grad_accum", "positive")
        require(self.lr >= 0 and math.isfinite(self.lr), "lr", "0 or more")
        require(self.warmup_steps >= 0, "warmup_steps", "0 or more")
        require(self.weight_decay >= 0 and math.isfinite(self.weight_decay), "weight_decay", "0 or more")
        require(self.adam_eps > 0, "adam_eps", "positive")
        require(self.grad_clip > 0, "grad_clip", "positive (inf: no clipping)")
        require(self.log_every > 0, "log_every", "positive")
        require(self.save_every >= 0, "save_every", "0 (only at the end) or more")
        require(self.keep_checkpoints >= 0, "keep_checkpoints", "0 (keep all) or more")
        require(self.precision in ("auto", "bf16", "fp16", "fp32"), "precision", "auto|bf16|fp16|fp32")
        if self.resume and self.overwrite:
            raise ValueError("resume (--resume) and overwrite (--overwrite) exclude each other: "
                             "continue the run in out_dir, or replace it")
        check_device(self.device)


# --------------------------------------------------------------------------- building blocks
def parameter_groups(model: torch.nn.Module, weight_decay: float) -> List[dict]:
    """AdamW groups: decay on ≥2-dim weights (matrices, embeddings), none on biases/norms."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_linear_decay(warmup_steps: int, max_steps: int):
    """LR multiplier: linear 0 -> 1 over ``warmup_steps``, then linear to 0 at ``max_steps``."""

    def multiplier(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))

    return multiplier


@dataclasses.dataclass
class TrainResult:
    step: int
    history: List[dict]  # one row per logged step
    out_dir: str
    checkpoint: Optional[str]
    plot: Optional[str]


class Trainer:
    """Runs ``args.max_steps`` optimizer steps of ``model`` on ``batches``."""

    def __init__(self, model: torch.nn.Module, batches: Iterable, args: TrainingArgs,
                 dist_ctx: Optional[DistributedContext] = None,
                 checkpoint_files: Iterable[Union[str, Tuple[str, str]]] = (),
                 run_folder: Optional[RunFolder] = None):
        """``checkpoint_files`` (e.g. ``tokenizer.json``) are copied into every checkpoint folder,
        each a path (kept under its own name) or a ``(path, name in the checkpoint)`` pair.
        ``run_folder``: ``args.out_dir`` already claimed by the caller
        (:func:`~spanbert_fast.train.run_folder.open_run_folder`, held beyond training: the
        drivers write the final model and evaluation into it); without it :meth:`train` claims
        the folder itself for the time it trains."""
        self.args = args
        self.run_folder = run_folder
        self.checkpoint_files = [(f, os.path.basename(f)) if isinstance(f, str) else tuple(f)
                                 for f in checkpoint_files]
        self.ctx = dist_ctx or init_distributed(args.device)
        self.device = self.ctx.device
        self.model = model.to(self.device)
        self.batches = batches
        self.precision = self._resolve_precision()
        # Fused AdamW (one multi-tensor kernel; its step counters stay on the device, so the
        # step never reads them on the host). CPU has a fused implementation too.
        self._fused_adamw = self.device.type in ("cuda", "cpu")
        if args.cuda_graphs:
            check_graphable(self.device, self.ctx.world_size, args.compile, args.grad_accum, self.precision)
        self.optimizer = torch.optim.AdamW(
            parameter_groups(model, args.weight_decay), lr=args.lr, betas=tuple(args.adam_betas),
            eps=args.adam_eps, **({"fused": True} if self._fused_adamw else {}),
        )
        self._set_graph_settings()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_linear_decay(args.warmup_steps, args.max_steps)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.step = 0
        self.last_checkpoint: Optional[str] = None  # the newest checkpoint saved or resumed from
        self._checkpoint_step: Optional[int] = None  # its step
        self.history: List[dict] = []
        self.log = CsvLog(args.out_dir)
        self.train_model = model
        if self.ctx.world_size > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if args.compile:
            self.train_model = torch.compile(self.train_model)
        self._captured_step = None
        if args.cuda_graphs:
            self._captured_step = CapturedTrainingStep(self.forward_backward_update, self._zero_grad,
                                                       self.finish_step, self.device)

    # ------------------------------------------------------------------ settings
    def _resolve_precision(self) -> str:
        precision = self.args.precision
        if precision == "auto":
            return "bf16" if self.device.type == "cuda" else "fp32"
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision='fp16' needs a CUDA device; use fp32 (or bf16) on CPU")
        return precision

    def _set_graph_settings(self) -> None:
        """AdamW as this run needs it, also after loading a checkpoint of a run with other settings
        (``load_state_dict`` restores the saved groups' ``fused``, ``capturable`` and ``lr`` as they were).

        A captured step (``cuda_graphs``) needs ``capturable=True`` and reads the learning rate
        from memory: each group gets its own device tensor, which the scheduler fills in place.
        """
        for group in self.optimizer.param_groups:
            if self._fused_adamw:
                group["fused"], group["foreach"] = True, None
            lr = float(group["lr"])
            if self.args.cuda_graphs:
                group["capturable"] = True
                group["lr"] = torch.tensor(lr, dtype=torch.float32, device=self.device)
            else:
                group["capturable"] = False
                group["lr"] = lr

    def autocast(self):
        """The autocast context of this run's precision (a no-op in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        # The weight-cast cache would hold tensors from one step to the next: not under a graph.
        return torch.autocast(self.device.type, dtype=dtype, cache_enabled=not self.args.cuda_graphs)

    # ------------------------------------------------------------------ checkpoints (see .checkpoint)
    def save_checkpoint(self) -> Optional[str]:
        """Write ``checkpoints/step-N`` atomically (rank 0 writes); returns its path. Raises
        FloatingPointError, saving nothing, when the weights are not finite."""
        path = checkpoint.save_checkpoint(self, self.checkpoint_files)
        self.last_checkpoint, self._checkpoint_step = path, self.step
        if self.run_folder is not None:
            self.run_folder.checkpoint_saved()
        return path

    def load_checkpoint(self, path: str, weights=None, state=None) -> None:
        """Restore weights, optimizer, scheduler, RNG and batch position from ``path``."""
        checkpoint.load_checkpoint(self, path, weights, state)
        self._checkpoint_step = self.step
        self._set_graph_settings()

    def _resume(self) -> None:
        self.load_checkpoint(*checkpoint.resume_checkpoint(self.args.out_dir, self.ctx.is_main))
        self.history = [row for row in self.log.read() if int(row["step"]) <= self.step]

    # ------------------------------------------------------------------ training
    def between_steps(self) -> None:
        """What the loop does after each optimizer step: a checkpoint every ``save_every`` steps
        (the last step's is saved once the loop ends). Subclasses add their own (evaluations)."""
        args = self.args
        if args.save_every and self.step % args.save_every == 0 and self.step < args.max_steps:
            self.save_checkpoint()

    def train(self) -> TrainResult:
        """Train to ``args.max_steps`` (from the newest usable checkpoint with ``args.resume``)."""
        if self.run_folder is not None or not self.ctx.is_main:
            return self._train()
        with open_run_folder(self.args.out_dir, "training", resume=self.args.resume,
                             overwrite=self.args.overwrite) as folder:
            self.run_folder = folder
            try:
                return self._train()
            finally:
                self.run_folder = None

    def _train(self) -> TrainResult:
        args, main = self.args, self.ctx.is_main
        if main:
            os.makedirs(args.out_dir, exist_ok=True)
        if args.resume:
            self._resume()
        else:
            seed_everything(args.seed + self.ctx.rank)
        tensorboard = open_tensorboard(args.out_dir) if main else None
        bar = progress_bar(args.max_steps, self.step) if (args.progress and main) else None
        iterator = iter(self.batches)
        self.train_model.train()
        window = MetricWindow(self.device)

        def record(output, batch) -> None:
            window.add(output, real_tokens(batch))

        while self.step < args.max_steps:
            micro_batches = []
            for _ in range(args.grad_accum):
                try:
                    micro_batches.append(move_batch(next(iterator), self.device))
                except StopIteration:
                    raise RuntimeError("the batch source ran out before max_steps; make it repeat (epochs)") from None
            if self._captured_step is not None:
                grad_norm = self._captured_step(micro_batches[0], record)
            else:
                grad_norm = self.training_step(micro_batches, record)
            if self.step % args.log_every == 0 or self.step == args.max_steps:
                try:
                    row = window.flush(self.step, self.scheduler.get_last_lr()[0], grad_norm, self.ctx.world_size)
                except FloatingPointError as error:  # the loss diverged: say where to go back to
                    raise FloatingPointError(f"{error}; {checkpoint.last_good_checkpoint(self)}") from None
                self.history.append(row)
                if main:
                    self.log.write(self.history)
                if tensorboard is not None:
                    log_scalars(tensorboard, row)
                if bar is not None:
                    bar.set_postfix(bar_fields(row))
            if bar is not None:
                bar.update(1)
            with window.paused():  # checkpoints and evaluations are not training time (tokens/s)
                self.between_steps()
        if bar is not None:
            bar.close()
        if self._checkpoint_step != self.step:  # not when resuming a finished run: its checkpoint stays as it is
            self.save_checkpoint()
        plot = self.plot() if (args.plot and main) else None
        if tensorboard is not None:
            tensorboard.close()
        return TrainResult(self.step, self.history, args.out_dir, self.last_checkpoint, plot)

    def training_step(self, micro_batches: List[Dict[str, object]], record: Optional[Callable] = None):
        """One optimizer step over ``micro_batches`` (already on the device): forward and
        backward of each (DDP all-reduces on the last), clipping, AdamW, LR schedule.

        Returns the gradient norm as a device tensor. Nothing in here reads a device value on
        the host (tests/test_host_syncs.py checks it), so the CPU can run ahead of the GPU;
        the loop syncs once per log line. With fp16 the GradScaler's inf check is one sync.
        """
        _, grad_norm = self.forward_backward_update(micro_batches, record)
        self._zero_grad()
        self.finish_step()
        return grad_norm

    def forward_backward_update(self, micro_batches: List[Dict[str, object]], record: Optional[Callable] = None):
        """The device work of a step (what a CUDA graph captures): forward and backward of each
        micro-batch, clipping, the optimizer update. Returns (model outputs, grad norm); with
        ``record(output, batch)`` each output goes there at once instead (none is kept)."""
        outputs = []
        for micro, batch in enumerate(micro_batches):
            sync = micro == len(micro_batches) - 1 or self.ctx.world_size == 1
            no_sync = getattr(self.train_model, "no_sync", None)
            with (contextlib.nullcontext() if sync or no_sync is None else no_sync()):
                with self.autocast():
                    output = self.train_model(**batch)
                self.scaler.scale(output.loss / len(micro_batches)).backward()
            if record is not None:
                record(output, batch)
            else:
                outputs.append(output)
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return outputs, grad_norm

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def finish_step(self) -> None:
        """Host-side bookkeeping after the update: LR schedule, step counter."""
        self.scheduler.step()
        self.step += 1

    def plot(self) -> Optional[str]:
        """Loss (and per-head losses) and throughput against step, as a PNG."""
        if not self.history:
            return None
        return plot_history(self.history, os.path.join(self.args.out_dir, PLOT_PNG))
