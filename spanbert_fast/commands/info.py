"""``spanbert-fast info``: versions, device and which backends can run here; with ``--data``, what
a prepared corpus looks like to the training step (block lengths, padding per batch layout)."""
from __future__ import annotations

import importlib
import platform

import numpy as np


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


def corpus_info(data_dir: str, batch_size: int) -> dict:
    """Block statistics of a prepared corpus and the padding share of each batch layout."""
    from spanbert_fast.data.prepare import BlockDataset
    from spanbert_fast.data.static_shapes import padding_fractions
    from spanbert_fast.data.tokenizer import casing_decision

    dataset = BlockDataset(data_dir)
    lengths = dataset.block_lengths()
    pads = padding_fractions(lengths, dataset.block_size, min(batch_size, len(lengths)))
    return {
        "corpus": data_dir,
        "blocks": f"{len(lengths):,} of at most {dataset.block_size} tokens (+[CLS]/[SEP])",
        "tokens": f"{int(lengths.sum()):,}",
        "tokenizer casing": casing_decision(dataset.path / dataset.meta["files"]["tokenizer"]),
        "block length": f"mean {lengths.mean():.1f}, median {np.median(lengths):.0f}, "
                        f"{100 * (lengths == dataset.block_size).mean():.1f} % full",
        f"padding, batch {batch_size}": f"padded {100 * pads['padded']:.1f} % | packed (CUDA default) 0 % | "
                                        f"fixed shapes (--cuda-graphs) {100 * pads['fixed']:.1f} %",
    }


def _print(info: dict) -> None:
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")


def run(args) -> int:
    if args.batch_size < 1:
        raise SystemExit(f"info: --batch-size must be at least 1, got {args.batch_size}")
    _print(collect_info())
    if args.tokenizer:
        from spanbert_fast.data.tokenizer import casing_decision
        try:
            _print({"tokenizer": args.tokenizer, "tokenizer casing": casing_decision(args.tokenizer)})
        except (OSError, ValueError) as error:
            raise SystemExit(f"info: --tokenizer: {error}") from error
    if args.data:
        print()
        try:
            _print(corpus_info(args.data, args.batch_size))
        except (OSError, ValueError) as error:  # a missing or damaged corpus: one line naming the file
            raise SystemExit(f"info: error: {error}") from error
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("info", help="print versions, device and backend availability")
    parser.add_argument("--data", help="also describe this prepared corpus: block lengths and the share of "
                                       "padding each batch layout computes")
    parser.add_argument("--tokenizer", help="also say whether this tokenizer (folder, tokenizer.json or vocab.txt) "
                                            "lower-cases, and why")
    parser.add_argument("--batch-size", type=int, default=32, help="with --data: sequences per batch (default 32)")
    parser.set_defaults(func=run)
