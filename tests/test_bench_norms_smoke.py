"""The norms benchmark suite runs end to end on tiny CPU shapes (interpreter) and fills every row."""
import math

from benchmarks import bench_norms


def test_bench_norms_smoke_rows():
    rows = bench_norms.run(smoke=True)
    impls = {(r.case, r.impl, r.mode) for r in rows}
    for op in ("gelu_ln", "dropout_add_ln"):
        for impl in ("ours", "eager", "torch.compile"):
            for mode in ("fwd", "fwd+bwd"):
                assert (f"{op}-N64-d96", impl, mode) in impls
    assert ("N64-d96", "copy", "fwd") in impls
    for r in rows:
        assert r.suite == "norms" and r.metric == "GB/s"
        assert math.isfinite(r.ms) and r.ms > 0, r
        assert math.isfinite(r.value) and r.value > 0, r
