"""The SpanBERT model: shapes, the loss against a hand-written reference, gradients, errors."""
import pytest
import torch
import torch.nn.functional as F

from model_fixtures import tiny_batch, tiny_config
from spanbert_fast import SpanBertConfig, SpanBertForPreTraining, SpanBertModel


def reference_sbo_rows(head, hidden_flat, left, right, rel_pos):
    """The SBO MLP exactly as the reference code writes it: one concat per target."""
    mlp = head.mlp_layer_norm
    x = torch.cat([hidden_flat[left], hidden_flat[right], head.position_embeddings(rel_pos)], dim=-1)
    h = mlp.layer_norm1(F.gelu(mlp.linear1(x)))
    return mlp.layer_norm2(F.gelu(mlp.linear2(h)))


def reference_loss(model, batch):
    """MLM + SBO loss written out with full logits and F.cross_entropy."""
    hidden = model.bert(batch["input_ids"], batch["attention_mask"]).last_hidden_state.flatten(0, 1)
    emb = model.bert.embeddings.word_embeddings.weight
    mlm = model.cls.predictions
    mlm_rows = mlm.transform.LayerNorm(F.gelu(mlm.transform.dense(hidden[batch["mlm_positions"]])))
    mlm_loss = F.cross_entropy(mlm_rows @ emb.T + mlm.bias, batch["mlm_labels"])
    sbo = model.cls.pair_target_predictions
    sbo_rows = reference_sbo_rows(sbo, hidden, batch["sbo_left"], batch["sbo_right"], batch["sbo_rel_pos"])
    sbo_loss = F.cross_entropy(sbo_rows @ emb.T + sbo.bias, batch["sbo_labels"])
    return mlm_loss, sbo_loss


def test_encoder_shapes_and_hidden_states():
    config = tiny_config()
    model = SpanBertModel(config).eval()
    batch = tiny_batch()
    out = model(batch["input_ids"], batch["attention_mask"], output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 10, config.hidden_size)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)


def test_padding_does_not_change_real_tokens():
    """A row's real tokens get the same states whether or not extra padding follows."""
    model = SpanBertModel(tiny_config()).eval()
    batch = tiny_batch()
    short = model(batch["input_ids"][1:, :7]).last_hidden_state
    padded = model(batch["input_ids"][1:], batch["attention_mask"][1:]).last_hidden_state
    torch.testing.assert_close(padded[:, :7], short, atol=1e-5, rtol=1e-5)


def test_loss_matches_hand_written_reference():
    model = SpanBertForPreTraining(tiny_config()).eval()
    batch = tiny_batch()
    out = model(**batch)
    mlm_loss, sbo_loss = reference_loss(model, batch)
    torch.testing.assert_close(out.mlm_loss, mlm_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.sbo_loss, sbo_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, mlm_loss + sbo_loss, atol=1e-5, rtol=1e-5)
    assert out.mlm_count.item() == 4 and out.sbo_count.item() == 4
    assert 0 <= out.mlm_correct.item() <= 4


def test_sbo_loss_weight_scales_the_sbo_term():
    model = SpanBertForPreTraining(tiny_config(sbo_loss_weight=0.5)).eval()
    out = model(**tiny_batch())
    torch.testing.assert_close(out.loss, out.mlm_loss + 0.5 * out.sbo_loss)


def test_split_sbo_first_layer_equals_concatenated_reference():
    model = SpanBertForPreTraining(tiny_config()).eval()
    for p in model.parameters():  # non-trivial biases and norms
        torch.nn.init.normal_(p, std=0.1)
    hidden = torch.randn(20, 32)
    left, right, rel = torch.tensor([0, 3, 7]), torch.tensor([5, 9, 19]), torch.tensor([0, 14, 6])
    head = model.cls.pair_target_predictions
    torch.testing.assert_close(
        head.transform(hidden[left], hidden[right], rel),
        reference_sbo_rows(head, hidden, left, right, rel), atol=1e-5, rtol=1e-5,
    )


def test_gradients_reach_every_parameter():
    model = SpanBertForPreTraining(tiny_config()).train()
    batch = tiny_batch()
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    batch["token_type_ids"][0, 1] = 1  # so both token-type rows are used
    model(**batch).loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert param.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_decoders_are_tied_to_word_embeddings():
    model = SpanBertForPreTraining(tiny_config())
    names = [n for n, _ in model.named_parameters()]
    assert not any("decoder" in n for n in names)  # no separate decoder matrix exists
    assert model.decoder_weight is model.bert.embeddings.word_embeddings.weight


def test_init_follows_design():
    model = SpanBertForPreTraining(SpanBertConfig.preset("tiny", vocab_size=1000))
    w = model.bert.encoder.layer[0].attention.self.query.weight
    assert abs(w.std().item() - 0.02) < 0.002 and w.mean().abs() < 0.002
    assert torch.all(model.bert.encoder.layer[0].attention.self.query.bias == 0)
    assert torch.all(model.bert.embeddings.LayerNorm.weight == 1)
    assert torch.all(model.bert.embeddings.word_embeddings.weight[0] == 0)  # [PAD] row
    assert torch.all(model.cls.predictions.bias == 0)


def test_missing_batch_keys_are_named():
    model = SpanBertForPreTraining(tiny_config())
    batch = tiny_batch()
    del batch["sbo_left"]
    with pytest.raises(ValueError, match="sbo_left"):
        model(**batch)


def test_too_long_input_is_refused():
    model = SpanBertModel(tiny_config(max_position_embeddings=8))
    with pytest.raises(ValueError, match="position embeddings"):
        model(torch.ones(1, 9, dtype=torch.long))


def test_backend_switch_reaches_every_op_call(monkeypatch):
    """The model's one backend setting is what every hot-op call receives."""
    from spanbert_fast import ops

    seen = []
    for name in ("attention", "attention_varlen", "bias_gelu_layernorm", "bias_dropout_add_layernorm",
                 "masked_lm_loss"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _real=real, _name=name, **kw: (seen.append((_name, kw["backend"])),
                                                                                 _real(*a, **kw))[1])
    model = SpanBertForPreTraining(tiny_config(), backend="triton").set_backend("torch")
    assert model.backend == "torch" and model.bert.backend == "torch"
    model(**tiny_batch())
    assert {name for name, _ in seen} == {"attention", "bias_gelu_layernorm", "bias_dropout_add_layernorm",
                                          "masked_lm_loss"}
    assert {backend for _, backend in seen} == {"torch"}
    with pytest.raises(ValueError, match="backend"):
        model.set_backend("cuda")
    with pytest.raises(ValueError, match="backend"):
        SpanBertForPreTraining(tiny_config(), backend="gpu")


def test_presets_have_paper_sizes():
    base, large = SpanBertConfig.preset("base"), SpanBertConfig.preset("large")
    assert (base.hidden_size, base.num_hidden_layers, base.num_attention_heads, base.intermediate_size) == (768, 12, 12, 3072)
    assert (large.hidden_size, large.num_hidden_layers, large.num_attention_heads) == (1024, 24, 16)
    # non-embedding parameters of BERT-base are about 85M
    n = SpanBertModel(base).num_parameters(exclude_embeddings=True)
    assert 84e6 < n < 86e6


def test_packed_batch_gives_the_padded_loss_and_grads():
    """pack_batch's unpadded form (input_ids [T] + cu_seqlens) trains exactly like the padded batch."""
    from spanbert_fast.data.collate import pack_batch

    model = SpanBertForPreTraining(tiny_config(last_layer_subset=False)).eval()  # full final states
    batch = tiny_batch()
    padded = model(**batch)
    padded.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    packed_batch = pack_batch(batch)
    packed = model(**packed_batch)
    packed.loss.backward()
    assert packed.last_hidden_state.shape == (17, 32)  # 10 + 7 real tokens, no padding
    torch.testing.assert_close(packed.last_hidden_state,
                               padded.last_hidden_state.flatten(0, 1)[packed_batch["unpad_index"]],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed.loss, padded.loss, atol=1e-5, rtol=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_packed_input_needs_its_layout():
    model = SpanBertModel(tiny_config())
    with pytest.raises(ValueError, match="position_ids"):
        model(torch.ones(5, dtype=torch.long), cu_seqlens=torch.tensor([0, 5], dtype=torch.int32), max_seqlen=5)
