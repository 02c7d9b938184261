"""Every Triton kernel compiles for an H100 (sm_90), on a machine without a GPU.

The CPU tests run the kernels under the Triton interpreter, which never compiles them, so a
kernel that the real compiler rejects (an API the installed Triton lacks, a layout the
lowering cannot handle, a ptxas error) would pass CI and fail on the first GPU step. This
test compiles them for real: ``sm90_compile.py`` (next to this file) drives the kernels'
public functions on CPU tensors with the launches recorded instead of run, then compiles
each recorded launch -- the launcher's own arguments, constexprs and autotune configs --
through Triton's warmup path for a stand-in sm_90 driver (Triton wheels bundle ptxas).

It runs in a subprocess because ``TRITON_INTERPRET=1`` (set by conftest.py on CPU) must
be unset there. About 30 s on 2 cores with an empty Triton cache (fewer with a warm one).
By hand, e.g. against another Triton: ``python tests/kernels/sm90_compile.py`` (``--full``
for every dtype x head dim x layout x flag, ``--all-configs`` for every autotune config).
"""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("sm90_compile.py")
ROOT = Path(__file__).resolve().parents[2]
MAX_ERROR_CHARS = 3000  # MLIR/ptxas errors can run long; the first lines name the kernel and line


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90(tmp_path):
    pytest.importorskip("triton")
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("this Triton build has no CUDA backend")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    report_path = tmp_path / "sm90_compile.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", str(report_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )
    output = f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-MAX_ERROR_CHARS:]}"
    assert report_path.exists(), f"sm90_compile.py stopped before compiling (exit {proc.returncode}):\n{output}"
    report = json.loads(report_path.read_text())

    for result in report["results"]:
        for what in result["too_big"]:
            warnings.warn(f"sm_90: {what} compiles but needs more shared memory than an H100 block has; "
                          "the autotuner skips it (drop it from the config list or prune it)")
    failed = [result["error"][:MAX_ERROR_CHARS] for result in report["results"] if not result["ok"]]
    assert not failed, (
        f"{len(failed)} of {len(report['results'])} kernel launches do not compile for sm_90 with "
        f"triton {report['triton']}:\n\n" + "\n\n".join(failed)
    )
    assert not report["not_compiled"], (
        f"kernels no scenario of {SCRIPT.name} launches: {report['not_compiled']}; add a scenario for them"
    )
    assert proc.returncode == 0, output
