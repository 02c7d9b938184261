"""The bias_gelu benchmark suite runs end to end on tiny CPU shapes (interpreter) and fills every row."""
import math

from benchmarks import bench_bias_gelu, runner


def test_bench_bias_gelu_smoke_rows():
    rows = bench_bias_gelu.run(smoke=True)
    impls = {(r.case, r.impl, r.mode) for r in rows}
    for case in ("bias_gelu-T64-F96", "linear_bias_gelu-T64-F96-d32"):
        for impl in ("ours", "eager", "torch.compile"):
            for mode in ("fwd", "fwd+bwd"):
                assert (case, impl, mode) in impls
    assert ("T64-F96", "copy", "fwd") in impls
    for r in rows:
        assert r.suite == "bias_gelu" and r.metric in ("GB/s", "TFLOP/s")
        assert math.isfinite(r.ms) and r.ms > 0, r
        assert math.isfinite(r.value) and r.value > 0, r


def test_runner_lists_the_suite_among_the_op_suites():
    assert "bias_gelu" in runner.select_suites("ops", runner.discover())
