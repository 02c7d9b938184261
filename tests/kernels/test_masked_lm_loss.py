"""Parity of the fused masked-position loss with ``ops.masked_lm_loss_torch``.

Every case checks the loss, ``n_correct`` and the gradients of hidden, weight and bias.
On CPU the kernels run under the Triton interpreter (tests/conftest.py), whose cost
is FLOPs plus (programs x loop iterations), so the shape grid is a spread-out subset:
the full vocabulary (V = 28996) appears with a thin d or few rows, d = 768 with a
smaller vocabulary. Tolerances: tests/helpers.py (1e-5; 1e-4 when a row reduces over
V = 28996 columns or d = 768 products).
"""
import pytest
import torch
import torch.nn.functional as F

from spanbert_fast import ops
from spanbert_fast.kernels import masked_lm_loss as mlm
from helpers import DEVICE, FP32_REDUCTION_TOL, FP32_TOL, assert_close_fp32, assert_close_lowp
from poison import poisoned_allocations

IGNORE = -100


def make_inputs(n_rows, d, vocab, n_selected, *, positions=True, duplicates=False, ignore_every=0,
                bias=True, dtype=torch.float32, device=DEVICE, ignore_index=IGNORE):
    """Random loss inputs; about half the valid targets are the argmax, so n_correct is informative."""
    hidden = torch.randn(n_rows, d, device=device)
    weight = torch.randn(vocab, d, device=device) * (3.0 / d**0.5)  # logits with std ~ 3
    bias_t = torch.randn(vocab, device=device) if bias else None
    if positions:
        pos = torch.randperm(n_rows, device=device)[:n_selected]
        if duplicates and n_selected >= 4:
            pos[n_selected // 2:] = pos[: n_selected - n_selected // 2]  # every row picked twice
        pos = pos[torch.randperm(n_selected, device=device)]
    else:
        pos = None
    rows = hidden if pos is None else hidden[pos]
    logits = rows @ weight.T + (0 if bias_t is None else bias_t)
    targets = torch.randint(0, vocab, (rows.shape[0],), device=device)
    take_argmax = torch.rand(rows.shape[0], device=device) < 0.5
    targets = torch.where(take_argmax, logits.argmax(dim=-1), targets)
    if ignore_every:
        targets[::ignore_every] = ignore_index
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return cast(hidden), targets, cast(weight), cast(bias_t), pos


def loss_and_grads(fn, hidden, targets, weight, bias, positions, ignore_index=IGNORE, **kwargs):
    """(loss, n_correct, d hidden, d weight, d bias) of ``fn`` on fresh leaf copies."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (hidden, weight, bias)]
    hidden, weight, bias = leaves
    loss, n_correct = fn(hidden, targets, weight, bias, positions, ignore_index, **kwargs)
    loss.backward()
    return loss.detach(), n_correct, hidden.grad, weight.grad, None if bias is None else bias.grad


def assert_parity(ours, ref, tol):
    loss, n_correct, d_hidden, d_weight, d_bias = ours
    r_loss, r_correct, r_hidden, r_weight, r_bias = ref
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert n_correct.dtype == torch.int64 and n_correct.dim() == 0
    assert torch.isfinite(loss)
    assert_close_fp32(loss, r_loss, tol, name="loss")
    assert n_correct.item() == r_correct.item(), f"n_correct {n_correct.item()} != reference {r_correct.item()}"
    assert_close_fp32(d_hidden, r_hidden, tol, name="d hidden")
    assert_close_fp32(d_weight, r_weight, tol, name="d weight")
    if r_bias is None:
        assert d_bias is None
    else:
        assert_close_fp32(d_bias, r_bias, tol, name="d bias")


# (N rows of hidden, d, V, M selected, options); M = None means positions=None (all rows)
CASES = {
    "V17-d16-M5-ignore": (12, 16, 17, 5, dict(ignore_every=3)),
    "V1-d16-M5": (9, 16, 1, 5, {}),
    "V17-d64-M1-nobias": (4, 64, 17, 1, dict(bias=False)),
    "V1000-d64-M300-dup-ignore": (400, 64, 1000, 300, dict(duplicates=True, ignore_every=4)),
    "V1000-d64-Mall-nopos-nobias": (70, 64, 1000, None, dict(bias=False, ignore_every=5)),
    "V1000-d768-M300-ignore": (350, 768, 1000, 300, dict(ignore_every=7)),
    "V28996-d16-M300-dup-ignore": (320, 16, 28996, 300, dict(duplicates=True, ignore_every=9)),
    "V28996-d768-M5": (40, 768, 28996, 5, {}),
    "V28996-d64-M1-nopos": (1, 64, 28996, None, {}),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_matches_reference(case):
    n_rows, d, vocab, n_selected, options = CASES[case]
    inputs = make_inputs(n_rows, d, vocab, n_selected or n_rows, positions=n_selected is not None, **options)
    tol = FP32_REDUCTION_TOL if (vocab > 1000 or d >= 768) else FP32_TOL
    ours = loss_and_grads(mlm.masked_lm_loss, *inputs)
    ref = loss_and_grads(ops.masked_lm_loss_torch, *inputs)
    assert_parity(ours, ref, tol)


def test_backward_in_several_vocabulary_chunks(monkeypatch):
    """A small chunk budget forces 4 backward chunks over V = 1000 (the last one partial)."""
    monkeypatch.setattr(mlm, "DLOGITS_CHUNK_BYTES", 300 * 256 * 4)  # 256 columns of fp32 for M = 300
    assert mlm._dlogits_chunk_cols(300, 1000, 4) == 256
    inputs = make_inputs(330, 64, 1000, 300, duplicates=True, ignore_every=6)
    assert_parity(
        loss_and_grads(mlm.masked_lm_loss, *inputs), loss_and_grads(ops.masked_lm_loss_torch, *inputs), FP32_TOL
    )


def mm_reading_the_k_tail(original_mm):
    """``torch.mm`` as oneDNN's AMX bf16 brgemm computes it (uxlfoundation/oneDNN#5717): for a
    row-major ``a`` whose rows are padded (``a.stride(0) > K``) it reads the K-tail up to a
    multiple of 32, past the view's columns, and multiplies those by B's zero padding."""

    def mm(a, b, *, out=None):
        k = a.shape[1]
        k_read = min(-(-k // 32) * 32, a.stride(0)) if a.dim() == 2 and a.stride(1) == 1 else k
        if k_read > k:
            a = a.as_strided((a.shape[0], k_read), a.stride())
            b = torch.cat([b, b.new_zeros(k_read - k, b.shape[1])])
        return original_mm(a, b) if out is None else original_mm(a, b, out=out)

    return mm


@pytest.mark.parametrize("chunks", ["one-chunk", "chunks-of-256"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_backward_independent_of_a_gemm_reading_row_padding(monkeypatch, dtype, chunks):
    """Issue 20: the dlogits block's rows are padded (1000 columns in rows of 1024), and a
    GEMM that reads past the view's columns (oneDNN's AMX bf16 kernel does) must find zeros
    there, not what an earlier allocation left (here NaN, from the poison)."""
    if chunks == "chunks-of-256":  # four chunks, the last one partial (232 columns)
        monkeypatch.setattr(mlm, "DLOGITS_CHUNK_BYTES", 300 * 256 * torch.tensor([], dtype=dtype).element_size())
    inputs = make_inputs(330, 64, 1000, 300, duplicates=True, ignore_every=6)
    inputs = [t.to(dtype) if t is not None and t.is_floating_point() else t for t in inputs]
    plain = loss_and_grads(mlm.masked_lm_loss, *inputs)
    monkeypatch.setattr(torch, "mm", mm_reading_the_k_tail(torch.mm))
    with poisoned_allocations():
        tail_reading = loss_and_grads(mlm.masked_lm_loss, *inputs)
    tol = FP32_TOL if dtype == torch.float32 else 1e-2
    for name, a, b in zip(("loss", "n_correct", "d hidden", "d weight", "d bias"), tail_reading, plain):
        assert torch.isfinite(a.float()).all(), f"{name} is not finite"
        assert_close_fp32(a, b, tol, name=name)


@pytest.mark.parametrize("ignore_index", [IGNORE, 3], ids=["ignore-100", "ignore3"])
def test_custom_ignore_index(ignore_index):
    """Any ignore_index works, also one inside [0, V): rows with that target are skipped."""
    inputs = make_inputs(60, 16, 17, 40, ignore_every=5, ignore_index=ignore_index)
    ours = loss_and_grads(mlm.masked_lm_loss, *inputs, ignore_index=ignore_index)
    ref = loss_and_grads(ops.masked_lm_loss_torch, *inputs, ignore_index=ignore_index)
    assert_parity(ours, ref, FP32_TOL)


@pytest.mark.parametrize("kind", ["M0", "all-ignored"])
def test_no_valid_target_gives_zero_loss_and_zero_grads(kind):
    n_selected = 0 if kind == "M0" else 25
    hidden, targets, weight, bias, positions = make_inputs(30, 16, 1000, n_selected)
    targets.fill_(IGNORE)
    loss, n_correct, d_hidden, d_weight, d_bias = loss_and_grads(
        mlm.masked_lm_loss, hidden, targets, weight, bias, positions
    )
    assert loss.item() == 0.0 and n_correct.item() == 0
    for name, grad in (("hidden", d_hidden), ("weight", d_weight), ("bias", d_bias)):
        assert torch.count_nonzero(grad) == 0, f"d {name} is not zero"
        assert torch.isfinite(grad).all(), f"d {name} is not finite"


def test_unselected_rows_get_zero_grad_and_duplicates_accumulate():
    hidden, targets, weight, bias, _ = make_inputs(8, 16, 17, 3, positions=False)
    positions = torch.tensor([2, 5, 2], device=DEVICE)
    targets = torch.tensor([4, 9, 11], device=DEVICE)
    _, _, d_hidden, _, _ = loss_and_grads(mlm.masked_lm_loss, hidden, targets, weight, bias, positions)
    assert torch.count_nonzero(d_hidden[[0, 1, 3, 4, 6, 7]]) == 0
    # row 2 is selected twice: its grad is the sum of the two single-selection grads
    alone = [
        loss_and_grads(mlm.masked_lm_loss, hidden, targets[[i]], weight, bias, positions[[i]])[2][2] / 3
        for i in (0, 2)
    ]
    assert_close_fp32(d_hidden[2], alone[0] + alone[1], name="d hidden of the twice-selected row")


def test_forward_merges_vocabulary_splits(monkeypatch):
    """On a GPU the forward cuts V into splits merged in PyTorch; force 4 splits of 256 columns."""
    monkeypatch.setattr(mlm, "_vocab_splits", lambda M, V, device: 256)
    inputs = make_inputs(330, 64, 1000, 300, duplicates=True, ignore_every=6)
    assert_parity(
        loss_and_grads(mlm.masked_lm_loss, *inputs), loss_and_grads(ops.masked_lm_loss_torch, *inputs), FP32_TOL
    )


@pytest.mark.parametrize("split_cols", [None, 512], ids=["one-split", "splits-of-512"])
def test_argmax_ties_take_the_first_index(monkeypatch, split_cols):
    """Vocabulary rows 5, 700 and 1500 are equal (different V-blocks, and with splits of 512
    columns different splits): the lowest index is the prediction."""
    if split_cols is not None:
        monkeypatch.setattr(mlm, "_vocab_splits", lambda M, V, device: split_cols)
    hidden, _, weight, bias, positions = make_inputs(6, 16, 2000, 4, bias=False)
    weight[5] = hidden[positions[0]] * 10
    weight[1500] = weight[5]
    weight[700] = weight[5]
    rows = hidden[positions]
    assert (rows[0] @ weight.T).argmax().item() == 5
    # row 0's argmax is tied at 5, 700, 1500: only target 5 counts as correct
    for target, expected in ((5, 1), (700, 0), (1500, 0)):
        targets = torch.tensor([target, IGNORE, IGNORE, IGNORE], device=DEVICE)
        _, n_correct = mlm.masked_lm_loss(hidden, targets, weight, bias, positions)
        assert n_correct.item() == expected, f"target {target}: n_correct {n_correct.item()}"
        assert ops.masked_lm_loss_torch(hidden, targets, weight, bias, positions)[1].item() == expected


def test_ops_triton_backend_dispatches_here():
    inputs = make_inputs(20, 16, 17, 10, ignore_every=3)
    ours = loss_and_grads(lambda *a: ops.masked_lm_loss(*a, backend="triton"), *inputs)
    ref = loss_and_grads(ops.masked_lm_loss_torch, *inputs)
    assert_parity(ours, ref, FP32_TOL)


def test_opcheck():
    hidden, targets, weight, bias, positions = make_inputs(20, 16, 40, 12, duplicates=True, ignore_every=4)
    leaves = [t.requires_grad_() for t in (hidden, weight, bias)]
    torch.library.opcheck(
        mlm._masked_lm_loss_fwd_op, (leaves[0], targets, leaves[1], leaves[2], positions, IGNORE, True)
    )
    torch.library.opcheck(
        mlm._masked_lm_loss_fwd_op, (leaves[0][:12], targets, leaves[1], None, None, IGNORE, False)
    )
    _, _, lse = mlm.masked_lm_loss_forward(hidden, targets, weight, bias, positions, IGNORE)
    torch.library.opcheck(
        mlm._masked_lm_loss_bwd_op,
        (torch.tensor(1.0, device=DEVICE), hidden.detach(), targets, weight.detach(), bias.detach(), positions, lse,
         IGNORE),
    )


def test_torch_compile_traces_through_the_op():
    inputs = make_inputs(30, 16, 100, 20, ignore_every=4)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def step(hidden, targets, weight, bias, positions, ignore_index):
        loss, n_correct = mlm.masked_lm_loss(hidden, targets, weight, bias, positions, ignore_index)
        return loss * 2.0, n_correct

    compiled = loss_and_grads(step, *inputs)
    eager = loss_and_grads(lambda *a: (lambda l, c: (l * 2.0, c))(*mlm.masked_lm_loss(*a)), *inputs)
    assert_parity(compiled, eager, FP32_TOL)


BAD_INPUTS = {
    "position-out-of-range": (lambda h, t, w, b, p: (h, t, w, b, torch.where(p == p[0], 30, p)), "positions"),
    "position-negative": (lambda h, t, w, b, p: (h, t, w, b, torch.where(p == p[0], -1, p)), "positions"),
    "target-too-large": (lambda h, t, w, b, p: (h, torch.where(t == t[1], 17, t), w, b, p), "targets"),
    "target-negative": (lambda h, t, w, b, p: (h, torch.where(t == t[1], -5, t), w, b, p), "targets"),
    "targets-wrong-length": (lambda h, t, w, b, p: (h, t[:-1], w, b, p), "targets"),
    "weight-wrong-d": (lambda h, t, w, b, p: (h, t, w[:, :8], b, p), "weight"),
    "weight-dtype": (lambda h, t, w, b, p: (h, t, w.double(), b, p), "weight"),
    "weight-bf16-rows-fp32": (lambda h, t, w, b, p: (h, t, w.bfloat16(), b, p), "weight"),
    "bias-wrong-length": (lambda h, t, w, b, p: (h, t, w, b[:-1], p), "bias"),
    "bias-dtype": (lambda h, t, w, b, p: (h, t, w, b.half(), p), "bias"),
    "hidden-3d": (lambda h, t, w, b, p: (h[None], t, w, b, p), "hidden"),
    "hidden-int": (lambda h, t, w, b, p: (h.long(), t, w, b, p), "hidden"),
    "positions-int32": (lambda h, t, w, b, p: (h, t, w, b, p.int()), "positions"),
    "targets-int32": (lambda h, t, w, b, p: (h, t.int(), w, b, p), "targets"),
    "weight-transposed-view": (lambda h, t, w, b, p: (h, t, w.T.contiguous().T, b, p), "weight"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_value_error_naming_the_argument(case):
    hidden, targets, weight, bias, positions = make_inputs(30, 16, 17, 6)
    targets = torch.arange(6, device=DEVICE) % 17
    corrupt, name = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=name):
        mlm.masked_lm_loss(*corrupt(hidden, targets, weight, bias, positions))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_small_shapes_within_twice_torch_error(dtype):
    """The bf16/fp16 path (16-bit dlogits chunks, fp32 dX accumulation) by the 2x rule, small shapes."""
    inputs = make_inputs(350, 64, 1000, 300, duplicates=True, ignore_every=8)
    check_low_precision(inputs, dtype)


def test_fp32_master_weights_with_bf16_rows_match_a_bf16_decoder():
    """Autocast hands bf16 rows and the fp32 decoder: same result as casting the decoder,
    with fp32 gradients for the fp32 weight and bias."""
    hidden, targets, weight, bias, positions = make_inputs(40, 16, 100, 30, ignore_every=4)
    hidden = hidden.to(torch.bfloat16)
    mixed = loss_and_grads(mlm.masked_lm_loss, hidden, targets, weight, bias, positions)
    lowp = loss_and_grads(mlm.masked_lm_loss, hidden, targets, weight.bfloat16(), bias.bfloat16(), positions)
    assert mixed[3].dtype == torch.float32 and mixed[4].dtype == torch.float32
    for name, a, b in zip(("loss", "n_correct", "d hidden", "d weight", "d bias"), mixed, lowp):
        assert torch.equal(a, b.to(a.dtype)), name


def test_deterministic():
    inputs = make_inputs(200, 64, 1000, 150, duplicates=True, ignore_every=5)
    first = loss_and_grads(mlm.masked_lm_loss, *inputs)
    second = loss_and_grads(mlm.masked_lm_loss, *inputs)
    for a, b in zip(first, second):
        assert torch.equal(a, b), "two runs on the same inputs differ"


# --------------------------------------------------------------------------- GPU (bf16)
def torch_lowp_loss(hidden, targets, weight, bias, positions, ignore_index=IGNORE):
    """What a user would write in bf16: gather, bf16 logits, F.cross_entropy."""
    rows = hidden if positions is None else hidden[positions]
    logits = F.linear(rows, weight, bias)
    valid = targets != ignore_index
    loss = F.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction="sum")
    loss = loss / valid.sum().clamp(min=1)
    return loss, ((logits.argmax(-1) == targets) & valid).sum()


def check_low_precision(inputs, dtype):
    """Ours in ``dtype`` vs the fp32 reference, bounded by twice torch's own ``dtype`` error.

    The reference takes the fp32 inputs; ours and torch's low-precision loss take the same
    inputs rounded to ``dtype``. Rounding can swap near-equal top logits, so n_correct may
    move as much as twice torch's own low-precision count moves, plus 1 % of the rows.
    """
    ref = loss_and_grads(ops.masked_lm_loss_torch, *inputs)
    lowp_inputs = [t.to(dtype) if t is not None and t.is_floating_point() else t for t in inputs]
    ours = loss_and_grads(mlm.masked_lm_loss, *lowp_inputs)
    torch_lowp = loss_and_grads(torch_lowp_loss, *lowp_inputs)
    for name, i in (("loss", 0), ("d hidden", 2), ("d weight", 3), ("d bias", 4)):
        assert ours[i].dtype == (torch.float32 if i == 0 else dtype), name
        assert torch.isfinite(ours[i]).all(), name
        # slack relative to the tensor's scale: the default 1e-3 is 10 % of a gradient here
        assert_close_lowp(ours[i], ref[i], torch_lowp[i], name=name, slack=1e-3 * ref[i].abs().max().item())
    n_rows = inputs[1].numel()
    flips, torch_flips = abs(ours[1].item() - ref[1].item()), abs(torch_lowp[1].item() - ref[1].item())
    assert flips <= 2 * torch_flips + 0.01 * n_rows, f"n_correct {ours[1].item()} vs fp32 {ref[1].item()}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("d", [768, 1024], ids=["d768", "d1024"])
def test_gpu_lowp_within_twice_torch_error(dtype, d):
    inputs = make_inputs(16384, d, 28996, 2458, duplicates=True, ignore_every=50, device="cuda")
    check_low_precision(inputs, dtype)


@pytest.mark.gpu
def test_gpu_fp32_and_deterministic():
    inputs = make_inputs(16384, 768, 28996, 2458, duplicates=True, ignore_every=50, device="cuda")
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ours = loss_and_grads(mlm.masked_lm_loss, *inputs)
        again = loss_and_grads(mlm.masked_lm_loss, *inputs)
        ref = loss_and_grads(ops.masked_lm_loss_torch, *inputs)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    assert_parity(ours, ref, FP32_REDUCTION_TOL)
    for a, b in zip(ours, again):
        assert torch.equal(a, b), "two runs on the same inputs differ"
