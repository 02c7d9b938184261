"""The masked-LM-loss benchmark suite runs end to end on a tiny CPU case (Triton interpreter).

It checks that ours and every baseline give a row with a positive time and TFLOP/s and that
the rows write to CSV; it says nothing about speed.
"""
import csv
import importlib
import math


def test_bench_masked_lm_loss_smoke_rows(tmp_path, capsys):
    bench = importlib.import_module("benchmarks.bench_masked_lm_loss")
    common = importlib.import_module("benchmarks.common")
    rows = bench.run(smoke=True)
    assert "byte model of our backward, T64-M10-V97-d32" in capsys.readouterr().out
    assert {r.impl for r in rows} >= {"ours", "ours+validate", "full-logits+CE", "gather+CE"}
    for r in rows:
        assert r.suite == "masked_lm_loss" and r.mode == "fwd+bwd", r
        assert r.case == "T64-M10-V97-d32", r
        assert math.isfinite(r.ms) and r.ms > 0, r
        assert math.isfinite(r.value) and r.value > 0, r
    path = common.write_csv(rows, str(tmp_path / "mlm.csv"))
    with open(path) as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def test_bench_masked_lm_loss_prints_the_byte_model_without_a_gpu(capsys):
    bench = importlib.import_module("benchmarks.bench_masked_lm_loss")
    assert bench.run(smoke=False, bytes_only=True) == []
    out = capsys.readouterr().out
    assert "T16384-M2458-V28996-d768" in out and "T16384-M2458-V28996-d1024" in out
    assert out.count("GB per backward call") == 2


def test_byte_model_of_the_backward_at_the_base_shapes():
    """Issue 15: at T16384 M2458 V28996 d768 bf16 the backward moves <= 0.6 GB a call as the
    pre-training heads call it (rows gathered before the op; 0.985 GB before the scale, the
    bias gradient and dX were folded in, 0.687 GB with three chunks): dz is written once, in one
    chunk, and read by the two GEMMs only; dX is one GEMM in bf16 (no fp32 accumulator, no cast).
    With positions into the 16384 rows, the zero-filled [N, d] gradient adds its 25 MB."""
    loss_bytes = importlib.import_module("benchmarks.loss_bytes")
    mlm = importlib.import_module("spanbert_fast.kernels.masked_lm_loss")
    heads_call = loss_bytes.backward_traffic(**loss_bytes.BASE_SHAPE, positions=False)
    assert loss_bytes.total_bytes(heads_call) <= 0.6e9
    with_positions = loss_bytes.backward_traffic(**loss_bytes.BASE_SHAPE)
    assert loss_bytes.total_bytes(with_positions) <= 0.63e9
    for traffic in (heads_call, with_positions):
        steps = {t.step.split(" [")[0] for t in traffic}
        assert steps.isdisjoint({"scale dW", "scale dX", "db column sum", "dX add", "dX cast"}), steps
        dz_written = [t.written for t in traffic if t.buffer.startswith("s * dz")]
        assert len(dz_written) == 1 and max(dz_written) <= mlm.DLOGITS_CHUNK_BYTES
    assert {t.step for t in heads_call}.isdisjoint({"gather rows", "dhidden init", "scatter"})


def test_byte_model_with_several_chunks_counts_the_fp32_dx(monkeypatch):
    """When [M, V] exceeds the chunk budget, dX accumulates in fp32 over chunks and is cast once."""
    loss_bytes = importlib.import_module("benchmarks.loss_bytes")
    mlm = importlib.import_module("spanbert_fast.kernels.masked_lm_loss")
    monkeypatch.setattr(mlm, "DLOGITS_CHUNK_BYTES", 64 * 2**20)
    traffic = loss_bytes.backward_traffic(**loss_bytes.BASE_SHAPE, positions=False)
    assert len([t for t in traffic if t.buffer.startswith("s * dz")]) == 3
    assert any(t.step == "dX cast" for t in traffic)
    assert loss_bytes.total_bytes(traffic) > 0.6e9
