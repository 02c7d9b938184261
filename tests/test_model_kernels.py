"""The whole model on the Triton kernels (interpreter on CPU) equals the torch-reference model."""
import pytest
import torch

from helpers import DEVICE
from spanbert_fast.data.collate import pack_batch
from model_fixtures import tiny_batch, tiny_config
from spanbert_fast import SpanBertForPreTraining
from test_model import reference_sbo_rows

pytest.importorskip("triton")


def device_batch():
    return {k: v.to(DEVICE) for k, v in tiny_batch().items()}


def kernel_ready_config():
    return tiny_config(hidden_size=64, num_attention_heads=2, intermediate_size=128)  # head dim 32


def test_pretraining_loss_and_every_grad_match_torch_backend():
    model = SpanBertForPreTraining(kernel_ready_config()).to(DEVICE).eval()
    batch = device_batch()
    reference = model.set_backend("torch")(**batch)
    reference.loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    fused = model.set_backend("triton")(**batch)
    fused.loss.backward()
    assert torch.equal(fused.head_rows, reference.head_rows)  # the last layer ends at the heads' rows
    torch.testing.assert_close(fused.last_hidden_state, reference.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.mlm_loss, reference.mlm_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.sbo_loss, reference.sbo_loss, atol=1e-5, rtol=1e-5)
    assert fused.mlm_correct == reference.mlm_correct and fused.sbo_correct == reference.sbo_correct
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_sbo_head_on_fused_ops_equals_reference_head():
    model = SpanBertForPreTraining(kernel_ready_config()).to(DEVICE).set_backend("triton")
    for p in model.cls.pair_target_predictions.parameters():
        torch.nn.init.normal_(p, std=0.1)
    head = model.cls.pair_target_predictions
    hidden = torch.randn(40, 64, device=DEVICE)
    left, right = torch.tensor([0, 3, 7, 20], device=DEVICE), torch.tensor([5, 9, 19, 39], device=DEVICE)
    rel = torch.tensor([0, 14, 6, 1], device=DEVICE)
    torch.testing.assert_close(
        head.transform(hidden[left], hidden[right], rel),
        reference_sbo_rows(head, hidden, left, right, rel), atol=1e-5, rtol=1e-5,
    )


def test_packed_batch_on_kernels_matches_padded_batch_on_torch():
    # validate_targets=False: the sync-free path pretrain uses
    model = SpanBertForPreTraining(kernel_ready_config(), validate_targets=False).to(DEVICE).eval()
    batch = device_batch()
    reference = model.set_backend("torch")(**batch)
    packed_batch = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in pack_batch(tiny_batch()).items()}
    packed = model.set_backend("triton")(**packed_batch)
    torch.testing.assert_close(packed.loss, reference.loss, atol=1e-5, rtol=1e-5)
