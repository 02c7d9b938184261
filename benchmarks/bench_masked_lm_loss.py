"""Masked-position MLM loss, forward+backward: time and extra peak memory.

Case (GPU, bf16; the reference HF measurement's, one H100 2026-11-22): 16384 tokens, 15 % of them masked
(M = 2458 rows, random, sorted), V = 28996, d in {768, 1024}, with decoder bias.
Every implementation returns the gradients of hidden ``[16384, d]``, weight and bias
through ``torch.autograd.grad`` (no accumulation into ``.grad`` between runs):

* ``ours``: ``spanbert_fast.kernels.masked_lm_loss`` with ``validate=False`` (the
  training-step setting: no device sync); ``ours+validate`` with the default range
  checks, to show what the sync costs;
* ``full-logits+CE``: logits for all 16384 tokens, ``F.cross_entropy`` with -100 on
  unmasked tokens (HF ``BertForMaskedLM``; fp32 CE as autocast runs it);
* ``gather+CE``: gather the masked rows, logits for them only, ``F.cross_entropy``;
* ``liger-flce``: Liger-Kernel's fused linear cross-entropy on the gathered rows, when
  ``liger_kernel`` is importable.

Rows: ``TFLOP/s`` counts useful FLOPs only, ``6 * M * d * V`` (forward 2, backward 4),
so the full-logits baseline is charged for the masked rows alone; ``MB`` is the peak
memory above what was allocated before the call (inputs excluded; gradients included),
CUDA only. ``smoke=True`` runs a tiny case on CPU (the kernel under the Triton
interpreter): it checks that the suite runs, not speed.
Before each case it prints the byte model of our backward (``benchmarks/loss_bytes.py``:
bytes read and written per buffer, per call); ``--bytes`` prints only that, no GPU needed.
``python -m benchmarks.bench_masked_lm_loss [--smoke] [--bytes] [--csv PATH]`` prints the rows.
"""
from __future__ import annotations

from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from benchmarks import loss_bytes
from benchmarks.common import Result, bench_ms, interpret_without_cuda, kernel_module, peak_memory_mb, suite_main

interpret_without_cuda()

SUITE = "masked_lm_loss"
MASK_FRACTION = 0.15


def _kernel():
    return kernel_module("masked_lm_loss")


def _liger_loss():
    """Liger's fused linear CE module, or None when liger_kernel is not installed."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except Exception:
        return None
    module = LigerFusedLinearCrossEntropyLoss(ignore_index=-100)

    def loss(hidden, targets, weight, bias, positions):
        out = module(weight, hidden[positions], targets, bias)
        return out[0] if isinstance(out, tuple) else out

    return loss


def implementations(smoke: bool) -> Dict[str, Callable]:
    """name -> ``loss(hidden, targets, weight, bias, positions)`` returning a scalar loss."""
    kernel = _kernel()

    def ours(hidden, targets, weight, bias, positions):
        return kernel.masked_lm_loss(hidden, targets, weight, bias, positions, validate=False)[0]

    def ours_validated(hidden, targets, weight, bias, positions):
        return kernel.masked_lm_loss(hidden, targets, weight, bias, positions)[0]

    def full_logits(hidden, targets, weight, bias, positions):
        labels = torch.full((hidden.shape[0],), -100, dtype=torch.long, device=hidden.device)
        labels[positions] = targets
        return F.cross_entropy(F.linear(hidden, weight, bias).float(), labels)

    def gather_then_ce(hidden, targets, weight, bias, positions):
        return F.cross_entropy(F.linear(hidden[positions], weight, bias).float(), targets)

    impls = {"ours": ours, "ours+validate": ours_validated, "full-logits+CE": full_logits, "gather+CE": gather_then_ce}
    liger = None if smoke else _liger_loss()
    if liger is not None:
        impls["liger-flce"] = liger
    return impls


def make_case(tokens: int, d: int, vocab: int, dtype, device):
    generator = torch.Generator(device="cpu").manual_seed(0)
    n_masked = round(MASK_FRACTION * tokens)
    hidden = torch.randn(tokens, d, generator=generator).to(device, dtype).requires_grad_()
    weight = (torch.randn(vocab, d, generator=generator) * 0.02).to(device, dtype).requires_grad_()
    bias = torch.zeros(vocab).to(device, dtype).requires_grad_()
    positions = torch.randperm(tokens, generator=generator)[:n_masked].sort().values.to(device)
    targets = torch.randint(0, vocab, (n_masked,), generator=generator).to(device)
    return hidden, targets, weight, bias, positions


def print_byte_model(tokens: int, n_masked: int, vocab: int, d: int, element_bytes: int) -> None:
    print(f"byte model of our backward, T{tokens}-M{n_masked}-V{vocab}-d{d}, {element_bytes}-byte elements "
          "(benchmarks/loss_bytes.py):")
    print(loss_bytes.format_table(loss_bytes.backward_traffic(tokens, n_masked, vocab, d, element_bytes)))


def run(smoke: bool, bytes_only: bool = False) -> List[Result]:
    if bytes_only:  # arithmetic: no GPU, nothing timed
        for d in (768, 1024):
            print_byte_model(16384, round(MASK_FRACTION * 16384), 28996, d, 2)
        return []
    if smoke:  # tiny fp32 case; on a GPU machine on the GPU (the kernel needs CUDA tensors there)
        device, dtype = ("cuda" if torch.cuda.is_available() else "cpu"), torch.float32
        shapes = [(64, 32, 97)]
    else:
        if not torch.cuda.is_available():
            raise RuntimeError("bench_masked_lm_loss needs a CUDA GPU (use smoke=True on CPU)")
        device, dtype = "cuda", torch.bfloat16
        shapes = [(16384, 768, 28996), (16384, 1024, 28996)]
    rows: List[Result] = []
    for tokens, d, vocab in shapes:
        hidden, targets, weight, bias, positions = make_case(tokens, d, vocab, dtype, device)
        n_masked = positions.numel()
        case = f"T{tokens}-M{n_masked}-V{vocab}-d{d}"
        print_byte_model(tokens, n_masked, vocab, d, hidden.element_size())
        flops = 6.0 * n_masked * d * vocab
        for impl, loss_fn in implementations(smoke).items():

            def fwd_bwd(loss_fn=loss_fn):
                loss = loss_fn(hidden, targets, weight, bias, positions)
                return torch.autograd.grad(loss, (hidden, weight, bias))

            ms = bench_ms(fwd_bwd, smoke=smoke, reps=1 if smoke else 3)
            extra_mb = peak_memory_mb(fwd_bwd)
            note = "" if extra_mb is None else f"extra peak {extra_mb:.0f} MB"
            rows.append(Result(SUITE, case, impl, "fwd+bwd", ms, "TFLOP/s", flops / ms / 1e9, note))
            if extra_mb is not None:
                rows.append(Result(SUITE, case, impl, "fwd+bwd", ms, "MB", extra_mb, "extra peak memory"))
        del hidden, weight, bias
    return rows


def main(argv=None) -> None:
    def add_arguments(parser):
        parser.add_argument("--bytes", action="store_true", help="print the backward's byte model only (no GPU)")

    suite_main(run, __doc__.splitlines()[0], argv, add_arguments, lambda args: {"bytes_only": args.bytes})


if __name__ == "__main__":
    main()
