"""patch_hf_bert: patched transformers BERT matches the unpatched one (outputs and grads), CPU, torch backend."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from helpers import DEVICE  # noqa: E402
from spanbert_fast import ops, patch_hf_bert  # noqa: E402
from spanbert_fast.tasks.patch_hf import SUPPORTED_ATTN_IMPLEMENTATIONS, key_padding_from_mask  # noqa: E402

TOL = 1e-5  # fp32 parity (tests/helpers.py FP32_TOL); the masked loss sums over ~10 rows only


def tiny_bert_config(attn_implementation):
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32)
    config._attn_implementation = attn_implementation
    return config


def batch(seed=0):
    """Two rows, the second padded after 6 tokens; MLM labels on a few real tokens, NSP labels."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 99, (2, 10), generator=g)
    attention_mask = torch.ones(2, 10, dtype=torch.long)
    attention_mask[1, 6:] = 0
    input_ids[1, 6:] = 0
    labels = torch.full((2, 10), -100)
    for row, col in [(0, 1), (0, 4), (0, 9), (1, 2), (1, 5)]:
        labels[row, col] = int(torch.randint(5, 99, (1,), generator=g))
    return input_ids, attention_mask, labels


def count_op_calls(monkeypatch):
    calls = {"attention": 0, "bias_dropout_add_layernorm": 0, "masked_lm_loss": 0}
    for name in calls:
        original = getattr(ops, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(ops, name, counted)
    return calls


def assert_grads_match(patched, reference):
    reference_grads = {n: p.grad for n, p in reference.named_parameters()}
    checked = 0
    for name, param in patched.named_parameters():
        expected = reference_grads[name]
        if expected is None:
            assert param.grad is None or torch.count_nonzero(param.grad) == 0, name
            continue
        torch.testing.assert_close(param.grad, expected, atol=TOL, rtol=TOL, msg=lambda m, n=name: f"grad {n}: {m}")
        checked += 1
    assert checked > 20  # every encoder weight and the heads


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_masked_lm_parity(attn_implementation, monkeypatch):
    torch.manual_seed(0)
    reference = transformers.BertForMaskedLM(tiny_bert_config(attn_implementation)).eval()
    patched = patch_hf_bert(copy.deepcopy(reference), backend="torch")
    assert patched._spanbert_patched == {"attention": 2, "sublayer_output": 4, "mlm_loss": 1}
    calls = count_op_calls(monkeypatch)
    input_ids, attention_mask, labels = batch()

    out = patched(input_ids=input_ids, attention_mask=attention_mask, labels=labels, output_hidden_states=True)
    ref = reference(input_ids=input_ids, attention_mask=attention_mask, labels=labels, output_hidden_states=True)
    assert calls == {"attention": 2, "bias_dropout_add_layernorm": 4, "masked_lm_loss": 1}
    assert out.logits is None  # the fused loss never builds [B, L, V]
    torch.testing.assert_close(out.loss, ref.loss, atol=TOL, rtol=TOL)
    real = attention_mask.bool()
    for mine, theirs in zip(out.hidden_states, ref.hidden_states):
        torch.testing.assert_close(mine[real], theirs[real], atol=TOL, rtol=TOL)
    out.loss.backward()
    ref.loss.backward()
    assert_grads_match(patched, reference)

    with torch.no_grad():  # without labels: the original head, full logits, same values
        logits = patched(input_ids=input_ids, attention_mask=attention_mask).logits
        expected = reference(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(logits[real], expected[real], atol=TOL, rtol=TOL)


def test_masked_lm_parity_with_flex_attention(monkeypatch):
    """attn_implementation="flex_attention" hands each layer a BlockMask: read as the same padding.

    Forward against the unpatched flex model; gradients against the unpatched model on eager
    attention (same weights), since flex attention has no backward on CPU.
    """
    torch.manual_seed(5)
    reference = transformers.BertForMaskedLM(tiny_bert_config("flex_attention")).eval()
    patched = patch_hf_bert(copy.deepcopy(reference), backend="torch")
    calls = count_op_calls(monkeypatch)
    input_ids, attention_mask, labels = batch(seed=5)
    out = patched(input_ids=input_ids, attention_mask=attention_mask, labels=labels, output_hidden_states=True)
    with torch.no_grad():
        ref = reference(input_ids=input_ids, attention_mask=attention_mask, labels=labels, output_hidden_states=True)
    assert calls["attention"] == 2  # our op ran on both layers, not a fallback
    torch.testing.assert_close(out.loss, ref.loss, atol=TOL, rtol=TOL)
    real = attention_mask.bool()
    for mine, theirs in zip(out.hidden_states, ref.hidden_states):  # row 1 is padded: the mask was applied
        torch.testing.assert_close(mine[real], theirs[real], atol=TOL, rtol=TOL)
    with torch.no_grad():
        logits = patched(input_ids=input_ids, attention_mask=attention_mask).logits
        expected = reference(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(logits[real], expected[real], atol=TOL, rtol=TOL)

    eager = copy.deepcopy(reference)
    eager.set_attn_implementation("eager")
    assert eager.config._attn_implementation == "eager" and reference.config._attn_implementation == "flex_attention"
    out.loss.backward()
    eager(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
    assert_grads_match(patched, eager)


def test_pretraining_parity_with_nsp_loss(monkeypatch):
    torch.manual_seed(1)
    reference = transformers.BertForPreTraining(tiny_bert_config("sdpa")).eval()
    patched = patch_hf_bert(copy.deepcopy(reference), backend="torch")
    calls = count_op_calls(monkeypatch)
    input_ids, attention_mask, labels = batch(seed=1)
    nsp = torch.tensor([0, 1])
    out = patched(input_ids=input_ids, attention_mask=attention_mask, labels=labels, next_sentence_label=nsp)
    ref = reference(input_ids=input_ids, attention_mask=attention_mask, labels=labels, next_sentence_label=nsp)
    assert calls["masked_lm_loss"] == 1 and out.prediction_logits is None
    torch.testing.assert_close(out.loss, ref.loss, atol=TOL, rtol=TOL)
    torch.testing.assert_close(out.seq_relationship_logits, ref.seq_relationship_logits, atol=TOL, rtol=TOL)
    out.loss.backward()
    ref.loss.backward()
    assert_grads_match(patched, reference)


@pytest.mark.parametrize("model_class", ["BertForMaskedLM", "BertForPreTraining"])
def test_keep_logits_returns_the_logits_with_the_fused_loss(model_class):
    """transformers returns logits with the loss; keep_logits=True does too (default: None)."""
    torch.manual_seed(6)
    reference = getattr(transformers, model_class)(tiny_bert_config("sdpa")).eval()
    patched = patch_hf_bert(copy.deepcopy(reference), backend="torch", keep_logits=True)
    input_ids, attention_mask, labels = batch(seed=6)
    extra = {"next_sentence_label": torch.tensor([1, 0])} if model_class == "BertForPreTraining" else {}
    out = patched(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **extra)
    ref = reference(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **extra)
    name = "logits" if model_class == "BertForMaskedLM" else "prediction_logits"
    real = attention_mask.bool()
    assert getattr(out, name).shape == getattr(ref, name).shape == (2, 10, 99)
    torch.testing.assert_close(getattr(out, name)[real], getattr(ref, name)[real], atol=TOL, rtol=TOL)
    torch.testing.assert_close(out.loss, ref.loss, atol=TOL, rtol=TOL)
    out.loss.backward()
    ref.loss.backward()
    assert_grads_match(patched, reference)
    default = patch_hf_bert(copy.deepcopy(reference), backend="torch")
    assert getattr(default(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **extra), name) is None


@pytest.mark.parametrize("model_class", ["BertForMaskedLM", "BertForPreTraining"])
def test_labels_on_padding_are_refused(model_class):
    """transformers scores a label at a padded position (its loss changes); the patched model
    cannot reproduce that, so it refuses, naming -100, instead of returning another number."""
    torch.manual_seed(7)
    reference = getattr(transformers, model_class)(tiny_bert_config("eager")).eval()
    patched = patch_hf_bert(copy.deepcopy(reference), backend="torch")
    input_ids, attention_mask, labels = batch(seed=7)
    on_padding = labels.clone()
    on_padding[1, 8] = 42  # row 1 is padding from position 6 on
    extra = {"next_sentence_label": torch.tensor([1, 0])} if model_class == "BertForPreTraining" else {}
    with torch.no_grad():
        counted = reference(input_ids=input_ids, attention_mask=attention_mask, labels=on_padding, **extra).loss
        plain = reference(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **extra).loss
    assert not torch.isclose(counted, plain)  # transformers does put the padded label in its loss
    with pytest.raises(ValueError, match="1 label\\(s\\) sit on padded positions .*-100"):
        patched(input_ids=input_ids, attention_mask=attention_mask, labels=on_padding, **extra)
    additive = torch.where(attention_mask.bool()[:, None, None, :], 0.0, torch.finfo(torch.float32).min)
    with pytest.raises(ValueError, match="padded positions"):  # a 4-D mask says the same
        patched(input_ids=input_ids, attention_mask=additive, labels=on_padding, **extra)
    out = patched(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **extra)
    torch.testing.assert_close(out.loss, plain, atol=TOL, rtol=TOL)


def test_bare_encoder_without_padding_and_tuple_output():
    torch.manual_seed(2)
    reference = transformers.BertModel(tiny_bert_config("eager")).eval()
    patched = patch_hf_bert(copy.deepcopy(reference), backend="torch")
    assert patched._spanbert_patched["mlm_loss"] == 0 and patched._spanbert_patched["attention"] == 2
    input_ids = torch.randint(5, 99, (3, 7))
    with torch.no_grad():
        mine = patched(input_ids=input_ids)
        theirs = reference(input_ids=input_ids)
    torch.testing.assert_close(mine.last_hidden_state, theirs.last_hidden_state, atol=TOL, rtol=TOL)
    torch.testing.assert_close(mine.pooler_output, theirs.pooler_output, atol=TOL, rtol=TOL)


def test_masked_lm_return_dict_false():
    torch.manual_seed(3)
    model = patch_hf_bert(transformers.BertForMaskedLM(tiny_bert_config("sdpa")).eval(), backend="torch")
    input_ids, attention_mask, labels = batch()
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, return_dict=False)[0]
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_key_padding_from_each_mask_format():
    keep = torch.tensor([[True, True, False], [True, True, True]])
    additive = torch.where(keep[:, None, None, :], 0.0, torch.finfo(torch.float32).min).expand(2, 1, 3, 3)
    assert torch.equal(key_padding_from_mask(additive, 2), keep)
    assert torch.equal(key_padding_from_mask(keep[:, None, None, :].expand(2, 1, 3, 3), 2), keep)
    assert torch.equal(key_padding_from_mask(keep.long(), 2), keep)
    assert key_padding_from_mask(torch.ones(2, 3), 2) is None and key_padding_from_mask(None, 2) is None


@pytest.mark.parametrize("attn_implementation", SUPPORTED_ATTN_IMPLEMENTATIONS)
def test_key_padding_from_the_mask_transformers_builds(attn_implementation):
    """Each supported implementation's own mask (4-D, 2-D or a flex BlockMask) reads as the padding."""
    from transformers.masking_utils import create_bidirectional_mask

    config = tiny_bert_config(attn_implementation)
    _, attention_mask, _ = batch()
    embeddings = torch.zeros(2, 10, 32)
    built = create_bidirectional_mask(config=config, inputs_embeds=embeddings, attention_mask=attention_mask)
    assert torch.equal(key_padding_from_mask(built, 2), attention_mask.bool())
    unpadded = create_bidirectional_mask(config=config, inputs_embeds=embeddings,
                                         attention_mask=torch.ones_like(attention_mask))
    assert key_padding_from_mask(unpadded, 2) is None


def test_refuses_other_attn_implementations_naming_the_supported_ones():
    config = tiny_bert_config("eager")
    model = transformers.BertForMaskedLM(config)
    config._attn_implementation_internal = "paged|sdpa"  # as set_attn_implementation would leave it
    supported = "'eager', 'sdpa', 'flex_attention', 'flash_attention_2'"
    with pytest.raises(ValueError, match=f"attn_implementation 'paged|sdpa' is not supported; .*{supported}"):
        patch_hf_bert(model, backend="torch")
    assert patch_hf_bert(model, backend="torch", attention=False)._spanbert_patched["attention"] == 0
    with pytest.raises(ValueError, match=f"unexpected attention mask of type dict; .*{supported}"):
        key_padding_from_mask({"mask": None}, 2)  # a mask form that appeared after patching


def test_refuses_decoders_and_other_models():
    config = tiny_bert_config("eager")
    config.is_decoder = True
    with pytest.raises(ValueError, match="bidirectional encoders only"):
        patch_hf_bert(transformers.BertModel(config))
    with pytest.raises(ValueError, match="transformers BERT model"):
        patch_hf_bert(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="backend"):
        patch_hf_bert(transformers.BertModel(tiny_bert_config("eager")), backend="cuda")


@pytest.mark.slow
def test_masked_lm_parity_on_the_triton_kernels():
    """The same parity through the Triton kernels (the interpreter on CPU, see tests/conftest.py)."""
    pytest.importorskip("triton")
    config = transformers.BertConfig(vocab_size=99, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32)  # head dim 32
    config._attn_implementation = "sdpa"
    torch.manual_seed(4)
    reference = transformers.BertForMaskedLM(config).to(DEVICE).eval()
    patched = patch_hf_bert(copy.deepcopy(reference), backend="triton")
    input_ids, attention_mask, labels = (t.to(DEVICE) for t in batch())
    out = patched(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    ref = reference(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-4, rtol=1e-4)
    out.loss.backward()
    ref.loss.backward()
    for name, param in patched.named_parameters():
        expected = dict(reference.named_parameters())[name].grad
        if expected is not None:
            torch.testing.assert_close(param.grad, expected, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
