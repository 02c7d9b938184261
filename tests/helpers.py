"""Tolerance rules shared by every parity test (see DEVELOPERS guide, "Numerics").

* fp32 kernel vs fp32 reference: ``atol = rtol = 1e-5`` (1e-4 for reductions
  over long rows, e.g. a softmax over 512 keys or a LayerNorm over 8192 columns).
* bf16/fp16 kernel on GPU, the flash-attention rule: the kernel's error against
  an fp32 reference may be at most twice PyTorch's own low-precision error,
  plus 1e-3:  |kernel - ref32| <= 2 * |torch_lowp - ref32| + 1e-3.
"""
import torch

# Where kernel tests run: the GPU when there is one (compiled kernels), else the CPU
# (Triton interpreter, switched on by tests/conftest.py).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

FP32_TOL = 1e-5
FP32_REDUCTION_TOL = 1e-4


def assert_close_fp32(actual, expected, tol=FP32_TOL, name="output"):
    """fp32 parity: ``atol = rtol = tol``; ``name`` says which tensor failed."""
    torch.testing.assert_close(
        actual.float(), expected.float(), atol=tol, rtol=tol,
        msg=lambda m: f"{name}: {m}",
    )


def assert_close_lowp(actual, reference_fp32, torch_lowp, name="output", slack=1e-3):
    """The flash-attention rule for bf16/fp16 results (compare in fp32).

    ``actual``: our kernel's low-precision result; ``reference_fp32``: the pure-torch
    reference run in fp32; ``torch_lowp``: the same reference run in low precision.
    """
    actual, ref, lowp = actual.float(), reference_fp32.float(), torch_lowp.float()
    kernel_err = (actual - ref).abs()
    bound = 2 * (lowp - ref).abs().max() + slack
    worst = kernel_err.max().item()
    assert worst <= bound.item(), (
        f"{name}: max |kernel - fp32 ref| = {worst:.3e} exceeds "
        f"2 * max |torch low-precision - fp32 ref| + {slack} = {bound.item():.3e}"
    )


def assert_layernorm_grads_close(names, grads, grads_ref, tol, d):
    """Every gradient of a fused ...+LayerNorm op against the reference's (``None`` must match).

    With one column (``d == 1``) the normalised input is exactly 0, so dgamma is exactly 0;
    PyTorch's layer_norm backward returns rounding noise times ``1/sqrt(eps)`` there, so that
    one case is checked against the exact value instead.
    """
    for name, grad, grad_ref in zip(names, grads, grads_ref):
        if grad_ref is None:
            assert grad is None, name
        elif name == "dgamma" and d == 1:
            assert torch.equal(grad, torch.zeros_like(grad)), name
        else:
            assert_close_fp32(grad, grad_ref, tol, name)


def assert_compiled_matches_eager(block, inputs, grad_names):
    """``torch.compile(block, fullgraph=True)`` traces the custom op (no graph break) and gives
    the eager loss and input gradients; ``block(*inputs)`` returns a scalar loss."""
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    loss = compiled(*inputs)
    grads = torch.autograd.grad(loss, inputs)
    loss_ref = block(*inputs)
    grads_ref = torch.autograd.grad(loss_ref, inputs)
    assert_close_fp32(loss, loss_ref, FP32_REDUCTION_TOL, "loss")
    for name, grad, grad_ref in zip(grad_names, grads, grads_ref):
        assert_close_fp32(grad, grad_ref, name=name)


def output_and_grads(fn, inputs, grad_out):
    """``(y, [grad of each input, None where the input is None])`` of ``y = fn(*inputs)``."""
    y = fn(*inputs)
    present = [t for t in inputs if t is not None]
    grads = iter(torch.autograd.grad(y, present, grad_out))
    return y, [None if t is None else next(grads) for t in inputs]


def assert_lowp_rule(op, reference, torch_lowp, inputs, grad_out, grad_names):
    """``op`` on bf16/fp16 ``inputs``: its output and every grad within the low-precision rule
    (:func:`assert_close_lowp`) against ``reference`` on fp32 copies, with ``torch_lowp`` (PyTorch
    in the inputs' dtype) setting the allowed error; the output in the first input's dtype and
    each grad in its input's dtype. ``None`` inputs (an absent bias) stay ``None``, with no grad."""
    y, grads = output_and_grads(op, inputs, grad_out)
    inputs32 = [None if t is None else t.detach().float().requires_grad_() for t in inputs]
    y32, grads32 = output_and_grads(reference, inputs32, grad_out.float())
    y_lowp, grads_lowp = output_and_grads(torch_lowp, inputs, grad_out)
    assert y.dtype == inputs[0].dtype
    assert_close_lowp(y, y32, y_lowp, "y")
    for name, grad, grad32, grad_lowp, leaf in zip(grad_names, grads, grads32, grads_lowp, inputs):
        if leaf is None:
            continue
        assert grad.dtype == leaf.dtype, name
        assert_close_lowp(grad, grad32, grad_lowp, name)
