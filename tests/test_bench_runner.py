"""The benchmark runner: suite selection, ratios, CSV schema, failing suites, and the CLI smoke run."""
import csv
import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from benchmarks import runner
from benchmarks.common import Result

REPO_ROOT = Path(__file__).resolve().parents[1]

# Result's fields, then the environment facts: spelled out so a schema change fails here.
CSV_COLUMNS = ["suite", "case", "impl", "mode", "ms", "metric", "value", "extra",
               "device", "torch", "triton", "cuda", "date"]


def test_select_suites():
    available = ["attention", "norms", "step", "zeta"]
    ops = ["attention", "norms", "masked_lm_loss", "zeta"]  # expected ones are listed even if absent
    assert runner.select_suites("ops", available) == ops
    assert runner.select_suites("step", available) == ["step"]
    assert runner.select_suites("all", available) == ops + ["step"]
    assert runner.select_suites("norms, step,norms", available) == ["norms", "step"]


def test_discover_finds_the_repo_suites():
    found = runner.discover()
    assert "step" in found and "attention" in found
    assert "runner" not in found and "common" not in found


def test_baseline_ratios():
    rows = [
        Result("s", "c1", "ours", "fwd", 1.0, "TFLOP/s", 300.0),
        Result("s", "c1", "sdpa", "fwd", 2.0, "TFLOP/s", 150.0),
        Result("s", "c1", "other", "fwd", 4.0, "TFLOP/s", 75.0),
        Result("s", "c1", "ours", "fwd+bwd", 1.0, "TFLOP/s", 10.0),  # no baseline in this mode
        Result("s", "c1", "ours", "fwd", 1.0, "peak MB", 60.0),
        Result("s", "c1", "sdpa", "fwd", 2.0, "peak MB", 100.0),
        Result("s", "c1", "ours", "fwd", 1.0, "x sdpa tokens/s", 2.0),  # a ratio row: no ratio of it
        Result("s", "c1", "sdpa+compile", "fwd", 1.0, "x sdpa tokens/s", 1.5),
    ]
    ratios = runner.baseline_ratios(rows)
    assert ratios[0] == ("sdpa", pytest.approx(2.0))
    assert ratios[2] == ("sdpa", pytest.approx(0.5))
    assert ratios[4] == ("sdpa", pytest.approx(0.6))
    assert set(ratios) == {0, 2, 4}


FAKE_SUITES = {
    "bench_good.py": """
        from benchmarks.common import Result
        def run(smoke):
            return [Result("good", "N8", "ours", "fwd", 2.0, "GB/s", 40.0),
                    Result("good", "N8", "eager", "fwd", 4.0, "GB/s", 20.0)]
    """,
    "bench_broken.py": """
        def run(smoke):
            raise RuntimeError("kernel exploded")
    """,
    "bench_norun.py": "VALUE = 1\n",
}


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    package = tmp_path / "fakebench"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, source in FAKE_SUITES.items():
        (package / name).write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package
    for name in [m for m in sys.modules if m == "fakebench" or m.startswith("fakebench.")]:
        del sys.modules[name]


def test_failing_and_missing_suites_are_reported_not_fatal(fake_package, tmp_path):
    out = tmp_path / "out"
    messages = []
    code, outcomes = runner.run_benchmarks(["broken", "good", "absent", "norun"], smoke=True, out_dir=str(out),
                                           package="fakebench", echo=messages.append)
    assert code == 1
    status = {o.name: o.status for o in outcomes}
    assert status == {"broken": "failed", "good": "ok", "absent": "missing", "norun": "failed"}
    assert "kernel exploded" in next(o.error for o in outcomes if o.name == "broken")
    with open(out / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CSV_COLUMNS
        written = list(reader)
    assert [(r["impl"], float(r["value"])) for r in written] == [("ours", 40.0), ("eager", 20.0)]
    assert (out / "good.png").stat().st_size > 0 and not (out / "broken.png").exists()
    section = (out / "results.md").read_text()
    assert "| good | N8 | ours | fwd | 2.000 | 40 | GB/s | 2.00x eager |" in section
    assert "- broken: failed" in section and "- absent: missing" in section
    assert any("broken: FAILED" in m for m in messages)


def test_results_file_gets_one_header_and_a_section_per_run(fake_package, tmp_path):
    results = tmp_path / "RESULTS.md"
    for run_index in range(2):
        code, _ = runner.run_benchmarks(["good"], smoke=False, out_dir=str(tmp_path / f"out{run_index}"),
                                        results_path=str(results), package="fakebench", echo=lambda m: None)
        assert code == 0
    text = results.read_text()
    assert text.startswith(runner.RESULTS_HEADER)
    assert text.count("# Benchmark results") == 1 and text.count("\n## ") == 2


def test_repo_results_file_has_the_header():
    assert (REPO_ROOT / "benchmarks" / "RESULTS.md").read_text().startswith(runner.RESULTS_HEADER)


def _digest(path: Path):
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def test_cli_smoke_run_writes_csv_and_plots_and_leaves_results_md_alone(tmp_path):
    """``spanbert-fast bench --suite all --smoke --out DIR`` from an unrelated working directory."""
    results_md = REPO_ROOT / "benchmarks" / "RESULTS.md"
    before = _digest(results_md)
    out = tmp_path / "bench-out"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "spanbert_fast", "bench", "--suite", "all", "--smoke",
                           "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CSV_COLUMNS
        rows = list(reader)
    suites = {"attention", "bias_gelu", "norms", "masked_lm_loss", "step"}
    assert {r["suite"] for r in rows} == suites
    assert all(r["device"] and r["torch"] == torch.__version__ and r["date"] for r in rows)
    for suite in suites:
        assert (out / f"{suite}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", suite
    assert (out / "results.md").read_text().startswith("## ")
    assert _digest(results_md) == before, "a smoke run must not touch benchmarks/RESULTS.md"
    assert not (tmp_path / "out").exists()  # --out was honoured
    print(f"CLI smoke run: {seconds:.1f} s")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_cli_full_run_needs_a_gpu(capsys):
    from spanbert_fast.cli import main

    assert main(["bench", "--suite", "step"]) == 2
    assert "CUDA GPU" in capsys.readouterr().err


def test_cli_finds_the_checkout_benchmarks(tmp_path, monkeypatch):
    from spanbert_fast.commands import bench

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(bench.ENV_BENCH_DIR, raising=False)
    assert bench.find_benchmarks_dir() == (REPO_ROOT / "benchmarks").resolve()
    wrong = tmp_path / "benchmarks"
    wrong.mkdir()  # no runner.py: not a suite folder, skipped
    assert bench.find_benchmarks_dir(str(wrong)) == (REPO_ROOT / "benchmarks").resolve()


def test_cli_passes_step_options_to_the_step_suite(tmp_path):
    from spanbert_fast.cli import main

    out = tmp_path / "step"
    assert main(["bench", "--suite", "step", "--smoke", "--step-variant", "dense", "--no-results",
                 "--out", str(out)]) == 0
    with open(out / "results.csv", newline="") as f:
        cases = {row["case"] for row in csv.DictReader(f) if row["impl"] == "ours"}
    assert cases == {"tiny-B2-S32"}  # the dense batch only (smoke default would be the padded one)
    assert "--step-variant dense" in (out / "results.md").read_text()


def test_parse_set_turns_assignments_into_suite_options():
    assert runner.parse_set(["norms.rows=(16384,)", "step.presets=['base']", "step.with_compile=False"]) \
        == {"norms": {"rows": (16384,)}, "step": {"presets": ["base"], "with_compile": False}}
    for bad in ("norms=1", "rows=(16384,)", "norms.rows=not a literal"):
        with pytest.raises(ValueError, match="--set"):
            runner.parse_set([bad])


