"""Command-line options of the one training loop, shared by ``pretrain`` and ``finetune-*``.

Each command passes its own defaults; ``None`` leaves an option for the command to fill
later (``pretrain --demo`` and a real run default differently).
"""
from __future__ import annotations

import argparse
from typing import Dict, Optional


def add_loop_arguments(group, *, batch_size=None, max_steps=None, lr=None, save_every=None,
                       max_steps_help: str = "optimizer steps", default_text: Optional[Dict[str, str]] = None) -> None:
    """Add the flags of :class:`spanbert_fast.train.TrainingArgs` to an argparse group.

    ``default_text`` names, for an option the command fills in later (left ``None`` here), the
    default ``--help`` shows: ``{"lr": "1e-4; --demo: 2e-3"}``.
    """
    def said(dest: str, text: str) -> str:
        return f"{text} (default: {default_text[dest]})" if default_text and dest in default_text else text

    group.add_argument("--batch-size", type=int, default=batch_size,
                       help=said("batch_size", "sequences per micro-batch per process"))
    group.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    group.add_argument("--max-steps", type=int, default=max_steps, help=said("max_steps", max_steps_help))
    group.add_argument("--lr", type=float, default=lr, help=said("lr", "peak learning rate"))
    group.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (≥2-dim weights only)")
    group.add_argument("--grad-clip", type=float, default=1.0, help="max global gradient norm")
    group.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                       help="auto: bf16 autocast on CUDA, fp32 on CPU")
    group.add_argument("--compile", action="store_true", help="torch.compile the model")
    group.add_argument("--backend", choices=["auto", "triton", "torch"], default="auto",
                       help="hot-op backend: auto = Triton kernels on CUDA, PyTorch references on CPU")
    group.add_argument("--log-every", type=int, default=10, help="steps per log line (CSV, progress bar)")
    group.add_argument("--save-every", type=int, default=save_every,
                       help=said("save_every", "steps between checkpoints (0: only at the end)"))
    group.add_argument("--seed", type=int, default=0,
                       help="random seed: new weights, batch order and masks, dropout")
    group.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its newest usable checkpoint")
    group.add_argument("--overwrite", action="store_true",
                       help="replace the run in --out (a fresh run into a folder holding one is refused "
                            "otherwise); the old one is moved to --out/replaced-run-*, deleted once the "
                            "new run's first checkpoint exists")
    group.add_argument("--keep-checkpoints", type=int, default=2,
                       help="newest checkpoints kept in --out/checkpoints (0: all); the one just saved is "
                            "always kept")
    group.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


def fill_defaults(args: argparse.Namespace, defaults: dict) -> argparse.Namespace:
    """Set every option the user left unset (``None``) to ``defaults[name]``."""
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def loop_settings(args: argparse.Namespace) -> dict:
    """The :class:`TrainingArgs` fields that :func:`add_loop_arguments` flags set (not steps/out)."""
    return dict(
        lr=args.lr, weight_decay=args.weight_decay, grad_accum=args.grad_accum, grad_clip=args.grad_clip,
        precision=args.precision, compile=args.compile, log_every=args.log_every, save_every=args.save_every,
        seed=args.seed, resume=args.resume, overwrite=args.overwrite, keep_checkpoints=args.keep_checkpoints,
        progress=not args.no_progress, device=args.device,
    )
