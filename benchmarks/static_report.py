"""Static report of every Triton kernel for an H100/H200 (sm_90), on a machine without a GPU.

``python -m benchmarks.static_report --out DIR [--presets base,large] [--dtypes bf16]
[--dropouts 0,0.1]`` compiles every kernel and every autotune config at the launch shapes
of BERT-base and BERT-large training, and writes

* ``DIR/static.csv``, one row per (kernel, config, dropout), columns :data:`COLUMNS`:

  - ``regs``: registers per thread; ``spill_bytes``: ptxas' "bytes spill stores";
  - ``smem_bytes``: shared memory one block needs (Triton's figure; over
    :data:`SM90_MAX_SHARED` the autotuner skips the config at run time);
  - ``wgmma`` / ``tma``: SASS instructions of the Hopper matrix unit (``HGMMA``...) and
    of the tensor memory accelerator (``UTMALDG``, ``UTMASTG``, ``UBLKCP``...): 0 = unused;
  - ``sass_per_iter``: SASS instructions of the innermost loop body (a back-branch ``BRA``
    whose span holds no other back-branch; of several innermost loops, the first in address
    order: the hot one, e.g. attention's loop over interior tiles, which the compiler lays out
    before the loop over masked edge tiles; ``static.md`` lists every loop). A kernel without
    a loop reads ``no loop: N whole kernel``.

* ``DIR/static.md``: the same as a table, with the problems first (spills, too much shared
  memory) and the kernels no scenario launched.

Where the launches come from (nothing here lists kernels, signatures or configs): the
offline-compile harness ``tests/kernels/sm90_compile.py`` records the launches of real calls
on CPU tensors (Triton's launch replaced by a recorder) and compiles each recorded launch
through Triton's own ``warmup`` path for a stand-in sm_90 driver. The calls:

* the model's training step: :class:`spanbert_fast.SpanBertForPreTraining` (two encoder
  layers: one full, one cut to the predicted rows as pre-training runs the last) with the
  Triton backend, forward and backward on a packed batch of two 512-token blocks from
  :func:`benchmarks.bench_step.make_batch` (15 % masked, SBO targets), for each preset
  (d 768 / 1024, 12 / 16 heads, head dim 64, vocab 28996) and each dropout. A kernel the model
  launches appears here without any edit;
* the masked-LM loss at 16384 tokens, 2458 predicted rows, vocab 30522 (BERT's uncased vocab);
* for kernels the model does not launch (test helpers such as the dropout keep masks), the
  harness's own scenarios. A kernel of ``kernels/`` that nothing launches is listed as such.

Shapes are those of a B32 x S512 step where they matter to the binary (the constexprs, the
autotuner's pruning, the divisibility by 16 of strides and sizes); the batch itself is two
rows, since the row count only changes the grid. ``tests/test_static_report.py`` (CI) fails
when a config of an autotune list spills or needs more shared memory than sm_90 has.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "tests" / "kernels" / "sm90_compile.py"
COLUMNS = ["kernel", "config", "dropout", "regs", "spill_bytes", "smem_bytes", "wgmma", "tma", "sass_per_iter"]
SM90_MAX_SHARED = 232448  # bytes of shared memory one block may use on sm_90 (227 KiB)
PRESETS = ("base", "large")
DROPOUTS = (0.0, 0.1)
NO_DROPOUT = "-"  # the dropout column of a kernel whose binary does not depend on it
BLOCK_LEN = 512  # S: tokens per pre-training block
MODEL_LAYERS = 2  # one full encoder layer and the last one, cut to the predicted rows
LOSS_TOKENS, LOSS_MASKED, LOSS_VOCABS = 16384, 2458, (30522,)  # T, M and the vocab the model does not use
WGMMA_OPCODES = re.compile(r"^[HIQ]GMMA\b|^WGMMA")
TMA_OPCODES = re.compile(r"^(UTMA\w*|UBLKCP\w*|UBLKRED\w*|UBLKPF\w*)")
SASS_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
BRANCH = re.compile(r"^(?:@!?U?P\w+\s+)?BRA(?:\.\w+)*\s+(?:`\()?(0x[0-9a-f]+)")
PTXAS_REGS = re.compile(r"Used (\d+) registers")
PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores")


def _harness():
    """``tests/kernels/sm90_compile.py``, imported by path (``tests`` is not a package)."""
    if "sm90_compile" not in sys.modules:
        import importlib.util

        spec = importlib.util.spec_from_file_location("sm90_compile", HARNESS)
        module = importlib.util.module_from_spec(spec)
        sys.modules["sm90_compile"] = module
        spec.loader.exec_module(module)
    return sys.modules["sm90_compile"]


def _triton_bin(tool: str) -> str:
    """``cuobjdump`` / ``nvdisasm`` as bundled in the Triton wheel (``triton/backends/nvidia/bin``)."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool
    if not path.exists():
        raise FileNotFoundError(f"static_report: {path} is missing (this Triton wheel bundles no {tool})")
    return str(path)


# --------------------------------------------------------------------------- SASS and ptxas parsing
@dataclass
class Sass:
    instructions: int
    wgmma: int
    tma: int
    loops: List[int]  # instructions of each innermost loop body, in address order

    def per_iteration(self) -> str:
        if not self.loops:
            return f"no loop: {self.instructions} whole kernel"
        return str(self.loops[0])  # the first innermost loop: see the module docstring


def parse_sass(text: str) -> Sass:
    """Count a kernel's SASS (``cuobjdump -sass``): instructions, wgmma, TMA, innermost loops.

    A loop is a ``BRA`` to a lower address (a back-branch); its body is the instructions from
    the target to the branch. Innermost: no other back-branch lies inside. The ``BRA`` to
    itself after ``EXIT`` (the end-of-code trap) is not a loop.
    """
    addresses, opcodes, back_edges = [], [], []
    for line in text.splitlines():
        match = SASS_LINE.match(line)
        if not match:
            continue
        address, instruction = int(match.group(1), 16), match.group(2).strip()
        addresses.append(address)
        bare = re.sub(r"^@!?U?P\w+\s+", "", instruction)
        opcodes.append(bare.split()[0] if bare else "")
        branch = BRANCH.match(instruction)
        if branch and int(branch.group(1), 16) < address:
            back_edges.append((int(branch.group(1), 16), address))
    if not addresses:
        raise ValueError("static_report: no SASS instruction found in the disassembly")
    index = {a: i for i, a in enumerate(addresses)}
    innermost = [
        (start, end) for start, end in back_edges
        if not any(start <= s and e <= end and (s, e) != (start, end) for s, e in back_edges)
    ]
    loops = [index[end] - index[start] + 1 for start, end in innermost if start in index]
    return Sass(
        instructions=len(addresses),
        wgmma=sum(1 for op in opcodes if WGMMA_OPCODES.match(op)),
        tma=sum(1 for op in opcodes if TMA_OPCODES.match(op)),
        loops=loops,
    )


def parse_ptxas(log: str) -> Dict[str, int]:
    """``regs`` and ``spill_bytes`` from ``ptxas -v`` output (the last function reported)."""
    regs = PTXAS_REGS.findall(log)
    spills = PTXAS_SPILL.findall(log)
    if not regs:
        raise ValueError(f"static_report: no 'Used N registers' in the ptxas log:\n{log[-2000:]}")
    return dict(regs=int(regs[-1]), spill_bytes=int(spills[-1]) if spills else 0)


def disassemble(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([_triton_bin("cuobjdump"), "-sass", f.name], check=True, capture_output=True,
                              text=True).stdout


# --------------------------------------------------------------------------- scenarios at BERT shapes
def _dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


@contextlib.contextmanager
def _triton_backend_on_cpu():
    """The ops' ``"triton"`` backend accepts CPU tensors (launches are recorded, never run)."""
    from spanbert_fast import backend

    original = backend.triton_interpreter_on
    backend.triton_interpreter_on = lambda: True
    try:
        yield
    finally:
        backend.triton_interpreter_on = original


def _model_step(preset: str, dtype_name: str, dropout: float) -> None:
    """Forward + backward of the pre-training model (Triton backend) on a packed batch."""
    import torch

    from benchmarks.bench_step import make_batch
    from spanbert_fast import SpanBertConfig, SpanBertForPreTraining

    config = SpanBertConfig.preset(preset, num_hidden_layers=MODEL_LAYERS, hidden_dropout_prob=dropout,
                                   attention_probs_dropout_prob=dropout)
    # validate_targets=False: as pretrain runs it (no value checks, no host syncs)
    model = SpanBertForPreTraining(config, backend="triton", validate_targets=False).to(_dtype(dtype_name)).train()
    batch = make_batch([BLOCK_LEN, BLOCK_LEN], config.vocab_size)
    with _triton_backend_on_cpu():
        model(**batch.ours).loss.backward()


def _loss(dtype_name: str, d: int, vocab: int) -> None:
    """The masked-LM loss at T tokens, M predicted rows, with bias, forward + backward."""
    import torch

    from spanbert_fast.kernels import masked_lm_loss as mlm

    dtype = _dtype(dtype_name)
    hidden = torch.empty(LOSS_TOKENS, d, dtype=dtype).normal_().requires_grad_()
    weight = torch.empty(vocab, d, dtype=dtype).normal_().requires_grad_()
    bias = torch.zeros(vocab, dtype=dtype, requires_grad=True)
    positions = torch.randperm(LOSS_TOKENS)[:LOSS_MASKED].sort().values
    targets = torch.randint(0, vocab, (LOSS_MASKED,))
    loss, _ = mlm.masked_lm_loss(hidden, targets, weight, bias, positions, validate=False)
    loss.backward()


def scenarios(presets: Sequence[str] = PRESETS, dtypes: Sequence[str] = ("bf16",),
              dropouts: Sequence[float] = DROPOUTS) -> Dict[str, Callable[[], None]]:
    """Scenario name (``preset dtype dropout=p``, ``loss dtype dD vV``) -> call."""
    from spanbert_fast import SpanBertConfig

    out: Dict[str, Callable[[], None]] = {}
    for preset in presets:
        for dtype_name in dtypes:
            for p in dropouts:
                out[f"{preset} {dtype_name} dropout={p:g}"] = (
                    lambda preset=preset, dtype_name=dtype_name, p=p: _model_step(preset, dtype_name, p))
    for dtype_name in dtypes:
        for d in sorted({SpanBertConfig.preset(preset).hidden_size for preset in presets}):
            for vocab in LOSS_VOCABS:
                out[f"loss {dtype_name} d{d} V{vocab}"] = (
                    lambda dtype_name=dtype_name, d=d, vocab=vocab: _loss(dtype_name, d, vocab))
    return out


def _scenario_dropout(scenario: str) -> str:
    match = re.search(r"dropout=([0-9.]+)", scenario)
    return match.group(1) if match else NO_DROPOUT


def _scenario_label(scenario: str) -> str:
    """What goes into the config column besides the autotune config: preset and dtype, or the loss case."""
    return re.sub(r"\s*dropout=[0-9.]+", "", scenario)


def record_launches(presets, dtypes, dropouts) -> list:
    """Every recorded launch of :func:`scenarios`, then the harness's own scenarios for the
    kernels those did not launch (keep masks and other test helpers)."""
    import torch

    h = _harness()
    recorder = h.Recorder()
    recorder.install()
    h._allow_cpu_tensors()
    torch.manual_seed(0)
    for name, call in scenarios(presets, dtypes, dropouts).items():
        recorder.scenario = name
        call()
    launched = {h.kernel_name(launch.kernel) for launch in recorder.launches}
    ours = len(recorder.launches)
    for name, call in h.scenarios(full=False).items():
        recorder.scenario = name
        call()
    helpers = [launch for launch in recorder.launches[ours:] if h.kernel_name(launch.kernel) not in launched]
    del recorder.launches[ours:]
    recorder.launches += helpers
    return recorder.launches


# --------------------------------------------------------------------------- compiling
@dataclass
class Unit:
    """One binary to build: a launch with one config, and the rows (scenarios) that share it."""

    job: object  # the harness's Job (kernel, args, kwargs, [config])
    key: object
    labels: list  # (kernel, config label, dropout) of every row this binary answers


def config_text(config) -> str:
    if config is None:
        return "no autotune"
    blocks = " ".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{blocks} w{config.num_warps} s{config.num_stages}"


def _constexpr_kwargs(launch) -> Dict[str, object]:
    """The launch's keyword arguments that are flags or sizes (the launcher passes its constexprs so)."""
    return {k: v for k, v in launch.kwargs.items() if isinstance(v, (bool, int, str)) and not k.startswith("num_")}


def _distinguishing_keys(launches) -> Dict[str, List[str]]:
    """Per kernel, the constexpr keywords whose value differs between its launches in one scenario
    (e.g. ``HAS_BIAS`` when the model calls a norm with and without bias): they name the rows."""
    h = _harness()
    seen: Dict[tuple, List[dict]] = {}
    for launch in launches:
        seen.setdefault((h.kernel_name(launch.kernel), launch.scenario), []).append(_constexpr_kwargs(launch))
    keys: Dict[str, set] = {}
    for (kernel, _), kwargs_list in seen.items():
        names = {k for kwargs in kwargs_list for k in kwargs}
        keys.setdefault(kernel, set()).update(
            k for k in names if len({repr(kwargs.get(k)) for kwargs in kwargs_list}) > 1)
    return {kernel: sorted(names) for kernel, names in keys.items()}


def plan_units(launches) -> List[Unit]:
    """One unit per distinct binary (Triton's own specialisation key), every config of every launch.

    A row is named by kernel, ``scenario label | autotune config | distinguishing constexprs``
    and dropout; two binaries that would still share a name (a size's divisibility by 16
    differs) get ``| variant N``.
    """
    h = _harness()
    distinguishing = _distinguishing_keys(launches)
    units: Dict[object, Unit] = {}
    label_keys: Dict[tuple, list] = {}
    for index, launch in enumerate(launches):
        kernel = h.kernel_name(launch.kernel)
        flags = " ".join(f"{k}={launch.kwargs.get(k)}" for k in distinguishing.get(kernel, []))
        configs = launch.configs if launch.configs is not None else [None]
        for config in configs:
            key = h._spec_key(launch.kernel, launch.args, h._with_config(launch.kwargs, config))
            name = f"{_scenario_label(launch.scenario)} | {config_text(config)}" + (f" | {flags}" if flags else "")
            base = (kernel, name, _scenario_dropout(launch.scenario))
            keys = label_keys.setdefault(base, [])
            if key not in keys:
                keys.append(key)
            variant = keys.index(key)
            label = base if variant == 0 else (kernel, f"{name} | variant {variant + 1}", base[2])
            if key not in units:
                job = h.Job(launch.scenario, launch.kernel, launch.args, launch.kwargs, [config], index)
                units[key] = Unit(job, key, [])
            if label not in units[key].labels:
                units[key].labels.append(label)
    return list(units.values())


def compile_unit(unit: Unit) -> dict:
    """Compile one binary (fresh: ``TRITON_ALWAYS_COMPILE``, so ptxas runs and reports); its figures."""
    h = _harness()
    job, config = unit.job, unit.job.configs[0]
    start = time.perf_counter()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):  # TRITON_DUMP_PTXAS_LOG prints ptxas -v here
            compiled = job.kernel.warmup(*job.args, grid=(1,), **h._with_config(job.kwargs, config))
        figures = parse_ptxas(log.getvalue())
        sass = parse_sass(disassemble(compiled.asm["cubin"]))
    except Exception as error:  # a compile error is a row too: the report must show it
        return dict(error=h.explain(error) if hasattr(h, "explain") else repr(error),
                    seconds=time.perf_counter() - start)
    return dict(figures, smem_bytes=int(compiled.metadata.shared), wgmma=sass.wgmma, tma=sass.tma,
                sass_per_iter=sass.per_iteration(), loops=sass.loops, seconds=time.perf_counter() - start)


_UNITS: List[Unit] = []  # read by the forked workers


def _compile_index(i: int) -> dict:
    return compile_unit(_UNITS[i])


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def static_rows(presets: Sequence[str] = PRESETS, dtypes: Sequence[str] = ("bf16",),
                dropouts: Sequence[float] = DROPOUTS, processes: Optional[int] = None,
                details: Optional[dict] = None, kernels: Optional[str] = None) -> List[dict]:
    """The rows of ``static.csv`` (dicts keyed by :data:`COLUMNS`, plus ``error`` when a compile
    failed). Must run without ``TRITON_INTERPRET``. ``details`` (a dict) receives the kernels no
    scenario launched, timings. ``kernels``: a regular expression; only the kernels (``module.name``)
    it matches are compiled."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("static_report: unset TRITON_INTERPRET (kernels cannot be compiled under the interpreter)")
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"  # ptxas must run to report registers and spills
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    import torch
    from triton.runtime.driver import driver

    h = _harness()
    torch.set_num_threads(max(1, _cpus()))
    start = time.perf_counter()
    driver.set_active(h.StandInDriver())
    launches = record_launches(presets, dtypes, dropouts)
    recorded = time.perf_counter() - start
    torch.set_num_threads(1)  # fork-friendly workers
    _UNITS[:] = [unit for unit in plan_units(launches)
                 if kernels is None or re.search(kernels, unit.labels[0][0])]
    processes = max(1, min(processes or _cpus(), len(_UNITS)))
    if processes > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(processes) as pool:
            results = pool.map(_compile_index, range(len(_UNITS)), chunksize=1)
    else:
        results = [compile_unit(unit) for unit in _UNITS]
    rows = []
    for unit, result in zip(_UNITS, results):
        for kernel, config, dropout in unit.labels:
            row = dict(kernel=kernel, config=config, dropout=dropout)
            for column in COLUMNS[3:]:
                row[column] = result.get(column, "")
            if "error" in result:
                row["error"] = result["error"]
            row["loops"] = result.get("loops", [])
            rows.append(row)
    rows = _merge_dropout_free(rows)
    rows.sort(key=lambda r: (r["kernel"], r["config"], r["dropout"]))
    if details is not None:
        launched = {h.kernel_name(launch.kernel) for launch in launches}
        details.update(
            not_launched=sorted(set(h.all_kernels()) - launched), units=len(_UNITS), processes=processes,
            record_seconds=round(recorded, 1), seconds=round(time.perf_counter() - start, 1),
            compile_seconds=round(sum(r["seconds"] for r in results), 1),
            kernel_seconds=_seconds_by_kernel(_UNITS, results),
        )
    return rows


def _seconds_by_kernel(units: Sequence[Unit], results: Sequence[dict]) -> Dict[str, float]:
    """CPU seconds of compiling (and disassembling) each kernel's binaries: what sizes a CI run."""
    totals: Dict[str, float] = {}
    for unit, result in zip(units, results):
        totals[unit.labels[0][0]] = round(totals.get(unit.labels[0][0], 0.0) + result["seconds"], 1)
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def _merge_dropout_free(rows: List[dict]) -> List[dict]:
    """A (kernel, config) whose rows at every dropout are the same binary (same figures) is one
    row with dropout ``-``: the kernel has no dropout."""
    groups: Dict[tuple, List[dict]] = {}
    for row in rows:
        groups.setdefault((row["kernel"], row["config"]), []).append(row)
    merged = []
    for group in groups.values():
        figures = {tuple(str(r.get(c)) for c in COLUMNS[3:]) for r in group}
        dropouts = [r["dropout"] for r in group]
        if len(set(dropouts)) == len(dropouts) > 1 and len(figures) == 1 and NO_DROPOUT not in dropouts:
            merged.append({**group[0], "dropout": NO_DROPOUT})
        else:
            merged.extend(group)
    return merged


# --------------------------------------------------------------------------- checks and output
def problems(rows: Sequence[dict]) -> List[str]:
    """One line per row that fails to compile, spills, or needs more shared memory than sm_90 has."""
    out = []
    for row in rows:
        what = f"{row['kernel']} [{row['config']}] dropout {row['dropout']}"
        if row.get("error"):
            out.append(f"{what}: does not compile: {row['error'].splitlines()[0]}")
            continue
        if int(row["spill_bytes"]) > 0:
            out.append(f"{what}: spills {row['spill_bytes']} B ({row['regs']} registers)")
        if int(row["smem_bytes"]) > SM90_MAX_SHARED:
            out.append(f"{what}: needs {row['smem_bytes']} B of shared memory, sm_90 has {SM90_MAX_SHARED}")
    return out


def write_csv(rows: Sequence[dict], path: Path) -> Path:
    """``static.csv`` (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def read_csv(path: Path) -> List[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def markdown(rows: Sequence[dict], details: dict, command: str) -> str:
    import torch
    import triton

    lines = [
        "# Static kernel report (sm_90, offline)", "",
        f"triton {triton.__version__}, torch {torch.__version__}; `{command}`; "
        f"{details.get('units', '?')} binaries compiled in {details.get('seconds', '?')} s "
        f"with {details.get('processes', '?')} processes.", "",
        "Every config of every autotune list the launches keep after pruning, at the launch shapes of a "
        "BERT-base / -large B32 x S512 training step (see `benchmarks/static_report.py`). `sass/iter`: SASS "
        "instructions of the innermost loop body (the first in address order when a kernel has several; all are listed).", "",
    ]
    found = problems(rows)
    lines += ["## Problems", ""] + ([f"- {p}" for p in found] or ["none: no config spills or exceeds shared memory"])
    if details.get("not_launched"):
        lines += ["", "Kernels of `kernels/` that no scenario launched (not in the table): "
                  + ", ".join(f"`{k}`" for k in details["not_launched"])]
    lines += ["", "## Every binary", "",
              "| kernel | config | dropout | regs | spill B | smem B | wgmma | tma | sass/iter | loops |",
              "|---|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        loops = ", ".join(str(n) for n in r.get("loops") or []) or "-"
        if r.get("error"):
            lines.append(f"| `{r['kernel']}` | {r['config']} | {r['dropout']} | compile error: "
                         f"{r['error'].splitlines()[0][:120].replace('|', '/')} | | | | | | |")
            continue
        lines.append(f"| `{r['kernel']}` | {r['config']} | {r['dropout']} | {r['regs']} | {r['spill_bytes']} | "
                     f"{r['smem_bytes']} | {r['wgmma']} | {r['tma']} | {r['sass_per_iter']} | {loops} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for static.csv and static.md")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated: base, large")
    parser.add_argument("--dtypes", default="bf16", help="comma-separated: bf16, fp16, fp32 (default: training's)")
    parser.add_argument("--dropouts", default=",".join(f"{p:g}" for p in DROPOUTS), help="comma-separated")
    parser.add_argument("--processes", type=int, default=_cpus(), help="parallel compile processes")
    parser.add_argument("--kernels", default=None, help="only kernels (module.name) matching this regular expression")
    args = parser.parse_args(argv)
    presets = [p for p in args.presets.split(",") if p]
    bad = [p for p in presets if p not in PRESETS]
    if bad:
        parser.error(f"--presets: unknown {bad}; choose from {PRESETS}")
    dtypes = [d for d in args.dtypes.split(",") if d]
    if any(d not in ("bf16", "fp16", "fp32") for d in dtypes):
        parser.error(f"--dtypes: choose from bf16, fp16, fp32, got {args.dtypes!r}")
    try:
        dropouts = [float(p) for p in args.dropouts.split(",") if p]
    except ValueError:
        parser.error(f"--dropouts: comma-separated numbers, got {args.dropouts!r}")
    details: dict = {}
    rows = static_rows(presets, dtypes, dropouts, args.processes, details, args.kernels)
    out = Path(args.out)
    write_csv(rows, out / "static.csv")
    command = "python -m benchmarks.static_report " + " ".join(argv if argv is not None else sys.argv[1:])
    md = out / "static.md"
    md.with_suffix(".md.tmp").write_text(markdown(rows, details, command))
    os.replace(md.with_suffix(".md.tmp"), md)
    found = problems(rows)
    for line in found:
        print("PROBLEM", line)
    for name in details.get("not_launched", []):
        print(f"NOT LAUNCHED {name}: no scenario launches it")
    print("compile CPU seconds by kernel: " + ", ".join(f"{k} {v}" for k, v in details["kernel_seconds"].items()))
    print(f"static_report: {len(rows)} rows, {details['units']} binaries in {details['seconds']} s "
          f"({details['processes']} processes); wrote {out / 'static.csv'} and {md}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
