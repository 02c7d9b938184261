"""The ops layer: backend switch and the pure-torch references every kernel is tested against."""
import math

import pytest
import torch
import torch.nn.functional as F

from spanbert_fast import ops


def naive_attention(q, k, v, allowed):
    """Softmax attention written out; ``allowed`` [B, 1|H, S, S] bool."""
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)
    return probs @ v


def test_resolve_backend():
    x = torch.zeros(1)
    assert ops.resolve_backend("auto", x) == "torch"  # CPU tensor
    assert ops.resolve_backend("torch", x) == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.resolve_backend("cuda", x)


@pytest.mark.parametrize("window", [None, 2], ids=["full", "window2"])
def test_attention_reference_padding_and_window(window):
    q, k, v = (torch.randn(2, 3, 9, 16) for _ in range(3))
    mask = torch.arange(9)[None] < torch.tensor([[9], [4]])
    out = ops.attention(q, k, v, mask, window=window, backend="torch")
    allowed = mask[:, None, None, :] & ops.window_mask(9, window, q.device) if window else mask[:, None, None, :]
    expected = naive_attention(q, k, v, allowed.expand(2, 1, 9, 9)) * mask[:, None, :, None]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert out[1, :, 4:].abs().max() == 0  # padded query rows are zero


def test_varlen_reference_equals_padded_with_any_mask_pattern():
    q, k, v = (torch.randn(2, 2, 6, 8) for _ in range(3))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)  # left and right padding
    padded = ops.attention_torch(q, k, v, mask)
    packed, rows, cu_seqlens, max_seqlen = ops.unpad(q.transpose(1, 2), mask)
    k_packed, v_packed = (t.transpose(1, 2).flatten(0, 1)[rows] for t in (k, v))
    out = ops.attention_varlen(packed, k_packed, v_packed, cu_seqlens, max_seqlen, backend="torch")
    assert cu_seqlens.tolist() == [0, 4, 7] and max_seqlen == 4
    # the varlen reference treats each sequence's tokens as contiguous: compare per row
    for b, (start, end) in enumerate([(2, 6), (0, 3)]):
        dense = ops.attention_torch(q[b:b + 1, :, start:end], k[b:b + 1, :, start:end], v[b:b + 1, :, start:end])
        got = out[cu_seqlens[b]:cu_seqlens[b + 1]].transpose(0, 1)[None]
        torch.testing.assert_close(got, dense, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(padded[b:b + 1, :, start:end], dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ops.repad(packed, rows, 2, 6), q.transpose(1, 2) * mask[..., None, None])


def test_attention_dropout_reproducible_from_seed():
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    a = ops.attention(q, k, v, dropout_p=0.3, seed=7, backend="torch")
    b = ops.attention(q, k, v, dropout_p=0.3, seed=7, backend="torch")
    c = ops.attention(q, k, v, dropout_p=0.3, seed=8, backend="torch")
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_bias_gelu_layernorm_reference():
    x, bias = torch.randn(5, 12), torch.randn(12)
    w, b = torch.randn(12), torch.randn(12)
    expected = F.layer_norm(F.gelu(x + bias), (12,), w, b, 1e-12)
    torch.testing.assert_close(ops.bias_gelu_layernorm(x, bias, w, b, backend="torch"), expected)


def test_bias_dropout_add_layernorm_reference():
    x, res, bias, w, b = torch.randn(5, 12), torch.randn(5, 12), torch.randn(12), torch.randn(12), torch.randn(12)
    expected = F.layer_norm(x + bias + res, (12,), w, b, 1e-12)
    torch.testing.assert_close(ops.bias_dropout_add_layernorm(x, bias, res, w, b, backend="torch"), expected)
    dropped = ops.bias_dropout_add_layernorm(x, bias, res, w, b, p=0.5, seed=3, backend="torch")
    torch.testing.assert_close(dropped, ops.bias_dropout_add_layernorm(x, bias, res, w, b, p=0.5, seed=3, backend="torch"))
    assert not torch.allclose(dropped, expected)


def test_masked_lm_loss_reference_and_empty_selection():
    hidden = torch.randn(7, 16, requires_grad=True)
    weight, bias = torch.randn(11, 16), torch.randn(11)
    positions, targets = torch.tensor([0, 2, 4]), torch.tensor([1, -100, 3])
    loss, correct = ops.masked_lm_loss(hidden, targets, weight, bias, positions, backend="torch")
    logits = hidden[[0, 4]] @ weight.T + bias
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.tensor([1, 3])))
    assert correct.item() == int((logits.argmax(-1) == torch.tensor([1, 3])).sum())
    empty, n = ops.masked_lm_loss(hidden, targets[:0], weight, bias, positions[:0], backend="torch")
    empty.backward()
    assert empty.item() == 0.0 and n.item() == 0 and hidden.grad.abs().sum() == 0


def test_masked_lm_loss_shape_errors():
    with pytest.raises(ValueError, match="weight must be"):
        ops.masked_lm_loss(torch.randn(3, 4), torch.zeros(3, dtype=torch.long), torch.randn(5, 6), None, backend="torch")
    with pytest.raises(ValueError, match="targets must be"):
        ops.masked_lm_loss(torch.randn(3, 4), torch.zeros(2, dtype=torch.long), torch.randn(5, 4), None, backend="torch")


def test_auto_keeps_head_dims_the_kernel_lacks_on_torch(monkeypatch):
    from spanbert_fast import backend

    monkeypatch.setattr(backend, "resolve_backend", lambda backend, tensor: "triton")  # as on a GPU
    x = torch.zeros(1)
    assert ops.resolve_attention_backend("auto", x, 64) == "triton"
    assert ops.resolve_attention_backend("auto", x, 96) == "torch"  # no D=96 kernel: reference
    assert ops.resolve_attention_backend("triton", x, 96) == "triton"  # explicit: the kernel says why not
