"""Compile every Triton kernel of ``spanbert_fast.kernels`` for an H100 (sm_90), no GPU needed.

Run it in a process *without* ``TRITON_INTERPRET`` (under the interpreter ``@triton.jit``
gives interpreted functions, which cannot be compiled); ``test_compile_sm90.py`` does that
in a subprocess. By hand::

    python tests/kernels/sm90_compile.py              # the CI set, ~30 s on 2 cores
    python tests/kernels/sm90_compile.py --full       # every dtype x head dim x layout x flag
    python tests/kernels/sm90_compile.py --all-configs --only 'attention bf16'   # every config
    python tests/kernels/sm90_compile.py --list       # what would be compiled

Where the specialisations come from: nothing here lists kernel signatures, dtypes,
constexprs, block sizes or warps/stages. The scenarios call the kernels' public functions
(forward and backward) on small CPU tensors with Triton's launch replaced by a recorder;
each recorded launch -- the kernel, the launcher's actual arguments and constexprs, and for
an autotuned kernel the configs its autotuner keeps after its own pruning for those
arguments -- is then compiled through Triton's own ``warmup`` path, with a stand-in driver
that reports an sm_90 target (Triton wheels bundle ptxas, so the cubin is really built).
When a launcher changes (an argument added, an int seed turned into a pointer, another
config list), this follows. The scenarios only choose the inputs: dtypes, head dims,
layouts, flags, and shapes like the model's.

Cost: an attention compile takes a few seconds (fp32 ones, IEEE FMA dots, 30-60 s). A
launch that specialises like an earlier one is compiled once, and of an autotuned launch
only one config is compiled, taking the kernel's configs in turn across scenarios;
``--all-configs`` compiles them all. A config that compiles but needs more shared memory
than an H100 block has is reported as TOO BIG (the autotuner would skip it) and the
launch's next config is compiled instead; a launch fails when none fits.

Runtime integer arguments (row counts, ``G``, V-splits) come from the small CPU shapes,
so their divisible-by-16 specialisation can differ from a GPU run; the shapes are
multiples of 16 like the model's so pointers and strides specialise as on the GPU.

Changing the dropout seed of the public functions (``SEED``) is the one place to touch
if their seed argument stops being an int.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("sm90_compile: unset TRITON_INTERPRET (kernels cannot be compiled under the interpreter)")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = GPUTarget("cuda", 90, 32)  # H100: compute capability 9.0, 32 threads a warp
H100_MAX_SHARED = 232448  # bytes of shared memory one block may use on sm_90 (227 KiB)


# --------------------------------------------------------------------------- fake driver
class StandInDriver:
    """What ``JITFunction.run(..., warmup=True)`` asks the active driver: target, device, stream.

    ``target``: the GPU to compile for (sm_90 here; ``benchmarks/precompile.py`` passes the
    real GPU's target so that its compiles land in the Triton cache the launches read).
    """

    def __init__(self, target: GPUTarget = TARGET):
        self.target = target

    def is_active(self):
        return True

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0


# --------------------------------------------------------------------------- launch recorder
@dataclass
class Launch:
    scenario: str
    kernel: JITFunction
    args: tuple
    kwargs: dict
    configs: Optional[list]  # the autotuner's configs after pruning; None for a plain @triton.jit launch


@dataclass
class Recorder:
    scenario: str = ""
    launches: List[Launch] = field(default_factory=list)

    def install(self):
        recorder = self
        original_jit_run = JITFunction.run

        def jit_run(self, *args, grid, warmup, **kwargs):
            if warmup:
                return original_jit_run(self, *args, grid=grid, warmup=warmup, **kwargs)
            recorder.launches.append(Launch(recorder.scenario, self, args, kwargs, None))
            return None

        def autotuner_run(self, *args, **kwargs):
            kwargs.pop("grid", None)
            kwargs.pop("warmup", None)
            if not isinstance(self.fn, JITFunction):
                raise TypeError(f"sm90_compile: autotuned {self.fn!r} wraps another decorator; teach the recorder")
            self.nargs = dict(zip(self.arg_names, args))
            try:
                configs = self.prune_configs(kwargs)
            finally:
                self.nargs = None
            recorder.launches.append(Launch(recorder.scenario, self.fn, args, kwargs, list(configs)))
            return None

        JITFunction.run = jit_run
        Autotuner.run = autotuner_run


# --------------------------------------------------------------------------- scenarios
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def _kernels() -> Dict[str, Any]:
    """Every module of ``spanbert_fast.kernels`` (kernels/*.py), imported, by name."""
    import importlib
    import pkgutil

    import spanbert_fast.kernels as package

    return {info.name: importlib.import_module(f"{package.__name__}.{info.name}")
            for info in pkgutil.iter_modules(package.__path__)}


SEED = 1234  # the dropout seed as the kernels' functional APIs take it


def _attention(dtype, head_dim, mode, window, dropout_p, deterministic=True):
    """Forward + backward of one attention call. mode: dense | seq_lens | varlen.
    ``deterministic=False``: the single-pass backward (the dK/dV kernel with ACCUMULATE_DQ)."""
    attn = _kernels()["attention"]
    batch, heads, seq = 2, 2, 128
    if mode == "varlen":
        lengths = [128, 80]
        cu = torch.tensor([0, lengths[0], sum(lengths)], dtype=torch.int32)
        q, k, v = (torch.randn(sum(lengths), heads, head_dim, dtype=dtype, requires_grad=True) for _ in range(3))
        out = attn.attention_varlen(q, k, v, cu, max(lengths), window=window, dropout_p=dropout_p, seed=SEED,
                                    deterministic=deterministic)
    else:
        # [B, S, H, D] projections viewed as [B, H, S, D], as the model passes them
        q, k, v = (torch.randn(batch, seq, heads, head_dim, dtype=dtype).transpose(1, 2).requires_grad_()
                   for _ in range(3))
        seq_lens = torch.tensor([seq, 80], dtype=torch.int32) if mode == "seq_lens" else None
        out = attn.attention(q, k, v, seq_lens=seq_lens, window=window, dropout_p=dropout_p, seed=SEED,
                             deterministic=deterministic)
    out.sum().backward()


def _attention_keep_mask():
    _kernels()["attention"].attention_dropout_keep_mask(2, 2, 128, 0.1, SEED)


def _gelu_layernorm(dtype, d, has_bias):
    gl = _kernels()["gelu_layernorm"]
    x = torch.randn(64, d, dtype=dtype, requires_grad=True)
    bias = torch.randn(d, dtype=dtype, requires_grad=True) if has_bias else None
    weight = torch.ones(d, dtype=dtype, requires_grad=True)
    ln_bias = torch.zeros(d, dtype=dtype, requires_grad=True)
    gl.bias_gelu_layernorm(x, bias, weight, ln_bias).sum().backward()


def _dropout_add_layernorm(dtype, d, has_bias, p):
    dal = _kernels()["dropout_add_layernorm"]
    x = torch.randn(64, d, dtype=dtype, requires_grad=True)
    residual = torch.randn(64, d, dtype=dtype, requires_grad=True)
    bias = torch.randn(d, dtype=dtype, requires_grad=True) if has_bias else None
    weight = torch.ones(d, dtype=dtype, requires_grad=True)
    ln_bias = torch.zeros(d, dtype=dtype, requires_grad=True)
    dal.bias_dropout_add_layernorm(x, bias, residual, weight, ln_bias, p=p, seed=SEED).sum().backward()


def _bias_gelu(dtype, cols):
    x = torch.randn(64, cols, dtype=dtype, requires_grad=True)
    bias = torch.randn(cols, dtype=dtype, requires_grad=True)
    _kernels()["bias_gelu"].bias_gelu(x, bias).sum().backward()


def _dropout_keep_mask():
    _kernels()["dropout_add_layernorm"].dropout_keep_mask((64, 768), 0.1, SEED, "cpu")


def _masked_lm_loss(dtype, has_bias, has_positions, tf32=False):
    mlm = _kernels()["masked_lm_loss"]
    n, d, vocab = 64, 768, 1000
    hidden = torch.randn(n, d, dtype=dtype, requires_grad=True)
    weight = torch.randn(vocab, d, dtype=dtype, requires_grad=True)
    bias = torch.randn(vocab, dtype=dtype, requires_grad=True) if has_bias else None
    positions = torch.arange(0, n, 3) if has_positions else None
    targets = torch.randint(0, vocab, (n if positions is None else positions.numel(),))
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        loss, _ = mlm.masked_lm_loss(hidden, targets, weight, bias, positions)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    loss.backward()


def scenarios(full: bool = False) -> Dict[str, Callable[[], None]]:
    """name -> call of the kernels' public functions, forward and backward.

    Default (CI): every kernel, and every dtype, head dim, layout and flag value at least once,
    except fp32 for the dot-product kernels (attention, masked-LM loss), whose fp32 compiles take
    ~10x longer. ``full``: the whole dtype x head dim x layout x flag product (slow).
    """
    out: Dict[str, Callable[[], None]] = {}
    bf16, fp16, fp32 = DTYPES

    def add(name, fn, *args):
        out[name] = lambda: fn(*args)

    # Attention: (dtype, head dim, layout, window, dropout). The model runs bf16, d_head 64,
    # varlen (unpadded batches) with dropout; the others are the rest of what the kernels accept.
    if full:
        attention_cases = [(dtype, head_dim, mode, window, p)
                           for dtype in DTYPES for head_dim in (32, 64, 128)
                           for mode in ("dense", "seq_lens", "varlen") for window in (None, 32) for p in (0.0, 0.1)]
    else:
        # fp32 (IEEE FMA dots, no tensor cores) takes 30-60 s a compile: only in the full set
        attention_cases = [
            (bf16, 64, "varlen", None, 0.1),
            (bf16, 128, "dense", 32, 0.0),
            (fp16, 32, "seq_lens", 32, 0.1),
        ]
    for dtype, head_dim, mode, window, p in attention_cases:
        name = (f"attention {DTYPE_NAMES[dtype]} d{head_dim} {mode}"
                f"{' window' if window else ''}{' dropout' if p else ''}")
        add(name, _attention, dtype, head_dim, mode, window, p)
    # the single-pass backward (deterministic=False) at the training launch
    add("attention bf16 d64 varlen dropout single-pass", _attention, bf16, 64, "varlen", None, 0.1, False)
    add("attention keep mask", _attention_keep_mask)

    # Fused norms: d = 768 (base; 1024 specialises the same), 128 (tiny), 8192 (the maximum: the
    # backward's register-pressure fallback configs). (dtype, d, bias, dropout); gelu ignores dropout.
    if full:
        norm_cases = [(dtype, d, has_bias, p) for dtype in DTYPES for d in (128, 768, 8192)
                      for has_bias in (True, False) for p in (0.0, 0.1)]
    else:
        norm_cases = [
            (bf16, 768, True, 0.1),
            (bf16, 768, False, 0.0),
            (fp16, 128, True, 0.0),
            (fp32, 768, False, 0.1),
        ]
    for dtype, d, has_bias, p in norm_cases:
        tag = f"{DTYPE_NAMES[dtype]} d{d}{' bias' if has_bias else ''}"
        if p == 0.0 or not full:
            add(f"gelu_layernorm {tag}", _gelu_layernorm, dtype, d, has_bias)
        add(f"dropout_add_layernorm {tag}{' dropout' if p else ''}", _dropout_add_layernorm, dtype, d, has_bias, p)
    add("dropout_add_layernorm keep mask", _dropout_keep_mask)

    # FFN bias + GeLU: F = 3072 (base; 4096 for large specialises the same), 1000 (not a multiple of 16).
    for dtype, cols in ([(dtype, cols) for dtype in DTYPES for cols in (3072, 1000)] if full
                        else [(bf16, 3072), (fp32, 1000)]):
        add(f"bias_gelu {DTYPE_NAMES[dtype]} F{cols}", _bias_gelu, dtype, cols)

    # Masked-LM loss: (dtype, bias, positions, TF32 for fp32 dots).
    if full:
        loss_cases = [(dtype, has_bias, has_positions, False) for dtype in DTYPES
                      for has_bias in (True, False) for has_positions in (True, False)]
        loss_cases.append((fp32, True, True, True))
    else:
        loss_cases = [(bf16, True, True, False), (fp16, False, False, False)]  # fp32: as attention
    for dtype, has_bias, has_positions, tf32 in loss_cases:
        name = (f"masked_lm_loss {DTYPE_NAMES[dtype]}{' bias' if has_bias else ''}"
                f"{' positions' if has_positions else ''}{' tf32' if tf32 else ''}")
        add(name, _masked_lm_loss, dtype, has_bias, has_positions, tf32)
    return out


def _allow_cpu_tensors():
    """The norm ops refuse CPU tensors outside the interpreter; launches are recorded, never run."""
    common = _kernels()["_layernorm_common"]
    assert hasattr(common, "INTERPRETING"), "sm90_compile: _layernorm_common.INTERPRETING is gone; update this"
    common.INTERPRETING = True  # read by validate_rows at call time; the config lists are already built


# --------------------------------------------------------------------------- kernels to cover
def all_kernels() -> Dict[str, JITFunction]:
    """The kernels: ``@triton.jit`` functions of the kernel modules that no other one calls."""
    fns = _jit_functions()
    called = {
        fn for fn in fns
        for other in fns if other is not fn and re.search(rf"(?<![\w.]){fn.__name__}\s*\(", other.src)
    }
    return {kernel_name(fn): fn for fn in fns if fn not in called}


def kernel_name(fn: JITFunction) -> str:
    return f"{fn.fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"


# --------------------------------------------------------------------------- jobs
@dataclass
class Job:
    """One compile: a recorded launch with one of its configs (the others are fallbacks)."""

    scenario: str
    kernel: JITFunction
    args: tuple
    kwargs: dict
    configs: list  # [config to compile, then the launch's other configs]; [None] without autotuning
    launch: int  # index of the launch (its jobs share it with --all-configs)

    def describe(self, config=None) -> str:
        c = self.configs[0] if config is None else config
        cfg = "" if c is None else f" {c.kwargs} warps={c.num_warps} stages={c.num_stages}"
        return f"{kernel_name(self.kernel)} [{self.scenario}]{cfg}"


def record(full: bool = False, selected: Optional[str] = None) -> List[Launch]:
    """Run the scenarios with Triton's launch replaced by a recorder; returns the launches."""
    recorder = Recorder()
    recorder.install()
    _allow_cpu_tensors()
    torch.manual_seed(0)
    for name, call in scenarios(full).items():
        if selected and not re.search(selected, name):
            continue
        recorder.scenario = name
        call()
    return recorder.launches


def _spec_key(fn: JITFunction, args: tuple, kwargs: dict):
    """Triton's own specialisation of a launch (what its kernel cache keys on)."""
    try:
        binder = fn.device_caches[0][-1]  # (kernel cache, key cache, target, backend, binder) in 3.x
        _, specialization, options = binder(*args, **kwargs)
    except Exception:  # another Triton's internals: no de-duplication, every launch is compiled
        return id(fn), id(args), repr(sorted(kwargs.items()))
    return id(fn), repr(specialization), repr(options)


def _with_config(kwargs: dict, config) -> dict:
    return kwargs if config is None else {**kwargs, **config.all_kwargs()}


def plan(launches: List[Launch], all_configs: bool = False) -> List[Job]:
    """Unique compile jobs. Launches that specialise alike (the same binary) count once; of an
    autotuned launch one config is compiled, taking the kernel's configs in turn so that the
    scenarios together meet most of them (``all_configs``: every config)."""
    jobs: List[Job] = []
    seen_launches, seen_binaries = set(), set()
    turn: Dict[str, int] = {}
    for index, launch in enumerate(launches):
        configs = launch.configs if launch.configs is not None else [None]
        keys = [_spec_key(launch.kernel, launch.args, _with_config(launch.kwargs, c)) for c in configs]
        if tuple(keys) in seen_launches:
            continue
        seen_launches.add(tuple(keys))
        if all_configs:
            picks = range(len(configs))
        else:
            name = kernel_name(launch.kernel)
            picks = [turn.get(name, 0) % len(configs)]
            turn[name] = turn.get(name, 0) + 1
        for i in picks:
            if keys[i] not in seen_binaries:
                seen_binaries.add(keys[i])
                # fallbacks: the autotuner skips configs that do not fit on the GPU and takes another
                others = [] if all_configs else configs[i + 1:] + configs[:i]
                jobs.append(Job(launch.scenario, launch.kernel, launch.args, launch.kwargs, [configs[i]] + others,
                                index))
    return jobs


def _jit_functions() -> List[JITFunction]:
    """Every ``@triton.jit`` function of the kernel modules, helpers included."""
    found: Dict[int, JITFunction] = {}
    for module in _kernels().values():
        for value in vars(module).values():
            fn = value.fn if isinstance(value, Autotuner) else value
            if isinstance(fn, JITFunction) and fn.fn.__module__ == module.__name__:
                found[id(fn)] = fn
    return list(found.values())


def _source_line(error) -> str:
    """``kernels/file.py:LINE`` of a Triton CompilationError (its line counts from the ``def``)."""
    for fn in _jit_functions():
        if fn.src == error.src and hasattr(error.node, "lineno"):
            lines, first = inspect.getsourcelines(fn.fn)
            def_line = first + next(i for i, line in enumerate(lines) if line.lstrip().startswith("def "))
            path = os.path.relpath(inspect.getsourcefile(fn.fn), ROOT)
            return f"{path}:{def_line + error.node.lineno - 1} (in {fn.__name__})"
    return "?"


def explain(error: BaseException) -> str:
    """Where and why: the innermost CompilationError's file:line and source excerpt, and the root cause."""
    from triton.compiler.errors import CompilationError

    chain = [error]
    while chain[-1].__cause__ is not None or (chain[-1].__context__ is not None
                                              and not chain[-1].__suppress_context__):
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    root = chain[-1]
    inner = [e for e in chain if isinstance(e, CompilationError)]
    if not inner:
        return f"{type(root).__name__}: {root}"
    where = _source_line(inner[-1])
    cause = inner[-1].error_message if root is inner[-1] else f"{type(root).__name__}: {root}"
    body = inner[-1].message.split("\n", 1)[-1]  # "at L:C:" then source lines, a ^ marker, the message
    if inner[-1].error_message and body.endswith(inner[-1].error_message):
        body = body[: -len(inner[-1].error_message)]
    excerpt = "\n".join(body.rstrip().splitlines()[-4:])
    return f"{where}: {cause}\n{excerpt}"


def _compile(job: Job, config) -> dict:
    start = time.perf_counter()
    out = dict(what=job.describe(config), ok=False)
    try:
        compiled = job.kernel.warmup(*job.args, grid=(1,), **_with_config(job.kwargs, config))
    except Exception as error:  # CompilationError, PTXASError, MLIR pass failures, ...
        out["error"] = explain(error)
    else:
        out.update(ok=True, shared=compiled.metadata.shared, fits=compiled.metadata.shared <= H100_MAX_SHARED)
    out["seconds"] = round(time.perf_counter() - start, 3)
    return out


def compile_job(job: Job) -> dict:
    """Compile the job's config; when it compiles but needs more shared memory than an H100 block
    has (the autotuner would skip it), compile the launch's other configs until one fits.

    ``ok``: every compile succeeded and the launch has a config that fits. ``too_big``: configs
    that compiled but would not fit (dead weight in the config list, worth a look).
    """
    attempts = []
    for config in job.configs:
        attempts.append(_compile(job, config))
        if not attempts[-1]["ok"] or attempts[-1]["fits"]:
            break
    last = attempts[-1]
    result = dict(
        kernel=kernel_name(job.kernel), scenario=job.scenario, what=attempts[0]["what"], launch=job.launch,
        compiled=last["ok"], ok=last["ok"] and last["fits"], shared=last.get("shared"),
        seconds=round(sum(a["seconds"] for a in attempts), 3),
        too_big=[a["what"] + f" ({a['shared']} B)" for a in attempts if a["ok"] and not a["fits"]],
    )
    if not last["ok"]:
        result["error"] = f"{last['what']}: {last['error']}"
    elif not last["fits"]:
        result["error"] = f"no config of this launch fits in {H100_MAX_SHARED} bytes of shared memory"
    return result


_JOBS: List[Job] = []  # read by the forked workers


def _compile_index(i: int) -> dict:
    return compile_job(_JOBS[i])


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="every dtype x head dim x layout x flag combination")
    parser.add_argument("--all-configs", action="store_true", help="every autotune config of every launch")
    parser.add_argument("--only", default=None, help="only scenarios whose name matches this regular expression")
    parser.add_argument("--processes", type=int, default=_cpus(), help="parallel compile processes")
    parser.add_argument("--list", action="store_true", help="list the compile jobs, compile nothing")
    parser.add_argument("--json", default=None, help="write the full report here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the scenarios run tiny CPU ops; keeps the process fork-friendly
    start = time.perf_counter()
    driver.set_active(StandInDriver())
    launches = record(args.full, args.only)
    _JOBS[:] = plan(launches, args.all_configs)
    recorded = time.perf_counter() - start
    if args.list:
        for job in _JOBS:
            print(job.describe())
        print(f"{len(launches)} launches -> {len(_JOBS)} compile jobs")
        return 0
    processes = max(1, min(args.processes, len(_JOBS)))
    if processes > 1:
        import multiprocessing
        # fork: the workers inherit the recorded launches (tensors, kernel objects) as they are
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            results = pool.map(_compile_index, range(len(_JOBS)), chunksize=1)
    else:
        results = [compile_job(job) for job in _JOBS]
    if args.all_configs:  # one job per config: a launch needs one config that fits, as the autotuner does
        fitting = {r["launch"] for r in results if r["ok"]}
        for r in results:
            if r["compiled"] and not r["ok"] and r["launch"] in fitting:
                r["ok"] = True
                del r["error"]
    kernels = sorted(all_kernels())
    compiled = {r["kernel"] for r in results if r["ok"]}
    report = dict(
        triton=triton.__version__, torch=torch.__version__, launches=len(launches), jobs=len(_JOBS),
        processes=processes, record_seconds=round(recorded, 2), seconds=round(time.perf_counter() - start, 2),
        kernels=kernels, not_compiled=[k for k in kernels if k not in compiled], results=results,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    failed = [r for r in results if not r["ok"]]
    for r in results:
        for what in r["too_big"]:
            print(f"TOO BIG {what}: compiles, but an H100 block cannot hold it (the autotuner skips it)")
    for r in failed:
        print(f"FAILED {r['error']}")
    if not args.only:
        for name in report["not_compiled"]:
            print(f"NOT COMPILED {name}: no scenario compiles it")
    print(f"triton {triton.__version__}: {len(results) - len(failed)}/{len(results)} compile jobs passed for sm_90, "
          f"{len(compiled)}/{len(kernels)} kernels, {report['seconds']} s with {processes} processes")
    return 0 if not failed and not (report["not_compiled"] and not args.only) else 1


if __name__ == "__main__":
    sys.exit(main())
