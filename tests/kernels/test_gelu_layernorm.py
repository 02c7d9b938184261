"""Parity of the fused ``LayerNorm(GeLU(x + bias))`` kernel with the torch reference.

Outputs and every grad (dx, dbias, dgamma, dbeta) at awkward shapes (d = 1, odd d,
d not a power of two, d = 8192), without a bias, in fp16/bf16 I/O, with leading
dims and non-contiguous input; the torch.library registration (opcheck,
torch.compile) and input validation. CPU runs go through the Triton interpreter.
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
    assert_layernorm_grads_close,
    output_and_grads,
)
from spanbert_fast import ops
from spanbert_fast.kernels import gelu_layernorm as kernel
from spanbert_fast.kernels.gelu_layernorm import bias_gelu_layernorm
from spanbert_fast.ops import bias_gelu_layernorm_torch

GRAD_NAMES = ("dx", "dbias", "dgamma", "dbeta")


def make_inputs(shape, dtype=torch.float32, has_bias=True, param_dtype=None, device=DEVICE):
    """x [*shape], bias/gamma/beta [d], all leaves requiring grad (bias None if not has_bias)."""
    d = shape[-1]
    param_dtype = param_dtype or dtype

    def leaf(*size, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(*size, device=device) * scale + shift).to(dt).requires_grad_()

    x = leaf(*shape, scale=2.0)
    bias = leaf(d, scale=0.5, dt=param_dtype) if has_bias else None
    weight = leaf(d, scale=0.3, shift=1.0, dt=param_dtype)
    ln_bias = leaf(d, scale=0.2, dt=param_dtype)
    return x, bias, weight, ln_bias


def torch_lowp(x, bias, weight, ln_bias, eps=1e-12):
    """PyTorch's own version of the op in x's dtype (for the 2x error rule)."""
    h = x if bias is None else x + bias.to(x.dtype)
    return F.layer_norm(F.gelu(h), (x.shape[-1],), weight.to(x.dtype), ln_bias.to(x.dtype), eps)


SHAPES = [(1, 1), (3, 31), (1000, 31), (37, 128), (1000, 200), (3, 768), (1000, 768), (37, 1030), (1, 1030), (3, 8192)]


@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("rows,d", SHAPES, ids=[f"rows{r}-d{d}" for r, d in SHAPES])
def test_fp32_matches_reference(rows, d, has_bias):
    inputs = make_inputs((rows, d), has_bias=has_bias)
    grad_out = torch.randn(rows, d, device=DEVICE)
    y, grads = output_and_grads(bias_gelu_layernorm, inputs, grad_out)
    y_ref, grads_ref = output_and_grads(bias_gelu_layernorm_torch, inputs, grad_out)
    tol = FP32_REDUCTION_TOL if d >= 768 or rows >= 1000 else FP32_TOL
    assert y.dtype == torch.float32 and y.shape == (rows, d)
    assert_close_fp32(y, y_ref, tol, "y")
    assert_layernorm_grads_close(GRAD_NAMES, grads, grads_ref, tol, d)


def test_leading_dims_and_noncontiguous_input():
    x, bias, weight, ln_bias = make_inputs((6, 3, 40))
    inputs = (x.transpose(0, 1), bias, weight, ln_bias)  # [3, 6, 40], not contiguous
    grad_out = torch.randn(3, 6, 40, device=DEVICE)
    y, grads = output_and_grads(bias_gelu_layernorm, inputs, grad_out)
    y_ref, grads_ref = output_and_grads(bias_gelu_layernorm_torch, inputs, grad_out)
    assert y.shape == (3, 6, 40)
    assert_close_fp32(y, y_ref, name="y")
    for name, grad, grad_ref in zip(GRAD_NAMES, grads, grads_ref):
        assert_close_fp32(grad, grad_ref, name=name)


@pytest.mark.parametrize("dtype,param_dtype", [
    (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16), (torch.bfloat16, torch.float32),
], ids=["bf16", "fp16", "bf16-fp32-params"])
def test_low_precision_io(dtype, param_dtype):
    """fp32 math inside: error vs the fp32 reference within 2x PyTorch's own low-precision error."""
    inputs = make_inputs((37, 200), dtype=dtype, param_dtype=param_dtype)
    grad_out = torch.randn(37, 200, device=DEVICE).to(dtype)
    assert_lowp_rule(bias_gelu_layernorm, bias_gelu_layernorm_torch, torch_lowp, inputs, grad_out, GRAD_NAMES)


def test_empty_input():
    x, bias, weight, ln_bias = make_inputs((0, 64))
    y, grads = output_and_grads(bias_gelu_layernorm, (x, bias, weight, ln_bias), torch.zeros(0, 64, device=DEVICE))
    assert y.shape == (0, 64)
    for name, grad in zip(GRAD_NAMES[1:], grads[1:]):
        assert torch.equal(grad, torch.zeros(64, device=DEVICE)), name


def test_parameter_grads_are_deterministic():
    inputs = make_inputs((1000, 200))
    grad_out = torch.randn(1000, 200, device=DEVICE)
    _, first = output_and_grads(bias_gelu_layernorm, inputs, grad_out)
    _, second = output_and_grads(bias_gelu_layernorm, inputs, grad_out)
    for name, a, b in zip(GRAD_NAMES, first, second):
        assert torch.equal(a, b), name


def test_ops_backend_switch_reaches_the_kernel():
    inputs = make_inputs((5, 48))
    ours = ops.bias_gelu_layernorm(*inputs, backend="triton")
    assert_close_fp32(ours, bias_gelu_layernorm(*inputs), name="y")
    assert_close_fp32(ours, ops.bias_gelu_layernorm(*inputs, backend="torch"), name="y")


@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "no-bias"])
def test_opcheck(has_bias):
    x, bias, weight, ln_bias = make_inputs((7, 24), has_bias=has_bias)
    torch.library.opcheck(kernel._fwd_op, (x, bias, weight, ln_bias, 1e-12))
    _, mean, rstd = kernel._fwd_op(x, bias, weight, ln_bias, 1e-12)
    grad_out = torch.randn(7, 24, device=DEVICE)
    saved = [None if t is None else t.detach() for t in (x, bias, weight, mean, rstd)]
    torch.library.opcheck(kernel._bwd_op, (grad_out, *saved))  # no double backward: inputs detached


def test_torch_compile_traces_the_op():
    """fullgraph=True: the custom op (fake impl + autograd) is traced, not a graph break."""
    def block(x, bias, weight, ln_bias):
        return bias_gelu_layernorm(x * 2.0, bias, weight, ln_bias).square().sum()

    assert_compiled_matches_eager(block, make_inputs((9, 40)), GRAD_NAMES)


def _bad(name):
    x, bias, weight, ln_bias = (t.detach() for t in make_inputs((4, 16)))
    args = dict(x=x, bias=bias, weight=weight, ln_bias=ln_bias, eps=1e-12)
    return {
        "x-int": (dict(args, x=x.long()), "x must be float32"),
        "x-0dim": (dict(args, x=x[0, 0]), "x must be"),
        "x-too-wide": (dict(args, x=x.new_zeros(2, 8193), bias=None), "d <= 8192"),
        "bias-shape": (dict(args, bias=bias[:8]), "bias must have shape"),
        "weight-none": (dict(args, weight=None), "weight must be"),
        "ln_bias-shape": (dict(args, ln_bias=ln_bias[None]), "ln_bias must have shape"),
        "weight-int": (dict(args, weight=weight.long()), "weight must be float32"),
        "eps-negative": (dict(args, eps=-1.0), "eps must be"),
    }[name]


@pytest.mark.parametrize("case", ["x-int", "x-0dim", "x-too-wide", "bias-shape", "weight-none",
                                  "ln_bias-shape", "weight-int", "eps-negative"])
def test_bad_input_raises_value_error(case):
    kwargs, message = _bad(case)
    with pytest.raises(ValueError, match=message):
        bias_gelu_layernorm(**kwargs)


GPU_SHAPES = [(16384, 768), (2458, 768), (1000, 1030), (37, 8192), (1, 31)]


@pytest.mark.gpu
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("rows,d", GPU_SHAPES, ids=[f"rows{r}-d{d}" for r, d in GPU_SHAPES])
def test_gpu_bf16_matches_reference(rows, d, has_bias):
    inputs = make_inputs((rows, d), dtype=torch.bfloat16, has_bias=has_bias, device="cuda")
    grad_out = torch.randn(rows, d, device="cuda").bfloat16()
    assert_lowp_rule(bias_gelu_layernorm, bias_gelu_layernorm_torch, torch_lowp, inputs, grad_out, GRAD_NAMES)
