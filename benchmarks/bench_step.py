"""One pre-training step, end to end: ours vs HF ``BertForMaskedLM`` + SDPA, eager and torch.compile.

A step is ``zero_grad -> forward (bf16 autocast on CUDA) -> loss.backward() -> AdamW(fused=True)
.step()``, weight decay 0.01 on >= 2-dim weights (:func:`spanbert_fast.train.parameter_groups`),
dropout 0.1 on both models, all in one process so the ratios are side by side:

* ``ours``: :class:`spanbert_fast.SpanBertForPreTraining` with ``backend="auto"`` (the Triton
  kernels on CUDA), MLM + SBO heads at the predicted rows only;
* ``hf-sdpa``: ``transformers.BertForMaskedLM`` with ``attn_implementation="sdpa"``, labels
  ``-100`` off the masked positions, so the full-vocabulary MLM loss as HF users train it
  (no SBO head: HF has none). Without transformers (``./setup.sh`` does not install it) the
  suite runs our rows alone and says in one line that these need ``pip install spanbert-fast[hf]``;
* ``+compile``: the same model through ``torch.compile`` (default inductor; ``torch._dynamo``
  is reset before each compiled model so shapes of an earlier case do not leak in).
* ``ours+cudagraph`` (CUDA only): our step captured once as a CUDA graph and replayed
  (AdamW ``capturable=True``), as ``spanbert-fast pretrain --cuda-graphs`` trains.

Cases: SpanBERT-base and -large at B32 x S512, every row a full 512-token block (``dense``),
and a ``pad`` variant with real lengths uniform in [128, 512], padded to the batch's longest
row. Batches go through the training data path (:func:`make_batch`): random token ids with a
synthetic word segmentation, masked by :class:`spanbert_fast.data.SpanMasker` (15 % of each
block in geometric word spans, SBO targets) and collated by
:func:`spanbert_fast.data.collate.collate_masked_blocks`.

Rows per (case, impl), ``mode="train step"``, ``ms`` = median ms per step
(``triton.testing.do_bench`` with a long warm-up and repetition window):

* ``tokens/s``: real (non-padding) tokens per second;
* ``TFLOP/s``: useful FLOPs (:mod:`benchmarks.flops`, real tokens only; ours also
  counts its SBO head);
* ``MFU %``: that TFLOP/s over a bf16 matmul 8192^3 measured in the same run (its own row);
* ``peak MB``: ``torch.cuda.max_memory_allocated`` over one step after warm-up (weights, grads
  and optimizer state included), CUDA only;
* ``x hf-sdpa tokens/s`` and ``x hf-sdpa peak memory``: ratios to the eager HF row of the case;
* ``host syncs`` (ours, CUDA only): synchronising CUDA calls in one step under
  ``torch.cuda.set_sync_debug_mode("warn")``, ``extra`` says where.

``smoke=True``: a tiny one-layer config, the ``pad`` variant only (two rows, at most 32
tokens), CPU, ``backend="torch"``, two steps per model, no compiled rows unless
``with_compile=True`` (then dynamo's ``eager`` backend: graph capture only, no C++ build; it
costs 10-20 s of CPU, tests/test_bench_step.py runs it once): it checks that the suite runs,
not speed.
``python -m benchmarks.bench_step [--smoke] [--preset base] [--variant dense] [--no-compile]
[--csv PATH]`` runs a part (one CUDA command per preset fits a 10-minute limit better).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
import random
import traceback
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from benchmarks import flops as F
from benchmarks.common import Result, bench_ms, suite_main

SUITE = "step"
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 100, 101, 102, 103  # BERT-cased WordPiece
FIRST_REGULAR_ID = 104  # token ids of the synthetic text are drawn from [104, vocab)
WORD_START_P = 0.75  # synthetic word segmentation: ~1.3 WordPiece tokens per word
WEIGHT_DECAY, LR = 0.01, 1e-4
MATMUL_SIZE = 8192
STEP_WARMUP_MS, STEP_REP_MS = 1000, 3000  # do_bench windows: a step is 20-150 ms on an H100
BASELINE = "hf-sdpa"
HF_EXTRA_INSTALL = "pip install spanbert-fast[hf]"  # what the baseline rows need (transformers)

PRESETS = ("base", "large")
VARIANTS = ("dense", "pad")
FULL_SHAPE = dict(batch=32, seq_len=512)
SMOKE_CONFIG = dict(vocab_size=256, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=64, sbo_position_embedding_size=8)
SMOKE_SHAPE = dict(batch=2, seq_len=32)


# --------------------------------------------------------------------------- batches
@dataclass
class StepBatch:
    """One batch in both formats, with the counts the FLOP formulas need."""

    ours: Dict[str, object]  # the packed training format (collate_masked_blocks + pack_batch), as pretrain on CUDA
    hf: Dict[str, torch.Tensor]  # input_ids, attention_mask, labels (-100 off the masked positions)
    lengths: List[int]  # real tokens per row, [CLS] and [SEP] included
    n_masked: int
    n_sbo: int

    def to(self, device) -> "StepBatch":
        move = lambda d: {k: v.to(device) if torch.is_tensor(v) else v for k, v in d.items()}  # noqa: E731
        return StepBatch(move(self.ours), move(self.hf), self.lengths, self.n_masked, self.n_sbo)


def make_batch(lengths: Sequence[int], vocab_size: int, seed: int = 0) -> StepBatch:
    """Rows of the given real lengths (``[CLS] block [SEP]``), masked and collated as in training.

    The blocks are random ids from ``[104, vocab)`` (no special token) with a synthetic word
    segmentation (a token starts a word with probability ``WORD_START_P``, about the 1.3
    WordPiece tokens per word of English text); :class:`spanbert_fast.data.SpanMasker` masks them
    (span lengths in words, exact 15 % budget, merging, 80/10/10 per span, SBO targets) and
    :func:`spanbert_fast.data.collate.collate_masked_blocks` pads them to the longest row. HF gets
    the padded batch; ours gets its packed form (:func:`~spanbert_fast.data.collate.pack_batch`),
    which is what ``spanbert-fast pretrain`` feeds the model on CUDA (``--batch-layout auto``).
    """
    from spanbert_fast.data import SpanMasker, SpecialIds
    from spanbert_fast.data.collate import collate_masked_blocks, pack_batch

    special = SpecialIds(pad=PAD_ID, unk=UNK_ID, cls=CLS_ID, sep=SEP_ID, mask=MASK_ID)
    masker = SpanMasker(special, vocab_size, seed=seed)
    rng = np.random.default_rng(seed)
    blocks = []
    for index, length in enumerate(lengths):
        n = length - 2
        token_ids = rng.integers(FIRST_REGULAR_ID, vocab_size, size=n)
        word_starts = rng.random(n) < WORD_START_P
        word_starts[:1] = True
        blocks.append(masker(token_ids, word_starts, epoch=0, index=index))
    padded = collate_masked_blocks(blocks, special)
    rows, width = padded["input_ids"].shape
    labels = torch.full((rows * width,), -100, dtype=torch.long)
    labels[padded["mlm_positions"]] = padded["mlm_labels"]
    hf = dict(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], labels=labels.view(rows, width))
    ours = pack_batch(padded)
    return StepBatch(ours, hf, list(lengths), int(ours["mlm_positions"].numel()), int(ours["sbo_left"].numel()))


def case_lengths(variant: str, batch: int, seq_len: int, seed: int = 0) -> List[int]:
    """``dense``: every row ``seq_len`` long; ``pad``: uniform in ``[seq_len / 4, seq_len]``."""
    if variant == "dense":
        return [seq_len] * batch
    if variant == "pad":
        rng = random.Random(seed + 1)
        return [rng.randint(seq_len // 4, seq_len) for _ in range(batch)]
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


# --------------------------------------------------------------------------- models
def build_ours(config, device, backend: str) -> torch.nn.Module:
    from spanbert_fast import SpanBertForPreTraining

    # validate_targets=False as in `spanbert-fast pretrain`: the masker checked the ids
    model = SpanBertForPreTraining(config, backend=backend, validate_targets=False).to(device).train()
    return model


def build_hf(config, device) -> torch.nn.Module:
    """``BertForMaskedLM`` with the same shapes and dropout as ``config``, SDPA attention."""
    from transformers import BertConfig, BertForMaskedLM

    hf_config = BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size, hidden_act="gelu",
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        max_position_embeddings=config.max_position_embeddings, type_vocab_size=config.type_vocab_size,
        layer_norm_eps=config.layer_norm_eps, pad_token_id=config.pad_token_id, attn_implementation="sdpa",
    )
    model = BertForMaskedLM(hf_config)
    if model.config._attn_implementation != "sdpa":
        raise RuntimeError(f"BertForMaskedLM runs {model.config._attn_implementation!r} attention, not 'sdpa'")
    return model.to(device).train()


def _ours_loss(model, batch):
    return model(**batch).loss


def _hf_loss(model, batch):
    return model(**batch).loss


def make_step(model: torch.nn.Module, loss_fn: Callable, batch: Dict[str, torch.Tensor],
              compile_backend: Optional[str], cuda_graph: bool = False) -> Callable[[], None]:
    """A closure running one optimizer step of ``model`` on ``batch`` (fresh fused AdamW).

    ``cuda_graph``: the step is captured once (after eager warm-up steps on a side stream, as
    ``spanbert_fast.train.cuda_graphs`` does in training) and the closure replays it.
    """
    from spanbert_fast.train import parameter_groups

    cuda = next(model.parameters()).is_cuda
    graph_options = {"capturable": True, "lr": torch.tensor(LR, device="cuda")} if cuda_graph else {"lr": LR}
    optimizer = torch.optim.AdamW(parameter_groups(model, WEIGHT_DECAY), **graph_options,
                                  **({"fused": True} if cuda else {}))
    forward = model
    if compile_backend is not None:
        torch._dynamo.reset()
        forward = torch.compile(model, backend=compile_backend)

    def update():
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not cuda_graph) if cuda \
                else contextlib.nullcontext():
            loss = loss_fn(forward, batch)
        loss.backward()
        optimizer.step()

    def step():
        optimizer.zero_grad(set_to_none=True)
        update()

    if not cuda_graph:
        return step
    from spanbert_fast.train.cuda_graphs import GRAPH_WARMUP_STEPS, capture, on_side_stream

    for _ in range(GRAPH_WARMUP_STEPS):  # Triton compiles and autotunes, AdamW creates its state
        on_side_stream(step)
    optimizer.zero_grad(set_to_none=True)  # the capture allocates the grads each replay overwrites
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    graph, _ = capture(update)

    def replay():
        graph.replay()

    # A replay allocates nothing: the step's memory (activations in the graph's pool) is the
    # capture's peak, which step_peak_mb reads from here.
    replay.capture_peak_mb = torch.cuda.max_memory_allocated() / 1e6
    return replay


# --------------------------------------------------------------------------- measuring
def time_step(step: Callable[[], None], smoke: bool) -> float:
    """Median ms per step: do_bench with long windows on CUDA, two wall-clock runs in smoke mode."""
    if torch.cuda.is_available() and not smoke:
        import triton.testing

        step()  # compile, autotune, allocate optimizer state
        torch.cuda.synchronize()
        return float(triton.testing.do_bench(step, warmup=STEP_WARMUP_MS, rep=STEP_REP_MS, return_mode="median"))
    return bench_ms(step, smoke=True, reps=1)


def step_peak_mb(step: Callable[[], None]) -> Optional[float]:
    """Peak allocated CUDA memory during one (warm) step, MB; None without CUDA. A CUDA-graph
    step reports its capture's peak (``capture_peak_mb``): replays allocate nothing new."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return max(torch.cuda.max_memory_allocated() / 1e6, getattr(step, "capture_peak_mb", 0.0))


def host_syncs(step: Callable[[], None]) -> Tuple[int, str]:
    """Synchronising CUDA calls in one step (``set_sync_debug_mode("warn")``) and where they are."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    where = collections.Counter(f"{w.filename.rsplit('/', 2)[-1] if '/' in w.filename else w.filename}:{w.lineno}"
                                for w in syncs)
    return len(syncs), "; ".join(f"{loc} x{n}" for loc, n in where.most_common()) or "none"


def matmul_ceiling(smoke: bool) -> Result:
    """bf16 matmul 8192^3 TFLOP/s (CPU smoke: fp32 128^3): the MFU denominator of this run."""
    cuda = torch.cuda.is_available() and not smoke
    size = MATMUL_SIZE if cuda else 128
    dtype = torch.bfloat16 if cuda else torch.float32
    device = "cuda" if cuda else "cpu"
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    ms = bench_ms(lambda: torch.matmul(a, b), smoke=smoke)
    dtype_name = str(dtype).replace("torch.", "")
    return Result(SUITE, f"matmul-{size}x{size}x{size}-{dtype_name}", "torch.matmul", "fwd", ms, "TFLOP/s",
                  F.tflops(F.matmul_flops(size, size, size), ms), "MFU denominator of this run")


def hf_available() -> bool:
    """Whether ``transformers`` imports: the HF baseline rows need it (``pip install spanbert-fast[hf]``)."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def _impls(compile_backend: Optional[str], with_compile: bool, with_graphs: bool, with_hf: bool = True):
    """(name, family, compile backend, CUDA graph) in measuring order; the baseline comes first."""
    impls = []
    if with_hf:
        impls.append((BASELINE, "hf", None, False))
        if with_compile:
            impls.append((f"{BASELINE}+compile", "hf", compile_backend, False))
    impls.append(("ours", "ours", None, False))
    if with_graphs:
        impls.append(("ours+cudagraph", "ours", None, True))
    if with_compile:
        impls.append(("ours+compile", "ours", compile_backend, False))
    return impls


def run(smoke: bool = False, presets: Optional[Sequence[str]] = None, variants: Optional[Sequence[str]] = None,
        with_compile: Optional[bool] = None) -> List[Result]:
    """Every (preset, variant, impl) row; see the module docstring. ``with_compile``: default ``not smoke``."""
    with_compile = (not smoke) if with_compile is None else with_compile
    from spanbert_fast import SpanBertConfig

    cuda = torch.cuda.is_available() and not smoke
    device = torch.device("cuda" if cuda else "cpu")
    backend = "auto" if cuda else "torch"
    compile_backend = "inductor" if cuda else "eager"
    presets = list(presets or (["tiny"] if smoke else PRESETS))
    variants = list(variants or (["pad"] if smoke else VARIANTS))

    with_hf = hf_available()
    if not with_hf:  # ours alone: the table has no ratio rows (they are to the HF baseline)
        print(f"[bench] {SUITE}: transformers is not installed, so only our rows run; the {BASELINE} rows "
              f"need `{HF_EXTRA_INSTALL}`", flush=True)
    ceiling = matmul_ceiling(smoke)
    rows: List[Result] = [ceiling]
    note = "bf16 autocast, fused AdamW" if cuda else "CPU smoke: checks the suite runs, not a speed figure"
    for preset in presets:
        config = SpanBertConfig(**SMOKE_CONFIG) if preset == "tiny" else SpanBertConfig.preset(preset)
        shape = SMOKE_SHAPE if preset == "tiny" else FULL_SHAPE
        batches = {}
        for variant in variants:
            lengths = case_lengths(variant, shape["batch"], shape["seq_len"])
            case = f"{preset}-B{shape['batch']}-S{shape['seq_len']}"
            if variant == "pad":
                case += f"-pad{shape['seq_len'] // 4}..{shape['seq_len']}"
            batches[variant] = (case, make_batch(lengths, config.vocab_size).to(device))
        measured: Dict[Tuple[str, str], Tuple[float, Optional[float]]] = {}
        for family in ("hf", "ours") if with_hf else ("ours",):
            torch.manual_seed(0)
            model = build_hf(config, device) if family == "hf" else build_ours(config, device, backend)
            loss_fn = _hf_loss if family == "hf" else _ours_loss
            for variant in variants:
                case, batch = batches[variant]
                for impl, impl_family, impl_compile, impl_graph in _impls(compile_backend, with_compile,
                                                                          cuda and not smoke, with_hf):
                    if impl_family != family:
                        continue
                    inputs = batch.hf if family == "hf" else batch.ours
                    failure = None
                    try:
                        impl_rows, ms, peak = _measure_impl(model, loss_fn, inputs, impl_compile, smoke, cuda,
                                                            family == "ours" and not impl_graph, impl_graph)
                    except Exception as err:  # an OOM or compile error of one impl must not lose the others
                        if smoke:
                            raise
                        traceback.print_exc()
                        failure = f"{type(err).__name__}: {str(err)[:300]}"
                    model.zero_grad(set_to_none=True)
                    if failure is not None:  # outside the except block: its traceback no longer pins memory
                        rows.append(Result(SUITE, case, impl, "train step", float("nan"), "failed", 0.0, failure))
                        _free_memory()
                        continue
                    measured[(case, impl)] = (ms, peak)
                    rows += _step_rows(case, impl, ms, peak, batch, config, family, ceiling.value, note)
                    rows += [dataclasses.replace(r, case=case, impl=impl) for r in impl_rows]
                    _free_memory()
            del model
            _free_memory()
        rows += _ratio_rows(measured)
    return rows


def _measure_impl(model, loss_fn, inputs, compile_backend, smoke, cuda, check_syncs, cuda_graph=False):
    """``(extra rows, ms per step, peak MB)`` of one implementation on one batch."""
    step = make_step(model, loss_fn, inputs, compile_backend, cuda_graph)
    ms = time_step(step, smoke)
    peak = step_peak_mb(step) if cuda else None
    extra_rows = []
    if cuda and check_syncs:
        count, where = host_syncs(step)
        extra_rows.append(Result(SUITE, "", "", "train step", ms, "host syncs", float(count), where))
    return extra_rows, ms, peak


def _step_rows(case, impl, ms, peak, batch: StepBatch, config, family, peak_tflops, note) -> List[Result]:
    n_sbo = batch.n_sbo if family == "ours" else 0
    flops = F.train_step_flops(batch.lengths, config.hidden_size, config.num_hidden_layers,
                               config.intermediate_size, config.vocab_size, batch.n_masked, n_sbo,
                               config.sbo_position_embedding_size)
    tokens = sum(batch.lengths)
    achieved = F.tflops(flops, ms)
    counts = f"{tokens} real tokens, {batch.n_masked} masked, {n_sbo} SBO targets; {note}"
    rows = [
        Result(SUITE, case, impl, "train step", ms, "tokens/s", tokens / ms * 1e3, counts),
        Result(SUITE, case, impl, "train step", ms, "TFLOP/s", achieved, "useful FLOPs (benchmarks/flops.py)"),
        Result(SUITE, case, impl, "train step", ms, "MFU %", F.mfu_percent(achieved, peak_tflops),
               "vs the matmul row of this run"),
    ]
    if peak is not None:
        rows.append(Result(SUITE, case, impl, "train step", ms, "peak MB", peak, "max_memory_allocated, one step"))
    return rows


def _ratio_rows(measured: Dict[Tuple[str, str], Tuple[float, Optional[float]]]) -> List[Result]:
    rows = []
    for (case, impl), (ms, peak) in measured.items():
        if impl == BASELINE or (case, BASELINE) not in measured:
            continue
        base_ms, base_peak = measured[(case, BASELINE)]
        rows.append(Result(SUITE, case, impl, "train step", ms, f"x {BASELINE} tokens/s", base_ms / ms,
                           "same batch, same run"))
        if peak is not None and base_peak:
            rows.append(Result(SUITE, case, impl, "train step", ms, f"x {BASELINE} peak memory", peak / base_peak,
                               "same batch, same run"))
    return rows


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _add_arguments(parser) -> None:
    parser.add_argument("--preset", action="append", choices=PRESETS, help="repeatable; default: base and large")
    parser.add_argument("--variant", action="append", choices=VARIANTS, help="repeatable; default: both")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")


def main(argv: Optional[List[str]] = None) -> None:
    suite_main(run, __doc__.splitlines()[0], argv, add_arguments=_add_arguments,
               run_kwargs=lambda args: dict(presets=args.preset, variants=args.variant,
                                            with_compile=False if args.no_compile else None))

if __name__ == "__main__":
    main()
