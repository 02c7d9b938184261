"""Parity of the fused ``LayerNorm(dropout(x + bias) + residual)`` kernel with the torch reference.

Outputs and every grad (dx, dbias, dresidual, dgamma, dbeta) at awkward shapes,
without a bias, with and without dropout (the reference is given the kernel's
keep-mask from ``dropout_keep_mask``); the dropout itself (reproducible from the
seed, seeds differ, keep rate within 3 sigma of 1 - p, no neighbour correlation, the
mask a function of (seed, row, column) only, p = 0 is the plain path); fp16/bf16 I/O; the
torch.library registration (opcheck, torch.compile) and input validation.
"""
import pytest
import torch
import torch.nn.functional as F

from helpers import (
    DEVICE,
    FP32_REDUCTION_TOL,
    FP32_TOL,
    assert_close_fp32,
    assert_close_lowp,
    assert_compiled_matches_eager,
    assert_layernorm_grads_close,
)
from spanbert_fast import ops
from spanbert_fast.kernels import dropout_add_layernorm as kernel
from spanbert_fast.kernels.dropout_add_layernorm import bias_dropout_add_layernorm, dropout_keep_mask
from spanbert_fast.ops import bias_dropout_add_layernorm_torch

GRAD_NAMES = ("dx", "dbias", "dresidual", "dgamma", "dbeta")
SEED = 1234


def make_inputs(shape, dtype=torch.float32, has_bias=True, device=DEVICE):
    """(x, bias, residual, gamma, beta), leaves requiring grad (bias None if not has_bias)."""
    d = shape[-1]

    def leaf(*size, scale=1.0, shift=0.0):
        return (torch.randn(*size, device=device) * scale + shift).to(dtype).requires_grad_()

    bias = leaf(d, scale=0.5) if has_bias else None
    return leaf(*shape), bias, leaf(*shape, scale=2.0), leaf(d, scale=0.3, shift=1.0), leaf(d, scale=0.2)


def run(fn, inputs, grad_out, **kwargs):
    """(y, [grad of each input, None where the input is None]) of ``fn(*inputs, **kwargs)``."""
    y = fn(*inputs, **kwargs)
    present = [t for t in inputs if t is not None]
    grads = iter(torch.autograd.grad(y, present, grad_out))
    return y, [None if t is None else next(grads) for t in inputs]


def reference(x, bias, residual, weight, ln_bias, p=0.0, seed=SEED, **kwargs):
    """The torch reference with the kernel's keep-mask (None, the plain path, when p = 0)."""
    mask = dropout_keep_mask(x.shape, p, seed, x.device) if p > 0 else None
    return bias_dropout_add_layernorm_torch(x, bias, residual, weight, ln_bias, p, eps=1e-12, dropout_mask=mask)


def torch_lowp(x, bias, residual, weight, ln_bias, p=0.0, seed=SEED):
    """PyTorch's own version in x's dtype (for the 2x error rule), with the kernel's keep-mask."""
    h = x if bias is None else x + bias
    if p > 0:
        h = h * dropout_keep_mask(x.shape, p, seed, x.device) / (1 - p)
    return F.layer_norm(h + residual, (x.shape[-1],), weight, ln_bias, 1e-12)


CASES = [  # rows, d, p
    (1, 1, 0.0), (3, 31, 0.1), (37, 128, 0.0), (37, 200, 0.1), (1000, 200, 0.5),
    (3, 768, 0.1), (1000, 768, 0.0), (1000, 768, 0.1), (37, 1030, 0.1), (1, 1030, 0.0), (3, 8192, 0.1),
]


@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("rows,d,p", CASES, ids=[f"rows{r}-d{d}-p{p}" for r, d, p in CASES])
def test_fp32_matches_reference(rows, d, p, has_bias):
    inputs = make_inputs((rows, d), has_bias=has_bias)
    grad_out = torch.randn(rows, d, device=DEVICE)
    y, grads = run(bias_dropout_add_layernorm, inputs, grad_out, p=p, seed=SEED)
    y_ref, grads_ref = run(reference, inputs, grad_out, p=p)
    tol = FP32_REDUCTION_TOL if d >= 768 or rows >= 1000 else FP32_TOL
    assert y.dtype == torch.float32 and y.shape == (rows, d)
    assert_close_fp32(y, y_ref, tol, "y")
    assert_layernorm_grads_close(GRAD_NAMES, grads, grads_ref, tol, d)


def test_dropped_elements_get_no_input_grad():
    inputs = make_inputs((37, 200))
    _, grads = run(bias_dropout_add_layernorm, inputs, torch.randn(37, 200, device=DEVICE), p=0.3, seed=SEED)
    dropped = ~dropout_keep_mask((37, 200), 0.3, SEED, DEVICE)
    assert dropped.any()
    assert torch.equal(grads[0][dropped], torch.zeros(int(dropped.sum()), device=DEVICE))
    assert (grads[2][dropped] != 0).all()  # the residual path is never dropped


def test_leading_dims_and_noncontiguous_input():
    x, bias, residual, weight, ln_bias = make_inputs((6, 3, 40))
    inputs = (x.transpose(0, 1), bias, residual.transpose(0, 1), weight, ln_bias)  # [3, 6, 40], strided
    grad_out = torch.randn(3, 6, 40, device=DEVICE)
    y, grads = run(bias_dropout_add_layernorm, inputs, grad_out, p=0.2, seed=SEED)
    y_ref, grads_ref = run(reference, inputs, grad_out, p=0.2)
    assert y.shape == (3, 6, 40)
    assert_close_fp32(y, y_ref, name="y")
    for name, grad, grad_ref in zip(GRAD_NAMES, grads, grads_ref):
        assert_close_fp32(grad, grad_ref, name=name)


def test_mask_is_reproducible_from_the_seed_and_differs_between_seeds():
    inputs = [t.detach() for t in make_inputs((37, 200))]
    first = bias_dropout_add_layernorm(*inputs, p=0.1, seed=7)
    assert torch.equal(first, bias_dropout_add_layernorm(*inputs, p=0.1, seed=7))
    assert not torch.equal(first, bias_dropout_add_layernorm(*inputs, p=0.1, seed=8))

    def mask(shape, seed):
        return dropout_keep_mask(shape, 0.1, seed, DEVICE)

    assert torch.equal(mask((37, 200), 7), mask((37, 200), 7))
    assert not torch.equal(mask((37, 200), 7), mask((37, 200), 8))
    # the mask follows the flattened [N, d] element index, whatever the leading dims
    assert torch.equal(mask((2, 3, 50), 7).flatten(), mask((6, 50), 7).flatten())
    # a one-element int64 tensor is the same seed as the int (what the kernels read)
    seven = torch.tensor([7], device=DEVICE)
    assert torch.equal(first, bias_dropout_add_layernorm(*inputs, p=0.1, seed=seven))
    assert torch.equal(mask((37, 200), 7), mask((37, 200), seven))


def _correlation(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return ((a * b).sum() / (a.square().sum() * b.square().sum()).sqrt()).item()


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_mask_statistics(p):
    """Over 1 048 576 elements (one Philox call per 8 columns): the keep rate is within 3 sigma
    of 1 - p, and neighbours are uncorrelated: the next column (inside and across the 8-column
    groups of one call), the same column of the next group, and the next row (|r| < 0.01,
    about 10 standard errors of r under independence)."""
    rows, d = 1024, 1024
    keep = dropout_keep_mask((rows, d), p, SEED, DEVICE).cpu()
    n = keep.numel()
    sigma = (p * (1 - p) / n) ** 0.5
    rate = keep.float().mean().item()
    assert abs(rate - (1 - p)) <= 3 * sigma, (rate, 1 - p, sigma)
    neighbours = {
        "next column": (keep[:, :-1], keep[:, 1:]),
        "next column across a group": (keep[:, 7::8][:, :-1], keep[:, 8::8]),
        "same column, next group": (keep[:, :-8], keep[:, 8:]),
        "next row": (keep[:-1], keep[1:]),
    }
    for name, (a, b) in neighbours.items():
        r = _correlation(a, b)
        assert abs(r) < 0.01, f"{name}: lag-1 correlation {r:.4f}"
    # every column position inside a group drops at the rate p (no biased quarter-word)
    for e in range(8):
        column_rate = keep[:, e::8].float().mean().item()
        assert abs(column_rate - (1 - p)) <= 3 * (p * (1 - p) / (n / 8)) ** 0.5, (e, column_rate)


def test_mask_depends_on_row_and_column_only():
    """The mask of element (n, j) is a pure function of (seed, n, j): a wider row shares its
    first columns' bits, so the backward (and dropout_keep_mask) regenerate it from the seed."""
    narrow = dropout_keep_mask((40, 200), 0.3, SEED, DEVICE)
    wide = dropout_keep_mask((40, 1030), 0.3, SEED, DEVICE)
    assert torch.equal(narrow, wide[:, :200])
    assert torch.equal(dropout_keep_mask((3, 1), 0.3, SEED, DEVICE), wide[:3, :1])


def assert_backward_mask_is_forward_mask(fn, p=0.3):
    """``fn(*inputs, p=p)`` with a fresh seed: the backward's mask, read off ``dx`` (zero where
    dropped, ``dres / (1 - p)`` where kept), must reproduce the forward's output ``y``."""
    inputs = make_inputs((37, 200))
    y, (dx, _, dresidual, _, _) = run(fn, inputs, torch.randn(37, 200, device=DEVICE), p=p)
    keep = dx != 0
    assert abs(keep.float().mean().item() - (1 - p)) < 0.05
    assert_close_fp32(dx, torch.where(keep, dresidual / (1 - p), 0.0), name="dx")
    detached = [t.detach() for t in inputs]
    expected = bias_dropout_add_layernorm_torch(*detached, p=p, eps=1e-12, dropout_mask=keep)
    assert_close_fp32(y.detach(), expected, name="y")


def test_fresh_seed_comes_from_torch_generator_and_backward_reuses_it():
    """seed=None: a new mask per call, reproducible with torch.manual_seed; the backward
    regenerates the forward's mask (the drawn seed tensor is saved for backward)."""
    detached = [t.detach() for t in make_inputs((37, 200))]
    torch.manual_seed(5)
    first = bias_dropout_add_layernorm(*detached, p=0.3)
    second = bias_dropout_add_layernorm(*detached, p=0.3)
    torch.manual_seed(5)
    assert torch.equal(first, bias_dropout_add_layernorm(*detached, p=0.3))
    assert not torch.equal(first, second)
    assert_backward_mask_is_forward_mask(bias_dropout_add_layernorm)


def test_torch_compile_fullgraph_with_a_fresh_seed():
    """seed=None in a compiled region: no graph break, and forward and backward share the mask."""
    backend = "inductor" if torch.cuda.is_available() else "aot_eager"
    compiled = torch.compile(bias_dropout_add_layernorm, backend=backend, fullgraph=True)
    assert_backward_mask_is_forward_mask(compiled)


BAD_CASES = {  # name: (argument overrides, expected message)
    "x-int": (lambda a: dict(a, x=a["x"].long()), "x must be float32"),
    "residual-shape": (lambda a: dict(a, residual=a["residual"][:2]), "residual must have x's shape"),
    "residual-int": (lambda a: dict(a, residual=a["residual"].long()), "residual must be float32"),
    "bias-shape": (lambda a: dict(a, bias=a["bias"][:8]), "bias must have shape"),
    "ln_bias-none": (lambda a: dict(a, ln_bias=None), "ln_bias must be"),
    "p-one": (lambda a: dict(a, p=1.0), "p must be"),
    "p-negative": (lambda a: dict(a, p=-0.1), "p must be"),
    "seed-negative": (lambda a: dict(a, seed=-1), "seed must be"),
    "seed-float": (lambda a: dict(a, seed=1.5), "seed must be"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_raises_value_error(case):
    x, bias, residual, weight, ln_bias = (t.detach() for t in make_inputs((4, 16)))
    args = dict(x=x, bias=bias, residual=residual, weight=weight, ln_bias=ln_bias, p=0.1, seed=SEED)
    override, message = BAD_CASES[case]
    with pytest.raises(ValueError, match=message):
        bias_dropout_add_layernorm(**override(args))


GPU_CASES = [(16384, 768, 0.1), (2458, 768, 0.0), (1000, 1030, 0.1), (37, 8192, 0.1), (1, 31, 0.1)]


@pytest.mark.gpu
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("rows,d,p", GPU_CASES, ids=[f"rows{r}-d{d}-p{p}" for r, d, p in GPU_CASES])
def test_gpu_bf16_matches_reference(rows, d, p, has_bias):
    inputs = make_inputs((rows, d), dtype=torch.bfloat16, has_bias=has_bias, device="cuda")
    grad_out = torch.randn(rows, d, device="cuda").bfloat16()
    y, grads = run(bias_dropout_add_layernorm, inputs, grad_out, p=p, seed=SEED)
    inputs32 = [None if t is None else t.detach().float().requires_grad_() for t in inputs]
    y32, grads32 = run(reference, inputs32, grad_out.float(), p=p)
    y_lowp, grads_lowp = run(torch_lowp, inputs, grad_out, p=p)
    assert_close_lowp(y, y32, y_lowp, "y")
    for name, grad, grad32, grad_lowp in zip(GRAD_NAMES, grads, grads32, grads_lowp):
        if grad32 is not None:
            assert_close_lowp(grad, grad32, grad_lowp, name)
