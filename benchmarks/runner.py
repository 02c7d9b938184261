"""Run benchmark suites; print a table; write a CSV, one PNG per suite and a Markdown section.

``spanbert-fast bench [--suite ops|step|all|NAME[,NAME]] [--smoke] [--out DIR]`` calls
:func:`run_benchmarks` (see :mod:`spanbert_fast.commands.bench` for how the command finds this
folder). A suite is a module ``benchmarks/bench_<name>.py`` with ``run(smoke: bool) ->
list[Result]``; ``ops`` is every suite but ``step`` (the whole training step). A suite that is
missing or raises is reported and the others still run; the exit code is then 1.

Written to ``--out``: ``results.csv`` (:func:`benchmarks.common.write_csv`: every row with
device, torch, triton, CUDA and date), ``<suite>.png`` (the suite's throughput metrics per case,
ours next to the baselines), ``results.md`` (the section below). A full run on CUDA also appends
that section to ``benchmarks/RESULTS.md``; smoke and CPU runs never do unless ``results_path``
names a file.

Ratios: within one suite, case, mode and metric, the *baseline* is the first row whose
implementation is not ours (``impl`` not starting with ``ours``), and every other row gets
``value / baseline value`` -- a speed-up for ``.../s`` metrics, a memory fraction for ``MB``.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from benchmarks.common import Result, environment, write_csv

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_MD = BENCH_DIR / "RESULTS.md"
# The op suites issue #8 asks for: listed as "missing" when their module is absent.
EXPECTED_OP_SUITES = ("attention", "norms", "masked_lm_loss")
STEP_SUITES = ("step",)
GROUPS = ("ops", "step", "all")


@dataclasses.dataclass
class SuiteOutcome:
    name: str
    status: str  # "ok", "missing" or "failed"
    rows: List[Result]
    seconds: float
    error: str = ""


# --------------------------------------------------------------------------- finding and running suites
def discover(directory: Path = BENCH_DIR) -> List[str]:
    """Suite names of the ``bench_<name>.py`` modules in ``directory``, sorted."""
    return sorted(p.stem[len("bench_"):] for p in Path(directory).glob("bench_*.py"))


def select_suites(spec: str, available: Sequence[str]) -> List[str]:
    """``ops`` | ``step`` | ``all`` | suite names, comma-separated -> suite names, in order, once each."""
    ops = list(dict.fromkeys([*EXPECTED_OP_SUITES, *(s for s in available if s not in STEP_SUITES)]))
    chosen: List[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part == "ops":
            chosen += ops
        elif part == "step":
            chosen += list(STEP_SUITES)
        elif part == "all":
            chosen += ops + list(STEP_SUITES)
        else:
            chosen.append(part)
    return list(dict.fromkeys(chosen))


def run_suite(name: str, smoke: bool, package: str = "benchmarks", options: Optional[dict] = None) -> SuiteOutcome:
    """Import ``<package>.bench_<name>`` and call ``run(smoke=smoke, **options)``; never raises."""
    start = time.perf_counter()
    module_name = f"{package}.bench_{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        status = "missing" if err.name == module_name else "failed"
        return SuiteOutcome(name, status, [], time.perf_counter() - start, f"{type(err).__name__}: {err}")
    except Exception as err:
        return SuiteOutcome(name, "failed", [], time.perf_counter() - start, _short_traceback(err))
    run = getattr(module, "run", None)
    if not callable(run):
        return SuiteOutcome(name, "failed", [], time.perf_counter() - start, f"{module_name} has no run(smoke)")
    try:
        rows = run(smoke=smoke, **(options or {}))
        bad = [r for r in rows if not isinstance(r, Result)]
        if bad:
            raise TypeError(f"run() returned {len(bad)} rows that are not benchmarks.common.Result: {bad[0]!r}")
        if not rows:
            raise ValueError("run() returned no rows")
    except Exception as err:
        return SuiteOutcome(name, "failed", [], time.perf_counter() - start, _short_traceback(err))
    return SuiteOutcome(name, "ok", list(rows), time.perf_counter() - start)


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _short_traceback(err: BaseException, frames: int = 3) -> str:
    lines = traceback.format_exception(type(err), err, err.__traceback__)
    return "".join(lines[-(frames + 1):]).strip()


# --------------------------------------------------------------------------- ratios and the table
def is_throughput(metric: str) -> bool:
    """``TFLOP/s``, ``GB/s``, ``tokens/s``...; not a ratio row such as ``x hf-sdpa tokens/s``."""
    return metric.endswith("/s") and not metric.startswith("x ")


def _has_ratio(metric: str) -> bool:
    return is_throughput(metric) or (metric.endswith("MB") and not metric.startswith("x "))


def baseline_ratios(rows: Sequence[Result]) -> Dict[int, Tuple[str, float]]:
    """``index -> (baseline impl, value / baseline value)`` for every non-baseline row with one."""
    baselines: Dict[Tuple[str, str, str, str], Result] = {}
    for row in rows:
        key = (row.suite, row.case, row.mode, row.metric)
        if _has_ratio(row.metric) and not row.impl.startswith("ours") and key not in baselines:
            baselines[key] = row
    ratios = {}
    for index, row in enumerate(rows):
        base = baselines.get((row.suite, row.case, row.mode, row.metric))
        if base is None or base is row or not base.value:
            continue
        ratios[index] = (base.impl, row.value / base.value)
    return ratios


def format_table(rows: Sequence[Result]) -> str:
    """A fixed-width text table of ``rows`` with the ratio to each row's baseline."""
    ratios = baseline_ratios(rows)
    header = f"{'suite':15} {'case':40} {'impl':20} {'mode':10} {'ms':>10} {'value':>11} {'metric':22} {'vs baseline':24}"
    lines = [header, "-" * len(header)]
    for index, r in enumerate(rows):
        ratio = f"{ratios[index][1]:.2f}x {ratios[index][0]}" if index in ratios else ""
        lines.append(f"{r.suite:15} {r.case:40} {r.impl:20} {r.mode:10} {r.ms:10.3f} {r.value:11.4g} "
                     f"{r.metric:22} {ratio:24} {r.extra[:70]}")
    return "\n".join(lines)


def markdown_section(rows: Sequence[Result], outcomes: Sequence[SuiteOutcome], env: dict, command: str,
                     csv_path: str, smoke: bool) -> str:
    """The Markdown section of one run: environment, command, a table of every row, failures."""
    ratios = baseline_ratios(rows)
    suites = ", ".join(o.name for o in outcomes)
    title = (f"## {env['date']}: {env['device']}, torch {env['torch']}, triton {env['triton']}, "
             f"CUDA {env['cuda']}{' (smoke: not speed figures)' if smoke else ''}")
    lines = [title, "", f"Suites: {suites}. Command: `{command}`. CSV: `{csv_path}`.", ""]
    lines += ["| suite | case | impl | mode | ms | value | metric | vs baseline | notes |",
              "|---|---|---|---|---:|---:|---|---|---|"]
    for index, r in enumerate(rows):
        ratio = f"{ratios[index][1]:.2f}x {ratios[index][0]}" if index in ratios else ""
        notes = r.extra.replace("|", "/")
        lines.append(f"| {r.suite} | {r.case} | {r.impl} | {r.mode} | {r.ms:.3f} | {r.value:.4g} | {r.metric} "
                     f"| {ratio} | {notes} |")
    problems = [o for o in outcomes if o.status != "ok"]
    if problems:
        lines += ["", "Suites that did not run:", ""]
        for o in problems:
            first_line = o.error.strip().splitlines()[-1] if o.error.strip() else ""
            lines.append(f"- {o.name}: {o.status} ({first_line.replace('|', '/')})")
    return "\n".join(lines) + "\n"


RESULTS_HEADER = """# Benchmark results

Each section below is one `spanbert-fast bench` run on a CUDA GPU, appended by the runner
(`benchmarks/runner.py`). Every number in a section was measured in that one run, in one
process; a ratio ("vs baseline") compares a row with the baseline of the same suite, case,
mode and metric measured in the same run (value / baseline value: a speed-up for
throughput metrics, a memory fraction for MB). Absolute figures drift between runs and
machines; compare ratios within a section. Smoke and CPU runs are never appended here.
How to run and what the goals are: `benchmarks/README.md`.
"""


def append_results(path: Path, section: str) -> Path:
    """Append ``section`` to the Markdown file at ``path``, creating it with its header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(RESULTS_HEADER)
    with open(path, "a") as f:
        f.write("\n" + section)
    return path


# --------------------------------------------------------------------------- plots
CEILING_IMPL = "copy"  # a plain copy of the same bytes: the memory-bandwidth ceiling of a case


def ceiling_shares(panel_rows: Sequence[Result]) -> Optional[Dict[str, float]]:
    """``case -> ceiling value`` when every case of a panel has a positive ``copy`` row, else ``None``.

    Such a panel is drawn as each implementation's share of its case's ceiling (a copy at
    several times ours would otherwise flatten every other bar)."""
    ceilings = {r.case: r.value for r in panel_rows if r.impl == CEILING_IMPL and r.value > 0}
    cases = {r.case for r in panel_rows}
    return ceilings if ceilings and set(ceilings) == cases else None


def plot_suite(rows: Sequence[Result], path: str) -> Optional[str]:
    """One PNG of a suite: a panel per throughput metric and mode, a group of bars per case.

    Each case's bars are the implementations measured on it (ours and its baselines), one
    colour per implementation across the figure, named in one legend above the panels; each bar
    but the baseline's is labelled with its ratio to the baseline (:func:`baseline_ratios`). A panel
    with a ``copy`` row in every case shows the others as % of that copy (:func:`ceiling_shares`).
    Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend change).
    ``None`` when the suite has no ``.../s`` rows.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in rows if is_throughput(r.metric)]
    panels = list(dict.fromkeys((r.metric, r.mode) for r in rows))
    if not panels:
        return None
    impls = list(dict.fromkeys(r.impl for r in rows))
    colours = {impl: f"C{i % 10}" for i, impl in enumerate(impls)}
    heights = [0.6 + 0.25 * sum(1 for r in rows if (r.metric, r.mode) == panel) + 0.2 * len(
        {r.case for r in rows if (r.metric, r.mode) == panel}) for panel in panels]
    legend_inches = 0.35
    figure = Figure(figsize=(10, max(3.0, sum(heights) + 0.6 + legend_inches)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    suite = rows[0].suite
    ratios = {id(rows[index]): ratio for index, (_, ratio) in baseline_ratios(rows).items()}
    handles = {}
    for ax, (metric, mode) in zip(axes, panels):
        panel_rows = [r for r in rows if (r.metric, r.mode) == (metric, mode)]
        ceilings = ceiling_shares(panel_rows)
        if ceilings:
            panel_rows = [r for r in panel_rows if r.impl != CEILING_IMPL]
        y, ticks, labels = 0.0, [], []
        for case in dict.fromkeys(r.case for r in panel_rows):
            first = y
            for r in (r for r in panel_rows if r.case == case):
                value = 100 * r.value / ceilings[case] if ceilings else r.value
                handles[r.impl] = ax.barh(y, value, height=0.8, color=colours[r.impl])
                if ceilings or id(r) in ratios:  # the share of the copy, or the ratio to the baseline
                    note = f" {value:.0f}%" if ceilings else f" {ratios[id(r)]:.2f}x"
                    ax.text(value, y, note, va="center", fontsize=7)
                y += 1
            ticks.append((first + y - 1) / 2)
            labels.append(f"{case}\n(copy {ceilings[case]:.4g} {metric})" if ceilings else case)
            y += 0.8  # gap between cases
        ax.set_yticks(ticks)
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        if ceilings:
            ax.axvline(100, color="black", linestyle="--", linewidth=1)
            ax.set_xlim(0, max(110, ax.get_xlim()[1]))
            ax.set_xlabel(f"% of a plain copy's {metric} (dashed: the copy, the memory-bandwidth ceiling)")
            ax.set_title(f"{suite}: {metric} as % of copy, {mode} (higher is better)", fontsize=10)
        else:
            ax.set_xlabel(metric)
            baseline = next((r.impl for r in panel_rows if not r.impl.startswith("ours")), None)
            against = f"; labels: x {baseline}" if baseline and ratios else ""
            ax.set_title(f"{suite}: {metric}, {mode} (higher is better{against})", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    top = 1 - legend_inches / figure.get_figheight()
    figure.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(len(handles), 6),
                  fontsize=8, frameon=False, bbox_to_anchor=(0.5, 1.0))
    env = environment()
    figure.text(0.01, 0.005, f"{env['device']} | torch {env['torch']} | triton {env['triton']} | "
                             f"CUDA {env['cuda']} | {env['date']}", fontsize=7)
    figure.tight_layout(rect=(0, 0.02, 1, top))
    figure.savefig(path, dpi=110)
    return path


# --------------------------------------------------------------------------- the whole run
def run_benchmarks(suites: Sequence[str], smoke: bool, out_dir: str, results_path: Optional[str] = None,
                   package: str = "benchmarks", suite_options: Optional[Dict[str, dict]] = None,
                   command: str = "spanbert-fast bench", echo=print) -> Tuple[int, List[SuiteOutcome]]:
    """Run ``suites``, write the files to ``out_dir`` (and ``results_path``); ``(exit code, outcomes)``.

    Exit code 0 when every suite ran, 1 when one was missing or failed (its error is printed
    and listed in the Markdown section; the other suites' rows are still written).
    """
    os.makedirs(out_dir, exist_ok=True)
    outcomes: List[SuiteOutcome] = []
    for name in suites:
        echo(f"[bench] {name}{' (smoke)' if smoke else ''} ...")
        outcome = run_suite(name, smoke, package, (suite_options or {}).get(name))
        outcomes.append(outcome)
        _release_memory()  # the next suite's peak-memory figures start from a clean allocator
        if outcome.status == "ok":
            echo(f"[bench] {name}: {len(outcome.rows)} rows in {outcome.seconds:.1f} s")
        else:
            echo(f"[bench] {name}: {outcome.status.upper()} after {outcome.seconds:.1f} s\n{outcome.error}")
    rows = [row for o in outcomes for row in o.rows]
    env = environment()
    if rows:
        echo(format_table(rows))
    csv_path = write_csv(rows, os.path.join(out_dir, "results.csv"))
    echo(f"[bench] wrote {csv_path}")
    for outcome in outcomes:
        if outcome.rows:
            png = plot_suite(outcome.rows, os.path.join(out_dir, f"{outcome.name}.png"))
            if png:
                echo(f"[bench] wrote {png}")
    section = markdown_section(rows, outcomes, env, command, csv_path, smoke)
    md_path = os.path.join(out_dir, "results.md")
    with open(md_path, "w") as f:
        f.write(section)
    echo(f"[bench] wrote {md_path}")
    if results_path is not None:
        echo(f"[bench] appended to {append_results(Path(results_path), section)}")
    problems = [o for o in outcomes if o.status != "ok"]
    if problems:
        echo("[bench] did not run: " + ", ".join(f"{o.name} ({o.status})" for o in problems))
    return (1 if problems else 0), outcomes


# --------------------------------------------------------------------------- command line (gpu_session.sh)
def parse_set(assignments: Sequence[str]) -> Dict[str, Dict[str, object]]:
    """``["step.presets=['base']"]`` -> ``{"step": {"presets": ["base"]}}``."""
    import ast

    options: Dict[str, Dict[str, object]] = {}
    for assignment in assignments:
        target, sep, value = assignment.partition("=")
        suite, dot, key = target.partition(".")
        if not sep or not dot or not suite or not key:
            raise ValueError(f"--set expects SUITE.KEY=VALUE, got {assignment!r}")
        try:
            options.setdefault(suite, {})[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"--set {assignment!r}: VALUE must be a Python literal") from None
    return options


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m benchmarks.runner --suite NAME[,NAME] --out DIR [--results PATH] [--set S.K=V]``:
    :func:`run_benchmarks` with suite options (what ``spanbert-fast bench`` offers for the step
    suite only)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--suite", required=True, help="suite names or groups (ops, step, all), comma-separated")
    parser.add_argument("--out", required=True)
    parser.add_argument("--results", default=None, help="append the Markdown section here")
    parser.add_argument("--set", action="append", default=[], metavar="SUITE.KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        options = parse_set(args.set)
    except ValueError as err:
        parser.error(str(err))
    suites = select_suites(args.suite, discover())
    code, _ = run_benchmarks(suites, smoke=False, out_dir=args.out, results_path=args.results,
                             suite_options=options, command="python -m benchmarks.runner " + " ".join(
                                 argv if argv is not None else __import__("sys").argv[1:]))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
