"""The static kernel report (``benchmarks/static_report.py``): its parsing, and the sm_90 checks.

* ``test_parse_*``: the SASS / ptxas parsing on fixed text (fast, no compile).
* one report (module fixture ``training_report``) compiles for sm_90 every config of every
  autotune list the BERT-base training step launches, bf16, at dropout 0 and 0.1 (about 100 s
  on CI's 2 cores); the tests below read it:
* ``test_no_autotune_config_spills_or_overflows_shared_memory`` (CI, ``slow``): fails on any
  spill, any config over sm_90's shared memory, any compile error, or a kernel of ``kernels/``
  that nothing launches.
* ``test_ratio_*`` (CI, ``slow``): the SASS-per-iteration targets, dropout 0.1 against 0:
  issue 14's attention fwd, dK/dV and dQ interior loops <= 1.35x, issue 15's dropout + add +
  LayerNorm kernels <= 1.3x, in every config the dropout launch keeps.

The report runs in a subprocess: ``TRITON_INTERPRET=1`` (conftest.py, on CPU) must be unset to compile.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import static_report

ROOT = Path(__file__).resolve().parents[1]
ATTENTION_RATIO, NORM_RATIO = 1.35, 1.3  # issue 14 (attention fwd, dK/dV, dQ), issue 15 (dropout + norm)


def _report(tmp_path_factory, name: str, dropouts: str, kernels=None) -> list:
    pytest.importorskip("triton")
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("this Triton build has no CUDA backend")
    out = tmp_path_factory.mktemp(name)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "benchmarks.static_report", "--out", str(out), "--presets", "base",
               "--dtypes", "bf16", "--dropouts", dropouts] + (["--kernels", kernels] if kernels else [])
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert (out / "static.csv").exists(), f"static_report stopped (exit {proc.returncode}):\n" \
                                          f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    rows = static_report.read_csv(out / "static.csv")
    return rows, proc.stdout, (out / "static.md").read_text()


# --------------------------------------------------------------------------- parsing (fast)
SASS_TWO_LOOPS = """
        Function : k
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ ;
        /*0020*/                   UTMALDG.2D [UR8], [UR10] ;
        /*0030*/                   IADD3 R2, R2, 0x1, RZ ;
        /*0040*/               @P0 BRA 0x20 ;
        /*0050*/                   FADD R3, R3, R4 ;
        /*0060*/                   FADD R3, R3, R4 ;
        /*0070*/                   FADD R3, R3, R4 ;
        /*0080*/              @!P1 BRA 0x50 ;
        /*0090*/              @!P2 BRA 0x0 ;
        /*00a0*/                   EXIT ;
        /*00b0*/                   BRA 0xb0;
"""


def test_parse_sass_finds_the_innermost_loops_and_hopper_instructions():
    sass = static_report.parse_sass(SASS_TWO_LOOPS)
    assert sass.instructions == 12
    assert sass.loops == [3, 4]  # 0x20..0x40 and 0x50..0x80; the outer 0x0..0x90 contains them
    assert sass.per_iteration() == "3"  # the first innermost loop (the hot one comes first)
    assert (sass.wgmma, sass.tma) == (1, 1)


def test_parse_sass_without_a_loop_says_so():
    text = "        /*0000*/   MOV R1, R2 ;\n        /*0010*/   EXIT ;\n        /*0020*/   BRA 0x20;\n"
    sass = static_report.parse_sass(text)
    assert sass.loops == []
    assert sass.per_iteration() == "no loop: 3 whole kernel"


def test_parse_ptxas_reads_registers_and_spill_stores():
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 656 bytes stack frame, "
           "420 bytes spill stores, 404 bytes spill loads\n")
    assert static_report.parse_ptxas(log) == dict(regs=255, spill_bytes=420)
    assert static_report.parse_ptxas("ptxas info    : Used 40 registers, used 0 barriers\n") == \
        dict(regs=40, spill_bytes=0)
    with pytest.raises(ValueError, match="registers"):
        static_report.parse_ptxas("nothing")


def test_problems_name_spills_shared_memory_and_compile_errors():
    row = dict(kernel="m.k", config="base bf16 | BLOCK_M=64 w4 s3", dropout="0.1", regs=255, spill_bytes=8,
               smem_bytes=static_report.SM90_MAX_SHARED + 1)
    found = static_report.problems([row, dict(row, spill_bytes=0, smem_bytes=1024),
                                    dict(row, error="CompilationError: bad\nmore")])
    assert found == [
        "m.k [base bf16 | BLOCK_M=64 w4 s3] dropout 0.1: spills 8 B (255 registers)",
        f"m.k [base bf16 | BLOCK_M=64 w4 s3] dropout 0.1: needs {static_report.SM90_MAX_SHARED + 1} B of shared "
        f"memory, sm_90 has {static_report.SM90_MAX_SHARED}",
        "m.k [base bf16 | BLOCK_M=64 w4 s3] dropout 0.1: does not compile: CompilationError: bad",
    ]


# --------------------------------------------------------------------------- the sm_90 check (CI)
@pytest.fixture(scope="module")
def training_report(tmp_path_factory):
    return _report(tmp_path_factory, "training", "0,0.1")


@pytest.mark.slow
def test_no_autotune_config_spills_or_overflows_shared_memory(training_report):
    rows, stdout, markdown = training_report
    assert {row["dropout"] for row in rows} >= {"0", "0.1"}
    assert list(rows[0]) == static_report.COLUMNS
    kernels = {row["kernel"] for row in rows}
    not_launched = re.findall(r"NOT LAUNCHED (\S+)", stdout)
    assert not not_launched, f"kernels of kernels/ that no scenario launches (add one): {not_launched}"
    for expected in ("attention._attention_fwd_kernel", "attention._attention_bwd_dkdv_kernel",
                     "masked_lm_loss._forward_stats_kernel"):
        assert expected in kernels, f"{expected} missing from static.csv: {sorted(kernels)}"
    found = re.findall(r"^PROBLEM (.*)$", stdout, flags=re.M)
    assert not found, ("autotune configs that spill, need more shared memory than sm_90 has, or do not "
                       "compile (drop them from the config list):\n" + "\n".join(found))


# --------------------------------------------------------------------------- ratio targets (opt-in)
def _loop_sizes(rows, kernel_pattern: str) -> dict:
    """``{(kernel, autotune config): {dropout: worst SASS per iteration}}`` of the kernels matched."""
    out: dict = {}
    for row in rows:
        if not re.search(kernel_pattern, row["kernel"]) or not row["sass_per_iter"]:
            continue
        config = row["config"].split(" | ")[1]
        count = int(re.search(r"\d+", row["sass_per_iter"]).group())
        by_dropout = out.setdefault((row["kernel"], config), {})
        by_dropout[row["dropout"]] = max(by_dropout.get(row["dropout"], 0), count)
    return out


def _ratio_failures(rows, kernel_pattern: str, limit: float) -> list:
    sizes = _loop_sizes(rows, kernel_pattern)
    assert sizes, f"no rows for {kernel_pattern}"
    failures = []
    for (kernel, config), by_dropout in sorted(sizes.items()):
        if "0" in by_dropout and "0.1" in by_dropout and by_dropout["0.1"] > limit * by_dropout["0"]:
            failures.append(f"{kernel} [{config}]: {by_dropout['0.1']} SASS per iteration at dropout 0.1 vs "
                            f"{by_dropout['0']} at 0 ({by_dropout['0.1'] / by_dropout['0']:.2f}x > {limit}x)")
    return failures


@pytest.fixture(scope="module")
def dropout_pair_rows(training_report):
    return training_report[0]


@pytest.mark.slow
def test_ratio_attention_dropout_costs_at_most_1_35x_per_iteration(dropout_pair_rows):
    """Issue 14: attention fwd, dK/dV and dQ interior loops at p=0.1 <= 1.35x p=0, in every
    autotune config (benchmarks/notes/attention_static.md, Step 4, the mask with block terms: at most
    1.29x under Triton 3.9, 1.34x under 3.6, the GPU machine's)."""
    failures = _ratio_failures(dropout_pair_rows, r"attention\._attention_(fwd|bwd_dkdv|bwd_dq)", ATTENTION_RATIO)
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_ratio_norm_dropout_costs_at_most_1_3x(dropout_pair_rows):
    """Issue 15: dropout + add + LayerNorm forward and backward at p=0.1 <= 1.3x p=0 (SASS per
    iteration, or the whole kernel where it has no loop), in every config the dropout launch keeps
    (``row_autotune(philox_columns=8)`` prunes the others)."""
    failures = _ratio_failures(dropout_pair_rows, r"dropout_add_layernorm\._bias_dropout_add_layernorm", NORM_RATIO)
    assert not failures, "\n".join(failures)
    compared = [by for by in _loop_sizes(dropout_pair_rows, r"dropout_add_layernorm\._bias_dropout").values()
                if "0.1" in by]
    assert len(compared) >= 4 and all("0" in by for by in compared)  # each dropout config has its p = 0 twin
