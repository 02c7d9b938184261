"""The attention benchmark suite runs end to end (tiny CPU shapes, Triton interpreter).

It checks that every case yields both modes for ours and the SDPA baseline with positive
times and TFLOP/s, that dropout 0.1 and the single-pass backward are among the cases, and that
the rows write to CSV; it says nothing about speed.
"""
import csv
import importlib



def test_bench_attention_smoke_rows(tmp_path):
    bench = importlib.import_module("benchmarks.bench_attention")
    common = importlib.import_module("benchmarks.common")
    rows = bench.run(smoke=True)
    assert rows, "run(smoke=True) returned no rows"
    for row in rows:
        assert row.suite == "attention" and row.metric == "TFLOP/s"
        assert row.mode in ("fwd", "fwd+bwd")
        assert row.ms > 0 and row.value > 0, row
    cases = {row.case for row in rows}
    assert any(case.startswith("varlen") for case in cases) and any("-w" in case for case in cases)
    # training's attention dropout, dense and varlen, and the single-pass backward beside the default
    assert any(case.startswith("varlen") and case.endswith("-p0.1") for case in cases)
    assert any(case.startswith("B") and case.endswith("-p0.1") for case in cases)
    assert {row.impl for row in rows} >= {"ours single-pass", "ours varlen single-pass", "sdpa flash"}
    for case in cases:
        impls = {(row.impl.split()[0], row.mode) for row in rows if row.case == case}
        assert {("ours", "fwd"), ("ours", "fwd+bwd"), ("sdpa", "fwd"), ("sdpa", "fwd+bwd")} <= impls, case
    path = common.write_csv(rows, str(tmp_path / "attention.csv"))
    with open(path) as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def test_attention_flops_counts_real_pairs_only():
    bench = importlib.import_module("benchmarks.bench_attention")
    assert bench.attention_flops(2, 64, [512] * 3) == 4 * 2 * 64 * 3 * 512**2
    assert bench.attention_flops(1, 32, [10, 3]) == 4 * 32 * (100 + 9)
    # |i - j| <= 1 in a length-3 sequence: 2 + 3 + 2 pairs; a window wider than L is dense.
    assert bench.attention_flops(1, 1, [3], window=1) == 4 * 7
    assert bench.attention_flops(1, 1, [3], window=5) == 4 * 9
