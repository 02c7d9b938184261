"""The step profiler (benchmarks/profile_step.py) runs and writes its files (CPU smoke), sorts
GPU kernel names into the right categories, and lists the elementwise ops still eager in the
encoder: none of GeLU, bias-add or LayerNorm on the Triton path."""
import csv

import pytest

from benchmarks import profile_step


@pytest.mark.parametrize("name,expected", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "gemm"),
    ("nvjet_tst_128x192_64x4_2x1_v_bz_coopA_NNT", "gemm"),
    ("_attention_bwd_dkdv_kernel", "attention"),
    ("_bias_dropout_add_layernorm_fwd_kernel", "norm"),
    ("_bias_gelu_layernorm_bwd_kernel", "norm"),
    ("_forward_stats_kernel", "loss"),
    ("_dlogits_kernel", "loss"),
    ("_sum_partials_kernel", "norm"),
    ("Memcpy DtoD (Device -> Device)", "copy/index"),
    ("autograd::engine::evaluate_function: LogSoftmaxBackward0", "loss"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("void at::native::index_put_with_sort_kernel<float>", "copy/index"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", "copy/index"),
    ("something_new", "other"),
])
def test_categories(name, expected):
    assert profile_step.category(name) == expected


def test_smoke_profile_writes_csv_summary_and_trace(tmp_path):
    rows = profile_step.profile(steps=1, warmup=1, out_dir=str(tmp_path), smoke=True)
    assert rows and abs(sum(r["share_pct"] for r in rows) - 100.0) < 1e-6
    with open(tmp_path / "kernels.csv") as f:
        header = next(csv.reader(f))
    assert header == ["kernel", "category", "calls_per_step", "us_per_step", "us_per_call", "share_pct"]
    summary = (tmp_path / "summary.md").read_text()
    assert "| category | ms / step | share |" in summary and "torch" in summary
    assert (tmp_path / "trace.json.gz").stat().st_size > 0


FUSED_KINDS = {"gelu", "bias-add", "layernorm"}


@pytest.mark.parametrize("name,shapes,kind", [
    ("aten::add", [[6, 64], [64]], "bias-add"),
    ("aten::add", [[6, 64], [6, 64]], "pointwise"),
    ("aten::gelu_backward", [[6, 64], [6, 64]], "gelu"),
    ("aten::layer_norm", [[6, 32], [], [32], [32]], "layernorm"),
    ("aten::native_dropout", [[6, 32]], "dropout"),
    ("aten::mm", [[6, 32], [32, 64]], None),
    ("spanbert_fast::bias_gelu_fwd", [[6, 64], [64]], None),
])
def test_elementwise_kind(name, shapes, kind):
    assert profile_step.elementwise_kind(name, shapes) == kind


def test_eager_encoder_ops_torch_backend_lists_the_unfused_ops():
    """The reference path runs GeLU, bias-adds and LayerNorm eagerly: the listing finds them."""
    kinds = {row["kind"] for row in profile_step.eager_encoder_ops("torch")}
    assert FUSED_KINDS <= kinds, kinds


def test_eager_encoder_ops_triton_backend_has_no_gelu_bias_add_or_layernorm():
    """On Triton (the interpreter on CPU, set by conftest.py) the encoder's GeLU, bias-adds and
    LayerNorms run inside the fused kernels, forward and backward; what is left eager (the
    gradient-accumulation adds) is allowed."""
    rows = profile_step.eager_encoder_ops("triton")
    left = {(row["op"], row["kind"], row["where"]) for row in rows if row["kind"] in FUSED_KINDS}
    assert not left, f"still eager in the encoder on the Triton path: {sorted(left)}"
