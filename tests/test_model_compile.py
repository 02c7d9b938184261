"""The whole pre-training model compiles as ONE graph (``fullgraph=True``) on the Triton path,
in training mode: dropout seeds are device tensors (no ``.item()``), packed input needs no
unpad sync, and every kernel is a registered ``torch.library`` op with a fake implementation.
A graph break would cut the step into pieces (and rule out ``mode="reduce-overhead"``).
"""
import torch

from helpers import DEVICE
from model_fixtures import tiny_batch, tiny_config
from spanbert_fast import SpanBertForPreTraining
from spanbert_fast.data.collate import pack_batch
from spanbert_fast.train import move_batch


def test_pretraining_model_compiles_fullgraph_in_train_mode():
    torch.manual_seed(0)
    config = tiny_config(hidden_size=64, num_attention_heads=2, intermediate_size=128)  # head dim 32
    # validate_targets=False as `spanbert-fast pretrain`: no value checks (host syncs)
    model = SpanBertForPreTraining(config, backend="triton", validate_targets=False).to(DEVICE).train()
    batch = move_batch(pack_batch(tiny_batch()), DEVICE)
    backend = "inductor" if torch.cuda.is_available() else "aot_eager"
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    output = compiled(**batch)
    output.loss.backward()
    assert torch.isfinite(output.loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # Dropout is live inside the graph: two calls draw different masks, so different losses.
    assert not torch.equal(compiled(**batch).loss.detach(), compiled(**batch).loss.detach())
    # ...and without dropout the compiled model is the eager one.
    model.eval()
    torch.testing.assert_close(compiled(**batch).loss, model(**batch).loss, atol=1e-5, rtol=1e-5)
