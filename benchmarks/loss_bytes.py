"""Byte model of the masked-LM-loss backward: what each step reads and writes, buffer by buffer.

Arithmetic, no GPU: it follows ``masked_lm_loss_backward`` in ``kernels/masked_lm_loss.py``
step by step (CUDA path; the chunking comes from the kernel module itself), so that a
change to the backward shows up here as bytes. Conventions:

* each kernel or library call reads each input region once and writes each output once
  (ideal reuse inside one call: a GEMM operand read by many tiles counts once); nothing
  is assumed to stay in cache from one call to the next;
* small vectors (targets, positions, lse, the valid-row count) are counted; the sort that
  ``index_put_(accumulate=True)`` runs over the M positions is not (M int64, < 0.1 MB);
* bf16/fp16 dX accumulates with ``torch.addmm(..., out_dtype=torch.float32)`` (cuBLAS
  beta = 1). Where a torch build lacks it the backward falls back to a GEMM into an fp32
  temporary plus an add, 2 x 4 x M x d more bytes per chunk after the first (not counted).

``python -m benchmarks.loss_bytes`` prints the tables for the base shapes (16384 tokens,
M = 2458, V = 28996, d = 768, bf16): the call the pre-training heads make (rows gathered before
the head's transform) and the API call with positions; ``bench_masked_lm_loss`` prints the
latter, the call it times.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import List

from benchmarks.common import interpret_without_cuda, kernel_module

interpret_without_cuda()

BASE_SHAPE = dict(tokens=16384, rows=2458, vocab=28996, d=768, element_bytes=2)  # bf16


@dataclass(frozen=True)
class Traffic:
    step: str  # the call: "dlogits kernel", "dW GEMM", ...
    buffer: str  # what it reads or writes
    read: int  # bytes
    written: int  # bytes


def backward_traffic(tokens: int, rows: int, vocab: int, d: int, element_bytes: int = 2,
                     positions: bool = True) -> List[Traffic]:
    """Bytes of one ``masked_lm_loss_backward`` call with a bias.

    ``tokens``: rows of hidden (N); ``rows``: selected rows (M); ``element_bytes``: 2 for
    bf16/fp16, 4 for fp32 (then the fp32 GEMM needs no cast). ``positions=True``: the API call
    on ``[N, d]`` hidden states with M positions (gather, then a scatter into a zeroed
    ``[N, d]`` gradient); ``positions=False``: the call the pre-training heads make, on rows
    already gathered before the head's transform (``hidden`` is ``[M, d]``; ``tokens`` unused).
    """
    mlm = kernel_module("masked_lm_loss")
    N, M, V, e = tokens, rows, vocab, element_bytes
    x = M * d * e  # the gathered rows, [M, d]
    dx32 = M * d * 4  # fp32 dX accumulator (several chunks only)
    db_groups = -(-M // mlm._DB_GROUP)  # the bias gradient's partial sums, one row per 64 rows of dz
    out: List[Traffic] = []
    if positions:
        out.append(Traffic("gather rows", "hidden[positions] -> x [M, d]", x + M * 8, x))
    out.append(Traffic("scale", "targets -> valid count -> s", M * 8 + M, M + 4))
    chunk = mlm._dlogits_chunk_cols(M, V, e)
    one_chunk = chunk == V
    for v_begin in range(0, V, chunk):
        cols = min(chunk, V - v_begin)
        dz_cols = M * cols * e  # the dz view the GEMMs read
        tag = f"[chunk {v_begin // chunk}: {cols} cols]"
        if one_chunk:  # one GEMM, written once in the input dtype
            dx_step = Traffic(f"dX GEMM {tag}", "dz, W -> dx", dz_cols + cols * d * e, x)
        else:
            dx_step = Traffic(f"dX GEMM {tag}", "dz, W[chunk]" + ("" if v_begin == 0 else ", dx") + " -> dx fp32",
                              dz_cols + cols * d * e + (0 if v_begin == 0 else dx32), dx32)
        out += [
            Traffic(f"dlogits kernel {tag}", "x, W[chunk], bias[chunk], lse, targets, s",
                    x + cols * d * e + cols * e + M * 4 + M * 8 + 4, 0),
            Traffic(f"dlogits kernel {tag}", "s * dz [M, padded cols]", 0, M * mlm._padded_cols(cols) * e),
            Traffic(f"dlogits kernel {tag}", "db partial sums fp32 [groups, cols]", 0,
                    mlm._db_partial_rows(M) * cols * 4),
            Traffic(f"db group sum {tag}", "partials -> db[chunk] fp32", db_groups * cols * 4, cols * 4),
            Traffic(f"dW GEMM {tag}", "dz, x -> dW[chunk]", dz_cols + x, cols * d * e),
            dx_step,
        ]
    if not one_chunk and e != 4:
        out.append(Traffic("dX cast", "dx fp32 -> input dtype", dx32, x))
    if positions:
        out += [
            Traffic("dhidden init", "zeros [N, d]", 0, N * d * e),
            Traffic("scatter", "dhidden[positions] += dX", x + M * 8 + x, x),
        ]
    out.append(Traffic("db cast (autograd)", "db fp32 -> bias dtype", V * 4, V * e))
    return out


def total_bytes(traffic: List[Traffic]) -> int:
    return sum(t.read + t.written for t in traffic)


def format_table(traffic: List[Traffic]) -> str:
    lines = [f"{'step':40} {'buffer':42} {'read MB':>9} {'written MB':>11}"]
    for t in traffic:
        lines.append(f"{t.step:40} {t.buffer:42} {t.read / 1e6:9.2f} {t.written / 1e6:11.2f}")
    read, written = sum(t.read for t in traffic), sum(t.written for t in traffic)
    lines.append(f"{'total':83} {read / 1e6:9.2f} {written / 1e6:11.2f}")
    lines.append(f"read + written: {(read + written) / 1e9:.3f} GB per backward call")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=BASE_SHAPE["d"], help="hidden size")
    args = parser.parse_args(argv)
    shape = {**BASE_SHAPE, "d": args.d}
    print(f"masked_lm_loss backward as the pre-training heads call it: rows gathered first, "
          f"M{shape['rows']} V{shape['vocab']} d{shape['d']} ({shape['element_bytes']}-byte elements)")
    print(format_table(backward_traffic(**shape, positions=False)))
    print(f"\nmasked_lm_loss backward with positions (the API on hidden states), T{shape['tokens']} "
          f"M{shape['rows']} V{shape['vocab']} d{shape['d']}")
    print(format_table(backward_traffic(**shape)))


if __name__ == "__main__":
    main()
