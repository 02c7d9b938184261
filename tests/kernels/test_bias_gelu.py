"""Parity of the fused ``GeLU_erf(x + bias)`` kernel (the FFN epilogue) with the torch reference.

Output and both grads (dx, dbias) at awkward shapes (one column, odd widths, widths past a
column tile, one row), with leading dims, in fp16/bf16 I/O; what the backward saves (x and
bias, never the activation); deterministic dbias; the torch.library registration (opcheck,
torch.compile); input validation; and the model on the Triton backend against the torch
backend (loss and every grad), which runs ``Intermediate`` through this kernel.
CPU runs go through the Triton interpreter.
"""
import pytest
import torch
import torch.nn.functional as F

from helpers import (
    DEVICE,
    FP32_REDUCTION_TOL,
    FP32_TOL,
    assert_close_fp32,
    assert_compiled_matches_eager,
    assert_lowp_rule,
    output_and_grads,
)
from model_fixtures import tiny_batch, tiny_config
from spanbert_fast import SpanBertForPreTraining, ops
from spanbert_fast.kernels import bias_gelu as kernel
from spanbert_fast.kernels.bias_gelu import bias_gelu
from spanbert_fast.ops import bias_gelu_torch

GRAD_NAMES = ("dx", "dbias")


def make_inputs(shape, dtype=torch.float32, bias_dtype=None, device=DEVICE):
    """(x [*shape], bias [F]), leaves requiring grad; x spread over GeLU's curved range."""
    x = (torch.randn(*shape, device=device) * 2.0).to(dtype).requires_grad_()
    bias = (torch.randn(shape[-1], device=device) * 0.5).to(bias_dtype or dtype).requires_grad_()
    return x, bias


def torch_lowp(x, bias):
    """PyTorch's own version in x's dtype (for the 2x error rule)."""
    return F.gelu(x + bias.to(x.dtype), approximate="none")


# rows, F: one column, odd widths, F = 3072 (BERT-base) and one past it, rows past a row tile
SHAPES = [(1, 1), (3, 31), (67, 129), (5, 3072), (3, 3073), (130, 200)]


@pytest.mark.parametrize("rows,cols", SHAPES, ids=[f"T{r}-F{c}" for r, c in SHAPES])
def test_fp32_matches_reference(rows, cols):
    inputs = make_inputs((rows, cols))
    grad_out = torch.randn(rows, cols, device=DEVICE)
    y, grads = output_and_grads(bias_gelu, inputs, grad_out)
    y_ref, grads_ref = output_and_grads(bias_gelu_torch, inputs, grad_out)
    assert y.dtype == torch.float32 and y.shape == (rows, cols)
    assert_close_fp32(y, y_ref, FP32_TOL, "y")
    assert_close_fp32(grads[0], grads_ref[0], FP32_TOL, "dx")
    # dbias sums up to 130 rows of dh
    assert_close_fp32(grads[1], grads_ref[1], FP32_TOL if rows < 100 else FP32_REDUCTION_TOL, "dbias")


def test_leading_dims():
    inputs = make_inputs((2, 5, 48))
    grad_out = torch.randn(2, 5, 48, device=DEVICE)
    y, grads = output_and_grads(bias_gelu, inputs, grad_out)
    y_ref, grads_ref = output_and_grads(bias_gelu_torch, inputs, grad_out)
    assert y.shape == (2, 5, 48)
    assert_close_fp32(y, y_ref, name="y")
    for name, grad, grad_ref in zip(GRAD_NAMES, grads, grads_ref):
        assert_close_fp32(grad, grad_ref, name=name)


@pytest.mark.parametrize("dtype,bias_dtype", [
    (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16), (torch.bfloat16, torch.float32),
], ids=["bf16", "fp16", "bf16-fp32-bias"])
def test_low_precision_io(dtype, bias_dtype):
    """fp32 math inside: error vs the fp32 reference within 2x PyTorch's own low-precision error;
    each grad comes back in its input's dtype."""
    inputs = make_inputs((37, 200), dtype=dtype, bias_dtype=bias_dtype)
    grad_out = torch.randn(37, 200, device=DEVICE).to(dtype)
    assert_lowp_rule(bias_gelu, bias_gelu_torch, torch_lowp, inputs, grad_out, GRAD_NAMES)


def test_backward_saves_x_and_bias_only():
    """The autograd graph keeps the op's inputs, never an [T, F] activation of its own."""
    x, bias = make_inputs((6, 40))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = bias_gelu(x, bias)
    assert [tuple(t.shape) for t in saved] == [(6, 40), (40,)]
    assert saved[0].data_ptr() == x.data_ptr() and saved[1] is bias  # x itself (a view), no copy
    # the eager reference saves more: that is what the fusion removes
    reference_saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: reference_saved.append(t) or t, lambda t: t):
        F.gelu(x + bias)
    assert any(t.shape == x.shape and t is not x for t in reference_saved)
    y.sum().backward()
    assert x.grad is not None and bias.grad is not None


def test_empty_input():
    x, bias = make_inputs((0, 64))
    y, grads = output_and_grads(bias_gelu, (x, bias), torch.zeros(0, 64, device=DEVICE))
    assert y.shape == (0, 64) and grads[0].shape == (0, 64)
    assert torch.equal(grads[1], torch.zeros(64, device=DEVICE))


def test_dbias_is_deterministic():
    inputs = make_inputs((300, 96))
    grad_out = torch.randn(300, 96, device=DEVICE)
    _, first = output_and_grads(bias_gelu, inputs, grad_out)
    _, second = output_and_grads(bias_gelu, inputs, grad_out)
    for name, a, b in zip(GRAD_NAMES, first, second):
        assert torch.equal(a, b), name


def test_ops_backend_switch_reaches_the_kernel():
    inputs = make_inputs((5, 48))
    ours = ops.bias_gelu(*inputs, backend="triton")
    assert_close_fp32(ours, bias_gelu(*inputs), name="y")
    assert_close_fp32(ours, ops.bias_gelu(*inputs, backend="torch"), name="y")


def test_opcheck():
    x, bias = make_inputs((7, 24))
    torch.library.opcheck(kernel._fwd_op, (x, bias))
    grad_out = torch.randn(7, 24, device=DEVICE)
    torch.library.opcheck(kernel._bwd_op, (grad_out, x.detach(), bias.detach()))  # no double backward


def test_torch_compile_traces_the_op():
    """fullgraph=True: the custom op (fake impl + autograd) is traced, not a graph break."""
    def block(x, bias):
        return bias_gelu(x * 2.0, bias).square().sum()

    assert_compiled_matches_eager(block, make_inputs((9, 40)), GRAD_NAMES)


BAD_CASES = {  # name: (argument overrides, expected message)
    "x-int": (lambda a: dict(a, x=a["x"].long()), "x must be float32"),
    "x-0dim": (lambda a: dict(a, x=a["x"][0, 0]), "x must be \\[..., F\\]"),
    "x-no-columns": (lambda a: dict(a, x=a["x"][:, :0]), "x must be \\[..., F\\]"),
    "x-strided": (lambda a: dict(a, x=a["x"].t().contiguous().t()), "x must be contiguous"),
    "x-not-tensor": (lambda a: dict(a, x=[1.0]), "x must be a torch.Tensor"),
    "bias-shape": (lambda a: dict(a, bias=a["bias"][:8]), "bias must have shape"),
    "bias-none": (lambda a: dict(a, bias=None), "bias must have shape"),
    "bias-int": (lambda a: dict(a, bias=a["bias"].long()), "bias must be float32"),
    "bias-strided": (lambda a: dict(a, bias=torch.zeros(32, device=DEVICE)[::2]), "bias must be contiguous"),
    "bias-device": (lambda a: dict(a, bias=a["bias"].to("meta")), "bias is on meta"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_raises_value_error(case):
    x, bias = (t.detach() for t in make_inputs((16, 16)))
    override, message = BAD_CASES[case]
    with pytest.raises(ValueError, match=message):
        bias_gelu(**override(dict(x=x, bias=bias)))


def test_model_triton_backend_matches_torch_backend_through_intermediate(monkeypatch):
    """Loss and every parameter grad of the whole model, Triton vs torch backend; the FFN's
    ``Intermediate`` runs the fused op on Triton (checked by counting its calls)."""
    config = tiny_config(hidden_size=64, num_attention_heads=2, intermediate_size=192)  # head dim 32
    model = SpanBertForPreTraining(config).to(DEVICE).eval()
    batch = {k: v.to(DEVICE) for k, v in tiny_batch().items()}
    reference = model.set_backend("torch")(**batch)
    reference.loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    calls = []
    original = kernel.bias_gelu
    monkeypatch.setattr(kernel, "bias_gelu", lambda x, bias: calls.append(tuple(x.shape)) or original(x, bias))
    fused = model.set_backend("triton")(**batch)
    fused.loss.backward()
    assert len(calls) == config.num_hidden_layers and all(c[-1] == 192 for c in calls), calls
    assert_close_fp32(fused.loss, reference.loss, name="loss")
    for name, param in model.named_parameters():
        assert_close_fp32(param.grad, ref_grads[name], FP32_REDUCTION_TOL, name)
    assert any("intermediate.dense.bias" in n for n in ref_grads)


GPU_SHAPES = [(16384, 3072), (2458, 3072), (1000, 1030), (1, 31)]


@pytest.mark.gpu
@pytest.mark.parametrize("rows,cols", GPU_SHAPES, ids=[f"T{r}-F{c}" for r, c in GPU_SHAPES])
def test_gpu_bf16_matches_reference(rows, cols):
    inputs = make_inputs((rows, cols), dtype=torch.bfloat16, device="cuda")
    grad_out = torch.randn(rows, cols, device="cuda").bfloat16()
    assert_lowp_rule(bias_gelu, bias_gelu_torch, torch_lowp, inputs, grad_out, GRAD_NAMES)


@pytest.mark.gpu
def test_gpu_fp32_matches_reference():
    inputs = make_inputs((4097, 3072), device="cuda")
    grad_out = torch.randn(4097, 3072, device="cuda")
    y, grads = output_and_grads(bias_gelu, inputs, grad_out)
    y_ref, grads_ref = output_and_grads(bias_gelu_torch, inputs, grad_out)
    assert_close_fp32(y, y_ref, name="y")
    assert_close_fp32(grads[0], grads_ref[0], name="dx")
    assert_close_fp32(grads[1], grads_ref[1], 1e-3, "dbias")  # 4097-row sums
