"""The inline-PTX dropout pairs the right scores (compiled for sm_90, no GPU needed).

``kernels.attention._dropout_zero`` zeroes dropped scores of the forward's 16-bit P tile, and
``_dropout_select`` chooses the dQ kernel's 16-bit dS between its two outcomes, with
``tl.inline_asm_elementwise(..., pack=2)``: one ``prmt`` per 32-bit register reads the same byte
of the hashes of scores (i, j) and (i, j + 1), so it is right only if the two 16-bit scores Triton
packs into one register are those two. Triton does not promise which elements share a pack; it
packs consecutive registers of the operand's layout, and in the wgmma accumulator layout
(``#ttg.nvidia_mma`` v3, as in v2) consecutive registers are adjacent keys of one query row.
The interpreter runs no PTX (its ``tl.where`` twin is what the CPU tests check), and the GPU test
``test_gpu_inline_ptx_dropout_applies_the_keep_mask`` needs a GPU; this test checks, for every
forward and dQ autotune config at the training launch (bf16, head dim 64, varlen, dropout), that
the compiled kernel's packed inline asm takes its operands in that layout. A Triton that moves them
to another layout fails here instead of silently dropping the wrong scores.

It runs in a subprocess (``TRITON_INTERPRET=1``, set by conftest.py, must be unset to compile);
about a minute on 2 cores.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("sm90_compile.py")

SCRIPT = r"""
import importlib.util, json, re, sys
spec = importlib.util.spec_from_file_location("sm90_compile", sys.argv[1])
h = importlib.util.module_from_spec(spec)
sys.modules["sm90_compile"] = h
spec.loader.exec_module(h)
from triton.runtime.driver import driver
driver.set_active(h.StandInDriver())
launches = h.record(selected=r"^attention bf16 d64 varlen dropout$")
found = {}
for job in h.plan(launches, all_configs=True):
    kernel = h.kernel_name(job.kernel)
    if kernel not in ("attention._attention_fwd_kernel", "attention._attention_bwd_dq_kernel"):
        continue
    config = job.configs[0]
    ttgir = job.kernel.warmup(*job.args, grid=(1,), **h._with_config(job.kwargs, config)).asm["ttgir"]
    layouts = []
    for line in ttgir.splitlines():
        if "elementwise_inline_asm" in line and "packed_element = 2" in line:
            name = re.search(r"tensor<\d+x\d+x(?:bf16|f16), (#\w+)>", line).group(1)
            layouts.append(re.search(rf"^{name} = (.*)$", ttgir, re.M).group(1))
    found[f"{kernel} {config}"] = layouts
print(json.dumps(found))
"""


@pytest.mark.slow
def test_packed_dropout_asm_takes_wgmma_accumulator_pairs():
    pytest.importorskip("triton")
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("this Triton build has no CUDA backend")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(HARNESS)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {name.split()[0] for name in found} == {"attention._attention_fwd_kernel",
                                                   "attention._attention_bwd_dq_kernel"}, sorted(found)
    for config, layouts in found.items():
        assert layouts, f"{config}: no packed inline asm (the dropout mask)"
        for layout in layouts:
            assert layout.startswith("#ttg.nvidia_mma<") and re.search(r"versionMajor = [23]\b", layout), \
                f"{config}: the packed dropout asm takes operands in {layout}, not the wgmma/mma accumulator"
