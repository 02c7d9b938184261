"""What a training run reports: the metric window, ``log.csv``, TensorBoard, the progress bar and
the loss/throughput plot. Only the main process writes (the trainer decides which one that is).

The loop adds each micro-batch's outputs to a :class:`MetricWindow` (device tensors, no host
sync) and, every ``log_every`` steps, flushes it into one row (the one host sync per log line)::

    step, lr, grad_norm, loss, <metrics() of the model output>, tokens_per_s, elapsed_s
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from spanbert_fast.io import atomic_path, atomic_write

LOG_CSV = "log.csv"
PLOT_PNG = "training.png"
TENSORBOARD_DIR = "tensorboard"
EVAL_RESULTS = "eval_results.json"  # one held-out evaluation (in a checkpoint folder, or the run's)
EVAL_LOG = "eval_log.csv"  # one row per evaluation of the run
BAR_FIELDS = ("loss", "mlm_acc", "sbo_acc", "tokens_per_s")


def output_values(output) -> Dict[str, torch.Tensor]:
    """``loss`` and the ``metrics()`` of a model output, detached fp32 device tensors (no sync)."""
    values = {"loss": output.loss.detach().float()}
    if hasattr(output, "metrics"):
        values.update({k: v.detach().float() for k, v in output.metrics().items()})
    return values


def nan_guard(value: float, step: int) -> None:
    """Stop with a clear message when the loss diverges."""
    if not math.isfinite(value):
        raise FloatingPointError(f"loss is {value} at step {step}; lower --lr or check the data")


class MetricWindow:
    """Sums of losses/metrics and real tokens over the steps since the last log line (no per-step sync)."""

    def __init__(self, device):
        self.device = device
        self.reset()

    def reset(self):
        self.sums: Dict[str, torch.Tensor] = {}
        self.micro_batches = 0
        self.tokens = torch.zeros((), dtype=torch.int64, device=self.device)
        self.start = time.perf_counter()

    def add(self, output, tokens) -> None:
        """One micro-batch: its model ``output`` and its count of real ``tokens`` (int or 0-dim tensor)."""
        for key, value in output_values(output).items():
            self.sums[key] = self.sums.get(key, 0) + value
        self.micro_batches += 1
        self.tokens += tokens

    @contextlib.contextmanager
    def paused(self):
        """Leave the time spent inside out of the window (its tokens/s and ``elapsed_s``)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - start

    def flush(self, step: int, lr, grad_norm, world_size: int = 1) -> dict:
        """The log row of the window (averaged over ranks), then a fresh window."""
        names = sorted(self.sums)
        stacked = torch.stack([self.sums[k] for k in names] + [self.tokens.float()])
        if world_size > 1:
            dist.all_reduce(stacked)
            stacked[:-1] /= world_size
        values = stacked.tolist()  # the one host sync per log line
        elapsed = time.perf_counter() - self.start
        row = {"step": step, "lr": float(lr), "grad_norm": float(grad_norm)}  # lr is a tensor under cuda_graphs
        row.update({k: v / self.micro_batches for k, v in zip(names, values[:-1])})
        row["tokens_per_s"] = values[-1] / max(elapsed, 1e-9)
        row["elapsed_s"] = elapsed
        nan_guard(row["loss"], step)
        self.reset()
        return row


class CsvLog:
    """``out_dir/log.csv``: one row per log line, appended; rewritten whole (atomically) the first
    time, so a resumed run drops the rows past its checkpoint."""

    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, LOG_CSV)
        self.rows_written: Optional[int] = None  # rows of the history already in the file

    def read(self) -> List[dict]:
        if not os.path.isfile(self.path):
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def write(self, history: List[dict]) -> None:
        """Append the rows of ``history`` not yet in the file (rewriting it when it is not ours yet)."""
        if not history:
            return
        fields = list(history[0].keys())
        if self.rows_written is None:
            with atomic_write(self.path, newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(history)
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=fields, extrasaction="ignore").writerows(history[self.rows_written:])
        self.rows_written = len(history)


def open_tensorboard(out_dir: str):
    """A TensorBoard ``SummaryWriter`` into ``out_dir/tensorboard``, or None when not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: CSV only
        return None
    return SummaryWriter(os.path.join(out_dir, TENSORBOARD_DIR))


def log_scalars(tensorboard, row: dict) -> None:
    for key, value in row.items():
        if key != "step":
            tensorboard.add_scalar(key, value, row["step"])


def progress_bar(total: int, initial: int):
    """The ``train`` bar (tqdm), drawing its 100 % frame once.

    tqdm draws a frame on ``update`` and again on ``close`` (the run's mean rate), so a log or a
    notebook showed the finished bar twice. Here the last step's ``update`` only counts and
    ``close`` draws it; ``set_postfix`` (a new log row) shows with the next frame instead of
    drawing one of its own.
    """
    from tqdm.auto import tqdm

    class TrainingBar(tqdm):
        def update(self, n=1):
            if self.total is not None and self.n + n >= self.total:
                self.n += n  # close() draws the final frame
                return None
            return super().update(n)

        def set_postfix(self, ordered_dict=None, refresh=False, **kwargs):
            super().set_postfix(ordered_dict, refresh=refresh, **kwargs)

    return TrainingBar(total=total, initial=initial, desc="train", dynamic_ncols=True)


def bar_fields(row: dict) -> Dict[str, str]:
    """The progress bar's postfix: a few fields of a log row, short."""
    def short(value) -> str:
        value = float(value)
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3f}"

    return {k: short(v) for k, v in row.items() if k in BAR_FIELDS}


def describe_training(history: List[dict], steps: int, seconds: float) -> str:
    """The summary line of a run: ``"loss 16.248 -> 4.031 over 600 steps (95 s)"`` (first and last
    logged loss; the rows of a resumed run's ``log.csv`` are strings)."""
    if not history:
        return f"{steps} steps, none logged ({seconds:.0f} s)"
    first, last = float(history[0]["loss"]), float(history[-1]["loss"])
    return f"loss {first:.3f} -> {last:.3f} over {steps} steps ({seconds:.0f} s)"


# One colour per quantity, the same in every panel (a held-out curve wears its training colour);
# throughput has its own.
LOSS_COLOURS = {"loss": "tab:blue", "mlm_loss": "tab:orange", "sbo_loss": "tab:green"}
ACCURACY_COLOURS = {"mlm_acc": "tab:orange", "sbo_acc": "tab:green"}
SPEED_COLOUR = "tab:purple"
BASELINE_COLOUR = "0.25"  # dark grey: a reference line, not a curve


def loss_axis_top(history: List[dict], evaluations: Sequence[dict], keys: Sequence[str]) -> Optional[float]:
    """The top of the loss axis: the largest loss after the first tenth of the run, plus a margin,
    so that the first steps (ln(vocab size) per head, far above the rest) do not flatten the
    curves that matter. None (matplotlib's own range) when nothing would be cut off."""
    rows = [*history, *evaluations]
    last_step = max(int(r["step"]) for r in rows)
    values = [float(r[k]) for r in rows for k in keys if r.get(k) not in (None, "")]
    later = [float(r[k]) for r in rows for k in keys
             if r.get(k) not in (None, "") and int(r["step"]) >= last_step / 10]
    if not values or not later or max(later) >= max(values):
        return None
    low, high = min(values), max(later)
    return high + 0.15 * (high - low)


def plot_history(history: List[dict], path: str, evaluations: Sequence[dict] = (),
                 unigram_baselines: Optional[Dict[str, float]] = None) -> str:
    """``training.png``, written atomically: losses, accuracies (when the model reports them) and
    tokens/s against step. ``evaluations`` (``eval_log.csv`` rows: ``step`` and metrics) are drawn
    over the training curves as dashed lines with markers, each in its training curve's colour;
    ``unigram_baselines`` (``{"mlm_acc": 0.075}``: the accuracy of always guessing the most
    frequent held-out target) as dotted dark-grey horizontal lines, labelled on the line. The loss
    axis starts below the first steps' losses when they would flatten the rest (:func:`loss_axis_top`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(rows, key):
        points = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        return [p[0] for p in points], [p[1] for p in points]

    accuracy_keys = [k for k in ACCURACY_COLOURS if k in history[0]]
    panels = ["loss"] + (["accuracy"] if accuracy_keys else []) + ["speed"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2))
    axes = dict(zip(panels, axes))
    panel_keys = [("loss", LOSS_COLOURS, "cross-entropy"), ("accuracy", ACCURACY_COLOURS, "masked-token accuracy")]
    for panel, colours, ylabel in panel_keys:
        if panel not in axes:
            continue
        ax = axes[panel]
        for key, colour in colours.items():
            if key in history[0]:
                ax.plot(*series(history, key), color=colour, linewidth=1.2, label=f"train {key}")
            steps, values = series(evaluations, key)
            if steps:
                ax.plot(steps, values, color=colour, linestyle="--", marker="o", markersize=6,
                        label=f"held-out {key}")
            if key in (unigram_baselines or {}):
                baseline = unigram_baselines[key]
                label = f"held-out {key} of always the most frequent token ({baseline:.3f})"
                ax.axhline(baseline, color=BASELINE_COLOUR, linestyle=":", linewidth=1.6, label=label)
                ax.text(0.98, baseline, "most frequent token", ha="right",
                        transform=ax.get_yaxis_transform(), color=BASELINE_COLOUR, fontsize=8, va="bottom")
        title = ylabel if not evaluations else f"{ylabel}: train (solid), held-out (dashed, dots)"
        if panel == "loss":
            top = loss_axis_top(history, evaluations, [k for k in colours if k in history[0]])
            if top is not None:
                ax.set_ylim(top=top)
                title += "\n(first steps above the axis)"
        else:  # from 0, with room above the curves for the legend
            highest = max((max(line.get_ydata(), default=0.0) for line in ax.get_lines()), default=0.0)
            ax.set_ylim(0, min(1.0, 1.5 * highest) or None)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="upper left" if panel == "accuracy" else "best")
        ax.grid(alpha=0.3)
    ax_speed = axes["speed"]
    ax_speed.plot(*series(history, "tokens_per_s"), color=SPEED_COLOUR, label="tokens / s")
    ax_speed.set_xlabel("step")
    ax_speed.set_ylabel("tokens / s")
    ax_speed.set_title("training throughput", fontsize=10)
    ax_speed.set_ylim(bottom=0)
    ax_speed.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
