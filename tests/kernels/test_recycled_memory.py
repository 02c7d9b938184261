"""Every kernel's forward + backward gives bit-identical results on recycled memory.

PyTorch's CUDA caching allocator hands a new tensor whatever the freed block held: in
training, last step's activations. A kernel (or a GEMM behind it) that reads memory it
has not written gives results that depend on that garbage. The kernels use no atomics,
so the same inputs must give the same bits whatever the memory held before:

* GPU (marked ``gpu``, bf16, training-like shapes): each op runs once to compile and
  autotune, once on a freshly emptied cache, once after the cache was filled with 0xFF
  bytes (NaN in fp32/bf16/fp16, -1 in every integer type); the last two must agree bit
  for bit. bf16 only: fp32 attention compiles take a minute each, and the dtype does not
  change which buffers a kernel reads.
* CPU (Triton interpreter, fp32/bf16/fp16, tiny shapes): the same ops with and without
  the allocation poison of tests/poison.py (every fresh ``torch.empty*`` tensor NaN).
  ``.ci/run`` also runs every kernel test file under that poison (``--poison-alloc``).
"""
import importlib

import pytest
import torch

from poison import poisoned_allocations
from spanbert_fast.kernels import attention as attn
from spanbert_fast.kernels import dropout_add_layernorm as dal
from spanbert_fast.kernels import gelu_layernorm as gln
from spanbert_fast.kernels import masked_lm_loss as mlm

SEED = 1234  # dropout seed: the same mask in every run
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _bias_gelu_module():
    try:
        return importlib.import_module("spanbert_fast.kernels.bias_gelu")
    except ModuleNotFoundError:
        return None


# --------------------------------------------------------------------------- the ops
# name -> (device, dtype) -> (fn, inputs): fn(*inputs) returns one tensor (the op's output);
# every input is a floating leaf whose gradient is compared. On CUDA the shapes are
# training-like; on CPU (Triton interpreter) tiny, with the same awkward edges.
def _attention_padded(device, dtype):
    big = device == "cuda"
    seq_len = 200 if big else 40
    q, k, v = (torch.randn(2, 4 if big else 2, seq_len, 64 if big else 32, device=device, dtype=dtype)
               for _ in range(3))
    seq_lens = torch.tensor([seq_len, 131 if big else 23], device=device)

    def fn(q, k, v):
        return attn.attention(q, k, v, seq_lens=seq_lens, dropout_p=0.1, seed=SEED)

    return fn, (q, k, v)


def _attention_varlen(device, dtype):
    big = device == "cuda"
    lengths = [0, 77, 0, 223, 129] if big else [0, 7, 0, 23, 13]
    cu_seqlens = torch.tensor(lengths, device=device).cumsum(0).to(torch.int32)
    q, k, v = (torch.randn(sum(lengths), 4 if big else 2, 64 if big else 32, device=device, dtype=dtype)
               for _ in range(3))

    def fn(q, k, v):
        return attn.attention_varlen(q, k, v, cu_seqlens, max(lengths), dropout_p=0.1, seed=SEED)

    return fn, (q, k, v)


def _norm_inputs(device, dtype, n_inputs):
    rows, d = (3001, 768) if device == "cuda" else (33, 80)
    rows = [torch.randn(rows, d, device=device, dtype=dtype) for _ in range(n_inputs)]
    bias = 0.1 * torch.randn(d, device=device, dtype=dtype)  # the sublayer's bias
    gamma = 1 + 0.1 * torch.randn(d, device=device, dtype=dtype)
    beta = 0.1 * torch.randn(d, device=device, dtype=dtype)
    return rows, bias, gamma, beta


def _gelu_layernorm(device, dtype):
    (x,), bias, gamma, beta = _norm_inputs(device, dtype, 1)
    return gln.bias_gelu_layernorm, (x, bias, gamma, beta)


def _dropout_add_layernorm(device, dtype):
    (x, residual), bias, gamma, beta = _norm_inputs(device, dtype, 2)

    def fn(x, bias, residual, gamma, beta):
        return dal.bias_dropout_add_layernorm(x, bias, residual, gamma, beta, p=0.1, seed=SEED)

    return fn, (x, bias, residual, gamma, beta)


def _masked_lm_loss(device, dtype):
    n_rows, d, vocab, n_selected = (4096, 768, 28996, 613) if device == "cuda" else (40, 32, 1000, 23)
    hidden = torch.randn(n_rows, d, device=device, dtype=dtype)
    weight = (torch.randn(vocab, d, device=device) * (3.0 / d**0.5)).to(dtype)
    bias = torch.randn(vocab, device=device, dtype=dtype)
    positions = torch.randperm(n_rows, device=device)[:n_selected]
    positions[-5:] = positions[:5]  # rows selected twice
    targets = torch.randint(0, vocab, (n_selected,), device=device)
    targets[::9] = -100

    def fn(hidden, weight, bias):
        loss, _ = mlm.masked_lm_loss(hidden, targets, weight, bias, positions)
        return loss

    return fn, (hidden, weight, bias)


def _bias_gelu(device, dtype):
    rows, d = (3001, 3072) if device == "cuda" else (33, 80)
    x = torch.randn(rows, d, device=device, dtype=dtype)
    bias = 0.1 * torch.randn(d, device=device, dtype=dtype)
    return _bias_gelu_module().bias_gelu, (x, bias)


OPS = {
    "attention-padded-dropout": _attention_padded,
    "attention-varlen-dropout": _attention_varlen,
    "gelu_layernorm": _gelu_layernorm,
    "dropout_add_layernorm-dropout": _dropout_add_layernorm,
    "masked_lm_loss": _masked_lm_loss,
}
if _bias_gelu_module() is not None:
    OPS["bias_gelu"] = _bias_gelu


# --------------------------------------------------------------------------- the runs
def forward_backward(fn, inputs, grad_out):
    """[output, grad of every input] on fresh leaf copies."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(grad_out)
    if out.is_cuda:
        torch.cuda.synchronize()
    return [out.detach()] + [leaf.grad for leaf in leaves]


def make_case(op, device, dtype):
    """(fn, inputs, grad_out) of ``op``, from a fixed seed."""
    torch.manual_seed(0)
    fn, inputs = OPS[op](device, dtype)
    grad_out = torch.randn(fn(*inputs).shape, device=device).to(dtype)
    return fn, inputs, grad_out


def assert_bit_identical(op, first, second, what):
    names = ["output"] + [f"grad of input {i}" for i in range(len(first) - 1)]
    for name, a, b in zip(names, first, second):
        assert torch.isfinite(a.float()).all(), f"{op}: {name} is not finite"
        assert torch.equal(a, b), (
            f"{op}: {name} differs {what} (max |diff| "
            f"{(a.float() - b.float()).abs().nan_to_num(float('inf')).max().item():.3e})"
        )


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("op", list(OPS), ids=list(OPS))
def test_backward_is_bit_identical_under_allocation_poison(op, dtype):
    fn, inputs, grad_out = make_case(op, "cpu", DTYPES[dtype])
    plain = forward_backward(fn, inputs, grad_out)
    with poisoned_allocations():
        poisoned = forward_backward(fn, inputs, grad_out)
    assert_bit_identical(op, plain, poisoned, "when fresh allocations are NaN")


def test_the_poison_catches_a_read_of_fresh_memory():
    """The check above can fail: an op that adds an unwritten buffer to its output."""

    def reads_fresh_memory(x):
        return x * 2 + torch.empty_like(x)

    x = torch.randn(7, 5)
    plain = forward_backward(reads_fresh_memory, (x,), torch.ones(7, 5))
    with poisoned_allocations():
        poisoned = forward_backward(reads_fresh_memory, (x,), torch.ones(7, 5))
    with pytest.raises(AssertionError):
        assert_bit_identical("reads_fresh_memory", plain, poisoned, "when fresh allocations are NaN")


def fill_allocator_cache_with_garbage() -> None:
    """Leave the caching allocator's free blocks full of 0xFF bytes, so the next allocations of
    every size recycle garbage. The sizes tile whole segments: 2 MiB small-pool segments
    (requests up to 1 MiB), 20 MiB segments (1-10 MiB requests), and two large blocks."""
    sizes = [64 * 2**10] * 128 + [5 * 2**20] * 16 + [600 * 2**20] * 2
    blocks = [torch.full((n,), 0xFF, dtype=torch.uint8, device="cuda") for n in sizes]
    torch.cuda.synchronize()
    del blocks


@pytest.mark.gpu
def test_garbage_reaches_fresh_allocations():
    """The set-up itself: after the fill, a fresh tensor of each size class is NaN (so the
    comparison below runs on recycled garbage, not on zeros)."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    fill_allocator_cache_with_garbage()
    for numel in (1000, 300_000, 2_000_000, 100_000_000):
        fresh = torch.empty(numel, dtype=torch.bfloat16, device="cuda")
        assert torch.isnan(fresh.float()).all(), f"a fresh {numel}-element tensor is not garbage"
        del fresh


@pytest.mark.gpu
@pytest.mark.parametrize("op", list(OPS), ids=list(OPS))
def test_backward_is_bit_identical_on_recycled_gpu_memory(op):
    fn, inputs, grad_out = make_case(op, "cuda", torch.bfloat16)
    forward_backward(fn, inputs, grad_out)  # compile and autotune first: tuning runs every config
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    clean = forward_backward(fn, inputs, grad_out)
    fill_allocator_cache_with_garbage()
    recycled = forward_backward(fn, inputs, grad_out)
    assert_bit_identical(op, clean, recycled, "on recycled memory")
