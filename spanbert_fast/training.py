"""One training loop for pre-training and fine-tuning.

:class:`Trainer` runs AdamW (weight decay only on ≥2-dim weights) with linear
warm-up and linear decay, gradient clipping, gradient accumulation, bf16 autocast
on CUDA (fp16 + GradScaler optional, fp32 on CPU), optional ``torch.compile``, a
tqdm progress bar, a CSV log (and TensorBoard when installed), a loss/throughput
plot at the end, atomic periodic checkpoints and bit-exact ``resume`` on CPU.
Under ``torchrun`` it wraps the model in DDP (NCCL on GPU, gloo on CPU); the batch
source gives each rank its own slice, and only rank 0 writes files.

What the loop needs from its inputs:

* ``model(**batch)`` returns an object with ``.loss`` and, optionally,
  ``.metrics()`` -> ``{name: tensor}`` (logged; e.g. MLM/SBO accuracy) and
  ``.num_tokens`` is not needed: throughput counts ``attention_mask`` ones.
* ``batches``: an iterable of batch dicts (tensors on CPU). When it has
  ``state_dict()`` / ``load_state_dict()`` its position is saved in checkpoints
  and restored on resume; it must then restart from the batch after the last one
  it yielded.

Checkpoint layout (``out_dir/checkpoints/step-00000100/``): ``config.json`` +
``model.safetensors`` (HF layout, loads with ``from_pretrained``) and
``trainer_state.pt`` (optimizer, scheduler, scaler, RNG states, batch-source
position, step). A checkpoint folder is written under a temporary name and
renamed when complete, so a crash never leaves a half-written one.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import random
import shutil
import time
import warnings
from typing import Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist

from spanbert_fast.cuda_graphs import CapturedTrainingStep, check_graphable
from spanbert_fast.io import atomic_directory, atomic_path, atomic_write

CHECKPOINT_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.pt"
LOG_CSV = "log.csv"
PLOT_PNG = "training.png"


@dataclasses.dataclass
class TrainingArgs:
    """Optimisation and bookkeeping settings (defaults: DESIGN §3 where it applies)."""

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
    cuda_graphs: bool = False  # capture the whole step as one CUDA graph (spanbert_fast.cuda_graphs)
    log_every: int = 10
    save_every: int = 0  # steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept (0 = all)
    seed: int = 0
    resume: bool = False
    progress: bool = True
    plot: bool = True
    device: Optional[str] = None  # default: cuda when available, else cpu

    def __post_init__(self):
        if self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        if self.grad_accum <= 0:
            raise ValueError(f"grad_accum must be positive, got {self.grad_accum}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"precision must be auto|bf16|fp16|fp32, got {self.precision!r}")


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


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def init_distributed(device: Optional[str] = None) -> DistributedContext:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (NCCL on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
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


def list_checkpoints(out_dir: str) -> List[str]:
    """Complete checkpoint folders under ``out_dir``, oldest first."""
    root = os.path.join(out_dir, CHECKPOINT_DIR)
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith("step-") and not n.endswith(".tmp"))
    return [os.path.join(root, n) for n in names if os.path.isfile(os.path.join(root, n, TRAINER_STATE))]


# --------------------------------------------------------------------------- the loop
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
                 checkpoint_files: Iterable[Union[str, Tuple[str, str]]] = ()):
        """``checkpoint_files`` (e.g. ``tokenizer.json``) are copied into every checkpoint folder,
        each a path (kept under its own name) or a ``(path, name in the checkpoint)`` pair."""
        self.args = args
        self.checkpoint_files = [(f, os.path.basename(f)) if isinstance(f, str) else tuple(f)
                                 for f in checkpoint_files]
        self.ctx = dist_ctx or init_distributed(args.device)
        self.device = self.ctx.device
        self.model = model.to(self.device)
        self.batches = batches
        self.precision = self._resolve_precision()
        # Fused AdamW (one multi-tensor kernel; its step counters stay on the device, so the
        # step never reads them on the host). CPU has a fused implementation too.
        fused = self.device.type in ("cuda", "cpu")
        self._fused_adamw = fused
        if args.cuda_graphs:
            check_graphable(self.device, self.ctx.world_size, args.compile, args.grad_accum, self.precision)
        self.optimizer = torch.optim.AdamW(
            parameter_groups(model, args.weight_decay), lr=args.lr, betas=tuple(args.adam_betas),
            eps=args.adam_eps, **({"fused": True} if fused else {}),
        )
        self._set_graph_settings()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_linear_decay(args.warmup_steps, args.max_steps)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.step = 0
        self.history: List[dict] = []
        self._log_rows_written: Optional[int] = None  # rows of history already in log.csv
        self.train_model = model
        if self.ctx.world_size > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if args.compile:
            self.train_model = torch.compile(self.train_model)
        self._captured_step = CapturedTrainingStep(self) if args.cuda_graphs else None

    # ------------------------------------------------------------------ helpers
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

    def _log_path(self) -> str:
        return os.path.join(self.args.out_dir, LOG_CSV)

    # ------------------------------------------------------------------ checkpoints
    def _rng_states(self) -> List[dict]:
        """Every rank's RNG state, gathered on all ranks (each rank draws its own dropout)."""
        if self.ctx.world_size == 1:
            return [rng_state()]
        states: List[Optional[dict]] = [None] * self.ctx.world_size
        dist.all_gather_object(states, rng_state())
        return states

    def save_checkpoint(self) -> Optional[str]:
        """Write ``checkpoints/step-N`` atomically (rank 0 writes); returns its path."""
        rng_states = self._rng_states()  # a collective: every rank takes part
        if not self.ctx.is_main:
            return None
        final = os.path.join(self.args.out_dir, CHECKPOINT_DIR, f"step-{self.step:08d}")
        with atomic_directory(final) as tmp:
            self.model.save_pretrained(tmp)
            for path, name in self.checkpoint_files:
                shutil.copy2(path, os.path.join(tmp, name))
            state = {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng_states,  # one per rank
                "batches": self.batches.state_dict() if hasattr(self.batches, "state_dict") else None,
                "args": dataclasses.asdict(self.args),
            }
            torch.save(state, os.path.join(tmp, TRAINER_STATE))
        self._prune_checkpoints()
        return final

    def _prune_checkpoints(self) -> None:
        keep = self.args.keep_checkpoints
        if keep > 0:
            for old in list_checkpoints(self.args.out_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, path: str) -> None:
        """Restore weights, optimizer, scheduler, RNG and batch position from ``path``."""
        from spanbert_fast.hub import find_weights_file, read_state_dict

        self.model.load_weights(read_state_dict(find_weights_file(path)), source=path, strict=True)
        state = torch.load(os.path.join(path, TRAINER_STATE), map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self._set_graph_settings()
        self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.base_lrs = [float(lr) for lr in self.scheduler.base_lrs]  # tensors if saved under cuda_graphs
        self.scaler.load_state_dict(state["scaler"])
        if state["batches"] is not None:
            if not hasattr(self.batches, "load_state_dict"):
                raise ValueError(f"{path}: checkpoint has a data position but the batch source cannot restore it")
            self.batches.load_state_dict(state["batches"])
        if len(state["rng"]) != self.ctx.world_size:
            raise ValueError(
                f"{path}: saved by {len(state['rng'])} processes, resumed with {self.ctx.world_size}; "
                "resume with the same number of processes"
            )
        set_rng_state(state["rng"][self.ctx.rank])
        self.step = state["step"]
        changed = {k: (v, getattr(self.args, k)) for k, v in state["args"].items()
                   if k in _RESUME_CHECKED and v != getattr(self.args, k)}
        if changed and self.ctx.is_main:
            listed = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in changed.items())
            warnings.warn(f"resuming {path} with changed settings ({listed}); the run will differ "
                          "from an uninterrupted one")

    def _resume(self) -> None:
        checkpoints = list_checkpoints(self.args.out_dir)
        if not checkpoints:
            raise FileNotFoundError(
                f"--resume: no checkpoint under {os.path.join(self.args.out_dir, CHECKPOINT_DIR)}; "
                "run without --resume to start fresh"
            )
        self.load_checkpoint(checkpoints[-1])
        self.history = [row for row in self._read_log() if int(row["step"]) <= self.step]

    def _read_log(self) -> List[dict]:
        if not os.path.isfile(self._log_path()):
            return []
        with open(self._log_path(), newline="") as f:
            return list(csv.DictReader(f))

    def _rewrite_log(self) -> None:
        """Write the whole history (start of a run, or after a resume dropped later rows)."""
        with atomic_write(self._log_path(), newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.history[0].keys()), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.history)
        self._log_rows_written = len(self.history)

    def _write_log(self) -> None:
        """Append the new rows to ``log.csv`` (rewriting it only when it is not ours yet)."""
        if not self.ctx.is_main or not self.history:
            return
        if self._log_rows_written is None:
            self._rewrite_log()
            return
        with open(self._log_path(), "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.history[0].keys()), extrasaction="ignore")
            writer.writerows(self.history[self._log_rows_written:])
        self._log_rows_written = len(self.history)

    # ------------------------------------------------------------------ training
    def train(self) -> TrainResult:
        args = self.args
        if self.ctx.is_main:
            os.makedirs(args.out_dir, exist_ok=True)
        if args.resume:
            self._resume()
        else:
            seed_everything(args.seed + self.ctx.rank)
        tensorboard = self._tensorboard()
        bar = None
        if args.progress and self.ctx.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=args.max_steps, initial=self.step, desc="train", dynamic_ncols=True)
        iterator = iter(self.batches)
        self.train_model.train()
        window = _MetricWindow(self.device)
        checkpoint = None
        while self.step < args.max_steps:
            micro_batches = []
            for _ in range(args.grad_accum):
                try:
                    micro_batches.append(move_batch(next(iterator), self.device))
                except StopIteration:
                    raise RuntimeError("the batch source ran out before max_steps; make it repeat (epochs)") from None
            if self._captured_step is not None:
                grad_norm = self._captured_step(micro_batches[0], window)
            else:
                grad_norm = self.training_step(micro_batches, window)
            if self.step % args.log_every == 0 or self.step == args.max_steps:
                row = window.flush(self.step, self.scheduler.get_last_lr()[0], grad_norm, self.ctx)
                self.history.append(row)
                self._write_log()
                if tensorboard is not None:
                    for key, value in row.items():
                        if key != "step":
                            tensorboard.add_scalar(key, value, self.step)
                if bar is not None:
                    bar.set_postfix({k: _short(v) for k, v in row.items() if k in _BAR_FIELDS})
            if bar is not None:
                bar.update(1)
            if args.save_every and self.step % args.save_every == 0 and self.step < args.max_steps:
                checkpoint = self.save_checkpoint()
        if bar is not None:
            bar.close()
        checkpoint = self.save_checkpoint() or checkpoint
        plot = self.plot() if (args.plot and self.ctx.is_main) else None
        if tensorboard is not None:
            tensorboard.close()
        return TrainResult(self.step, self.history, args.out_dir, checkpoint, plot)

    def training_step(self, micro_batches: List[Dict[str, object]], window: Optional["_MetricWindow"] = None):
        """One optimizer step over ``micro_batches`` (already on the device): forward and
        backward of each (DDP all-reduces on the last), clipping, AdamW, LR schedule.

        Returns the gradient norm as a device tensor. Nothing in here reads a device value on
        the host (tests/test_host_syncs.py checks it), so the CPU can run ahead of the GPU;
        the loop syncs once per log line. With fp16 the GradScaler's inf check is one sync.
        """
        _, grad_norm = self.forward_backward_update(micro_batches, window)
        self.optimizer.zero_grad(set_to_none=True)
        self.finish_step()
        return grad_norm

    def forward_backward_update(self, micro_batches: List[Dict[str, object]],
                                window: Optional["_MetricWindow"] = None):
        """The device work of a step (what a CUDA graph captures): forward and backward of each
        micro-batch, clipping, the optimizer update. Returns (model outputs, grad norm); with a
        ``window`` each output goes into it at once instead (no micro-batch's states are kept)."""
        outputs = []
        for micro, batch in enumerate(micro_batches):
            sync = micro == len(micro_batches) - 1 or self.ctx.world_size == 1
            no_sync = getattr(self.train_model, "no_sync", None)
            with (contextlib.nullcontext() if sync or no_sync is None else no_sync()):
                with self.autocast():
                    output = self.train_model(**batch)
                self.scaler.scale(output.loss / len(micro_batches)).backward()
            if window is not None:
                window.add(output, batch)
            else:
                outputs.append(output)
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return outputs, grad_norm

    def finish_step(self) -> None:
        """Host-side bookkeeping after the update: LR schedule, step counter."""
        self.scheduler.step()
        self.step += 1

    def _tensorboard(self):
        if not self.ctx.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard not installed: CSV only
            return None
        return SummaryWriter(os.path.join(self.args.out_dir, "tensorboard"))

    def plot(self) -> Optional[str]:
        """Loss (and per-head losses) and throughput against step, as a PNG."""
        if not self.history:
            return None
        return plot_history(self.history, os.path.join(self.args.out_dir, PLOT_PNG))


def output_values(output) -> Dict[str, torch.Tensor]:
    """``loss`` and the ``metrics()`` of a model output, detached fp32 device tensors (no sync)."""
    values = {"loss": output.loss.detach().float()}
    if hasattr(output, "metrics"):
        values.update({k: v.detach().float() for k, v in output.metrics().items()})
    return values


@torch.no_grad()
def evaluate_batches(model: torch.nn.Module, batches: Iterable[Dict[str, object]], device,
                     autocast=contextlib.nullcontext) -> Dict[str, float]:
    """Mean ``loss`` and ``metrics()`` of ``model`` over ``batches`` (eval mode, no dropout); the
    caller puts the model back in training mode. One host sync at the end."""
    model.eval()
    sums: Dict[str, torch.Tensor] = {}
    count = 0
    for batch in batches:
        batch = move_batch(batch, device)
        with autocast():
            output = model(**batch)
        for key, value in output_values(output).items():
            sums[key] = sums.get(key, 0) + value
        count += 1
    if count == 0:
        raise ValueError("evaluate_batches: no batch to evaluate")
    names = sorted(sums)
    return {name: value / count for name, value in zip(names, torch.stack([sums[n] for n in names]).tolist())}


# Settings whose change on --resume makes the run differ from an uninterrupted one.
_RESUME_CHECKED = ("max_steps", "lr", "warmup_steps", "weight_decay", "grad_accum", "grad_clip", "precision")

_BAR_FIELDS = ("loss", "mlm_acc", "sbo_acc", "tokens_per_s")


def _short(value) -> str:
    value = float(value)
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3f}"


class _MetricWindow:
    """Sums of losses/metrics over the steps since the last log line (no per-step sync)."""

    def __init__(self, device):
        self.device = device
        self.reset()

    def reset(self):
        self.sums: Dict[str, torch.Tensor] = {}
        self.micro_batches = 0
        self.tokens = torch.zeros((), dtype=torch.int64, device=self.device)
        self.start = time.perf_counter()

    def add(self, output, batch):
        for key, value in output_values(output).items():
            self.sums[key] = self.sums.get(key, 0) + value
        self.micro_batches += 1
        mask = batch.get("attention_mask")
        if "num_tokens" in batch:  # fixed-shape packed batches count their real tokens
            self.tokens += batch["num_tokens"]
        elif mask is not None:
            self.tokens += mask.sum()
        else:
            self.tokens += batch["input_ids"].numel()

    def flush(self, step, lr, grad_norm, ctx: DistributedContext) -> dict:
        names = sorted(self.sums)
        stacked = torch.stack([self.sums[k] for k in names] + [self.tokens.float()])
        if ctx.world_size > 1:
            dist.all_reduce(stacked)
            stacked[:-1] /= ctx.world_size
        values = stacked.tolist()  # the one host sync per log line
        elapsed = time.perf_counter() - self.start
        row = {"step": step, "lr": float(lr), "grad_norm": float(grad_norm)}  # lr is a tensor under cuda_graphs
        row.update({k: v / self.micro_batches for k, v in zip(names, values[:-1])})
        row["tokens_per_s"] = values[-1] / max(elapsed, 1e-9)
        row["elapsed_s"] = elapsed
        nan_guard(row["loss"], step)
        self.reset()
        return row


def plot_history(history: List[dict], path: str) -> str:
    """Two panels: losses and tokens/s against step; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(r["step"]) for r in history]
    fig, (ax_loss, ax_speed) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "mlm_loss", "sbo_loss"):
        if key in history[0]:
            ax_loss.plot(steps, [float(r[key]) for r in history], label=key)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_speed.plot(steps, [float(r["tokens_per_s"]) for r in history], color="tab:green")
    ax_speed.set_xlabel("step")
    ax_speed.set_ylabel("tokens / s")
    ax_speed.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def nan_guard(value: float, step: int) -> None:
    """Stop with a clear message when the loss diverges."""
    if not math.isfinite(value):
        raise FloatingPointError(f"loss is {value} at step {step}; lower --lr or check the data")
