"""The whole-step benchmark: span-masked batches, the step closure, the smoke rows."""
import math
import sys

import pytest
import torch

from benchmarks import bench_step
from benchmarks import flops as F


def test_make_batch_formats_agree():
    """HF gets the padded batch, ours its packed form: the same tokens, masks and targets."""
    lengths = [20, 9, 16]
    batch = bench_step.make_batch(lengths, vocab_size=300, seed=3)
    ours, hf = batch.ours, batch.hf
    seq_len = max(lengths)
    assert hf["input_ids"].shape == (3, seq_len) and batch.lengths == lengths
    assert hf["attention_mask"].sum(1).tolist() == lengths
    for row, length in enumerate(lengths):
        assert hf["input_ids"][row, 0] == bench_step.CLS_ID
        assert hf["input_ids"][row, length - 1] == bench_step.SEP_ID
        assert (hf["input_ids"][row, length:] == bench_step.PAD_ID).all()
    # packed: real tokens only, row after row
    assert ours["input_ids"].shape == (sum(lengths),) and ours["cu_seqlens"].tolist() == [0, 20, 29, 45]
    assert torch.equal(ours["input_ids"], hf["input_ids"].flatten()[ours["unpad_index"]])
    to_padded = lambda key: ours["unpad_index"][ours[key]]  # noqa: E731  packed index -> padded flat index
    # 15 % of each block (without [CLS]/[SEP]), rounded up: ceil(2.7) + ceil(1.05) + ceil(2.1) = 3 + 2 + 3.
    masked = to_padded("mlm_positions")
    assert batch.n_masked == len(masked) == 8
    rows_of_masked, cols_of_masked = masked // seq_len, masked % seq_len
    assert (cols_of_masked >= 1).all()
    assert (cols_of_masked < torch.tensor(lengths)[rows_of_masked] - 1).all()  # never [SEP] or padding
    labels = hf["labels"].flatten()
    assert (labels != -100).sum() == batch.n_masked
    assert torch.equal(labels[masked], ours["mlm_labels"])
    assert (ours["mlm_labels"] >= bench_step.FIRST_REGULAR_ID).all()
    # SBO targets: boundaries in the target's row, around a masked token, labels from the originals.
    left, right = to_padded("sbo_left"), to_padded("sbo_right")
    assert batch.n_sbo == len(left)
    assert (left // seq_len == right // seq_len).all()
    assert (left < right).all() and (ours["sbo_rel_pos"] < 15).all()
    targets = left + 1 + ours["sbo_rel_pos"]
    assert torch.isin(targets, masked).all()
    assert torch.equal(ours["sbo_labels"], labels[targets])
    # head_rows comes with the batch, so the last layer skips the other rows without a host sync
    head_rows = torch.unique(torch.cat([ours["mlm_positions"], ours["sbo_left"], ours["sbo_right"]]))
    assert torch.equal(ours["head_rows"], head_rows)


def test_full_size_batch_is_span_masked():
    batch = bench_step.make_batch([512] * 32, vocab_size=28996)
    assert batch.n_masked == 32 * math.ceil(0.15 * 510)  # 32 x 77 = 2464
    assert 0.5 * batch.n_masked < batch.n_sbo < batch.n_masked  # most spans have both boundaries
    masked = batch.ours["input_ids"].flatten()[batch.ours["mlm_positions"]]
    share = (masked == bench_step.MASK_ID).float().mean().item()
    assert 0.6 < share < 0.95  # 80 % of spans -> [MASK], the rest random or kept


def test_case_lengths():
    assert bench_step.case_lengths("dense", 4, 512) == [512] * 4
    padded = bench_step.case_lengths("pad", 32, 512)
    assert len(padded) == 32 and all(128 <= n <= 512 for n in padded) and len(set(padded)) > 1
    with pytest.raises(ValueError, match="variant"):
        bench_step.case_lengths("packed", 4, 512)


def test_smoke_rows_are_consistent():
    rows = bench_step.run(smoke=True)
    by_key = {(r.case, r.impl, r.metric): r for r in rows}
    ceiling = next(r for r in rows if r.impl == "torch.matmul")
    case = "tiny-B2-S32-pad8..32"
    config = bench_step.SMOKE_CONFIG
    batch = bench_step.make_batch(bench_step.case_lengths("pad", 2, 32), config["vocab_size"])
    for impl, n_sbo in (("hf-sdpa", 0), ("ours", batch.n_sbo)):
        tokens = by_key[(case, impl, "tokens/s")]
        assert tokens.suite == "step" and tokens.mode == "train step" and tokens.ms > 0
        assert tokens.value == pytest.approx(sum(batch.lengths) / tokens.ms * 1e3)
        flops = F.train_step_flops(batch.lengths, config["hidden_size"], config["num_hidden_layers"],
                                   config["intermediate_size"], config["vocab_size"], batch.n_masked, n_sbo,
                                   config["sbo_position_embedding_size"])
        achieved = by_key[(case, impl, "TFLOP/s")].value
        assert achieved == pytest.approx(flops / tokens.ms / 1e9)
        assert by_key[(case, impl, "MFU %")].value == pytest.approx(100 * achieved / ceiling.value)
    ratio = by_key[(case, "ours", "x hf-sdpa tokens/s")]
    assert ratio.value == pytest.approx(by_key[(case, "hf-sdpa", "tokens/s")].ms / ratio.ms)
    assert not any("compile" in r.impl for r in rows)  # smoke: no compiled rows by default
    assert all(math.isfinite(r.value) and r.value > 0 for r in rows)


def test_compiled_step_updates_the_model():
    """One step of our tiny model through torch.compile (dynamo, eager backend) trains it."""
    from spanbert_fast import SpanBertConfig

    config = SpanBertConfig(**bench_step.SMOKE_CONFIG)
    model = bench_step.build_ours(config, "cpu", "torch")
    batch = bench_step.make_batch([12, 7], config.vocab_size)
    before = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    step = bench_step.make_step(model, bench_step._ours_loss, batch.ours, compile_backend="eager")
    step()
    after = model.bert.encoder.layer[0].attention.self.query.weight
    assert not torch.equal(before, after)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_failing_implementation_is_reported_and_the_others_kept(monkeypatch):
    measure = bench_step._measure_impl

    def ours_fails(model, loss_fn, inputs, compile_backend, smoke, cuda, check_syncs, cuda_graph=False):
        if loss_fn is bench_step._ours_loss:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return measure(model, loss_fn, inputs, compile_backend, smoke, cuda, check_syncs, cuda_graph)

    monkeypatch.setattr(bench_step, "_measure_impl", ours_fails)
    rows = bench_step.run(smoke=False, presets=["tiny"], variants=["pad"], with_compile=False)
    failed = [r for r in rows if r.metric == "failed"]
    assert [(r.impl, r.extra) for r in failed] == [("ours", "OutOfMemoryError: CUDA out of memory (simulated)")]
    assert {r.metric for r in rows if r.impl == "hf-sdpa"} >= {"tokens/s", "TFLOP/s", "MFU %"}
    assert not any(r.metric.startswith("x ") for r in rows)  # no ratio without the ours row
    with pytest.raises(torch.cuda.OutOfMemoryError):  # smoke runs (CI) fail loudly instead
        bench_step.run(smoke=True, with_compile=False)


def test_without_transformers_ours_runs_alone_and_one_line_says_how_to_get_hf(monkeypatch, capsys, tmp_path):
    """After ./setup.sh (no transformers) `bench --smoke` still passes: the step suite measures ours
    and says once that the HF rows need the [hf] extra."""
    from spanbert_fast.cli import main

    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    assert not bench_step.hf_available()
    rows = bench_step.run(smoke=True)
    assert {r.impl for r in rows} == {"torch.matmul", "ours"}
    assert {r.metric for r in rows if r.impl == "ours"} >= {"tokens/s", "TFLOP/s", "MFU %"}
    printed = [line for line in capsys.readouterr().out.splitlines() if "spanbert-fast[hf]" in line]
    assert printed == ["[bench] step: transformers is not installed, so only our rows run; the hf-sdpa rows "
                       "need `pip install spanbert-fast[hf]`"]
    assert main(["bench", "--smoke", "--suite", "step", "--out", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    assert "pip install spanbert-fast[hf]" in output and "FAILED" not in output
    assert (tmp_path / "results.csv").is_file()
