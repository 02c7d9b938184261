"""``benchmarks/gpu_session.sh`` without a GPU: the one-line refusal, and the stage logic in dry-run
mode (``DRY_RUN=1``: each stage pretends to use its whole timeout, so the budget arithmetic runs
as on the GPU); ``benchmarks/precompile.py``'s job listing from recorded launches."""
import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"
QUICK_STAGES = ["install", "precompile", "step", "attention", "loss", "norms", "profile"]


def _run(mode, tmp_path, **env):
    environment = {**os.environ, "GPU_SESSION_DIR": str(tmp_path / "work"), "OUT": str(tmp_path / "out"), **env}
    return subprocess.run(["bash", str(SCRIPT), mode], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=60)


def _stages(tmp_path):
    with open(tmp_path / "work" / "stages.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU driver is installed here")
def test_without_a_gpu_quick_exits_at_once_with_one_line(tmp_path):
    proc = _run("quick", tmp_path)
    assert proc.returncode == 3
    assert proc.stdout.strip().count("\n") == 0 and "no CUDA GPU" in proc.stdout
    assert not (tmp_path / "work").exists()  # nothing was done


def test_unknown_mode_prints_usage(tmp_path):
    proc = _run("everything", tmp_path)
    assert proc.returncode == 2 and "gpu_session.sh quick" in proc.stdout


def test_dry_run_quick_runs_the_stages_in_order_of_value_within_the_budget(tmp_path):
    proc = _run("quick", tmp_path, DRY_RUN="1", QUICK_BUDGET_S="470")
    rows = _stages(tmp_path)
    assert [r["stage"] for r in rows] == QUICK_STAGES
    assert sum(int(r["timeout_s"]) for r in rows if r["status"] == "dry-run") <= 470
    assert all(int(r["timeout_s"]) >= 20 for r in rows if r["status"] == "dry-run")
    log = (tmp_path / "work" / "session.log").read_text()
    assert "--suite attention --out" in log  # bench_attention runs dropout 0 and 0.1 itself
    assert "benchmarks.precompile --stages step,attention,masked_lm_loss,norms" in log
    published = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(published) <= 8, published  # the device tool brings back at most 8 files
    assert {"session.log", "stages.csv"} <= set(published)
    assert proc.returncode == (0 if all(r["status"] == "dry-run" for r in rows) else 1)


def test_dry_run_skips_what_the_budget_cannot_hold_and_says_so(tmp_path):
    proc = _run("quick", tmp_path, DRY_RUN="1", QUICK_BUDGET_S="300")
    rows = {r["stage"]: r for r in _stages(tmp_path)}
    assert [rows[s]["status"] for s in ("install", "precompile", "step")] == ["dry-run"] * 3
    assert int(rows["step"]["timeout_s"]) == 300 - 90 - 120  # the last stage that fits gets what is left
    assert all(rows[s]["status"] == "skipped" for s in ("attention", "loss", "norms", "profile"))
    assert "stage attention: SKIPPED" in proc.stdout
    assert proc.returncode == 1


def test_dry_run_check_runs_gpu_tests_in_bf16(tmp_path):
    proc = _run("check", tmp_path, DRY_RUN="1")
    assert [r["stage"] for r in _stages(tmp_path)] == ["gpu-tests"]
    assert "pytest -q -m gpu -k 'not fp16'" in proc.stdout and proc.returncode == 0


@pytest.mark.slow
def test_precompile_lists_one_job_per_binary_and_every_autotune_config(tmp_path):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.precompile", "--source", "static", "--list"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    jobs = [line for line in proc.stdout.splitlines() if re.match(r"\w+\.\w+ \[", line)]  # module.kernel [scenario]
    launches, planned = map(int, re.match(r"(\d+) launches -> (\d+) compile jobs for",
                                          proc.stdout.splitlines()[-1]).groups())
    assert planned == len(jobs) and launches < planned  # autotuned launches bring every config
    fwd_configs = {j.split("] ", 1)[1] for j in jobs if j.startswith("attention._attention_fwd_kernel")}
    assert len(fwd_configs) >= 2, fwd_configs  # every config of the list, not the one the autotuner picks
    assert any(j.startswith("masked_lm_loss._dlogits_kernel") for j in jobs)
