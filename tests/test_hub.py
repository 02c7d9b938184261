"""Checkpoint I/O: parity with transformers' BERT both ways, legacy layouts, clear errors."""
import json

import pytest
import torch
from safetensors.torch import save_file

from model_fixtures import tiny_batch, tiny_config
from spanbert_fast import SpanBertForPreTraining, SpanBertModel
from spanbert_fast.hub import canonical_key, is_ignored_key, rename_legacy_layernorm

transformers = pytest.importorskip("transformers")


def hf_config():
    c = tiny_config()
    return transformers.BertConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position_embeddings,
    )


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """A random-weight transformers.BertForPreTraining saved with save_pretrained."""
    torch.manual_seed(1)
    model = transformers.BertForPreTraining(hf_config()).eval()
    with torch.no_grad():  # non-zero biases so a dropped bias would show
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.1)
    path = tmp_path_factory.mktemp("hf")
    model.save_pretrained(path)
    return model, path


def test_loads_hf_bert_for_pretraining_with_equal_outputs(hf_checkpoint):
    hf, path = hf_checkpoint
    ours = SpanBertForPreTraining.from_pretrained(str(path), backend="torch").eval()
    batch = tiny_batch()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        hf_out = hf(ids, attention_mask=mask)
        hf_hidden = hf.bert(ids, attention_mask=mask).last_hidden_state
        hidden = ours.bert(ids, mask).last_hidden_state
        positions = torch.tensor([1, 4, 9, 12, 15])  # real tokens of both rows
        logits = ours.mlm_logits(hidden, positions)
    real = mask.bool()
    torch.testing.assert_close(hidden[real], hf_hidden[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, hf_out.prediction_logits.flatten(0, 1)[positions], atol=1e-5, rtol=1e-5)
    report = ours.load_report
    assert not report.unexpected
    assert all(k.startswith("cls.pair_target_predictions.") for k in report.missing)  # only SBO is new
    assert "cls.seq_relationship.weight" in report.ignored and "bert.pooler.dense.weight" in report.ignored


def test_saved_checkpoint_loads_into_transformers(tmp_path):
    ours = SpanBertForPreTraining(tiny_config()).eval()
    ours.save_pretrained(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    bert = transformers.BertModel.from_pretrained(str(tmp_path), add_pooling_layer=False).eval()
    pretraining = transformers.BertForPreTraining.from_pretrained(str(tmp_path)).eval()
    batch = tiny_batch()
    with torch.no_grad():
        ours_hidden = ours.bert(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        hf_hidden = bert(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        hf_logits = pretraining(batch["input_ids"], attention_mask=batch["attention_mask"]).prediction_logits
        ours_logits = ours.mlm_logits(ours_hidden, batch["mlm_positions"])
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(hf_hidden[real], ours_hidden[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hf_logits.flatten(0, 1)[batch["mlm_positions"]], ours_logits, atol=1e-5, rtol=1e-5)
    # the tied decoder came back as the word embeddings, the MLM bias as ours
    torch.testing.assert_close(pretraining.cls.predictions.decoder.weight, ours.decoder_weight)


def test_round_trip_keeps_every_weight_and_the_ties(tmp_path):
    ours = SpanBertForPreTraining(tiny_config())
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_()
    ours.save_pretrained(str(tmp_path))
    again = SpanBertForPreTraining.from_pretrained(str(tmp_path), strict=True)
    for (name, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    assert again.decoder_weight is again.bert.embeddings.word_embeddings.weight
    with torch.no_grad():
        again.bert.embeddings.word_embeddings.weight[5, 0] = 123.0
    assert again.decoder_weight[5, 0] == 123.0  # still one tensor after loading


def test_legacy_bin_without_prefix_fp16_and_gamma_beta(tmp_path):
    """An old-style encoder file: pytorch_model.bin, no 'bert.' prefix, fp16, gamma/beta."""
    source = SpanBertModel(tiny_config())
    with torch.no_grad():
        for p in source.parameters():
            p.normal_(std=0.1)
    legacy = {}
    for key, tensor in source.state_dict().items():
        if "LayerNorm" in key:
            key = key.replace(".weight", ".gamma").replace(".bias", ".beta")
        legacy[key] = tensor.half()
    torch.save(legacy, tmp_path / "pytorch_model.bin")
    tiny_config().save(str(tmp_path))
    for cls in (SpanBertModel, SpanBertForPreTraining):
        loaded = cls.from_pretrained(str(tmp_path))
        encoder = loaded if cls is SpanBertModel else loaded.bert
        assert encoder.embeddings.LayerNorm.weight.dtype == torch.float32
        torch.testing.assert_close(encoder.embeddings.LayerNorm.weight, source.embeddings.LayerNorm.weight.half().float())
        assert not loaded.load_report.unexpected and loaded.load_report.cast_from == ["torch.float16"]


def test_bare_encoder_skips_head_keys(tmp_path):
    SpanBertForPreTraining(tiny_config()).save_pretrained(str(tmp_path))
    encoder = SpanBertModel.from_pretrained(str(tmp_path), strict=True)
    assert not encoder.load_report.missing and not encoder.load_report.unexpected


def test_missing_weights_file_is_named(tmp_path):
    tiny_config().save(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        SpanBertForPreTraining.from_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not found"):
        SpanBertForPreTraining.from_pretrained(str(tmp_path / "nope"))


def test_wrong_hidden_size_names_key_and_shapes(tmp_path):
    SpanBertForPreTraining(tiny_config()).save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    config["hidden_size"] = 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"shape mismatch for bert\.embeddings\.LayerNorm\.bias: checkpoint has \(32,\), model expects \(64,\)"):
        SpanBertForPreTraining.from_pretrained(str(tmp_path))


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    SpanBertForPreTraining(tiny_config()).save_pretrained(str(tmp_path))
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        SpanBertForPreTraining.from_pretrained(str(tmp_path))


def test_unexpected_keys_reported_and_strict_refuses(tmp_path):
    model = SpanBertForPreTraining(tiny_config())
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["cls.something_else.weight"] = torch.zeros(3)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    tiny_config().save(str(tmp_path))
    loaded = SpanBertForPreTraining.from_pretrained(str(tmp_path))
    assert loaded.load_report.unexpected == ["cls.something_else.weight"]
    with pytest.raises(ValueError, match="cls.something_else.weight"):
        SpanBertForPreTraining.from_pretrained(str(tmp_path), strict=True)


def test_save_is_atomic_no_temp_files_left(tmp_path):
    SpanBertForPreTraining(tiny_config()).save_pretrained(str(tmp_path))
    SpanBertForPreTraining(tiny_config()).save_pretrained(str(tmp_path))  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("key, expected", [
    ("bert.embeddings.LayerNorm.gamma", "bert.embeddings.LayerNorm.weight"),
    ("encoder.layer.3.output.LayerNorm.beta", "bert.encoder.layer.3.output.LayerNorm.bias"),
    ("embeddings.word_embeddings.weight", "bert.embeddings.word_embeddings.weight"),
    ("cls.predictions.bias", "cls.predictions.bias"),
    ("cls.pair_target_predictions.mlp_layer_norm.layer_norm1.gamma",
     "cls.pair_target_predictions.mlp_layer_norm.layer_norm1.weight"),
])
def test_canonical_key(key, expected):
    assert canonical_key(key) == expected


def test_key_helpers():
    assert rename_legacy_layernorm("a.b.weight") == "a.b.weight"
    assert is_ignored_key("cls.predictions.decoder.weight")
    assert is_ignored_key("bert.pooler.dense.bias")
    assert not is_ignored_key("cls.predictions.bias")


def test_hub_repo_id_is_downloaded_then_loaded(tmp_path, monkeypatch):
    """A repo id ("org/name") that is not a local folder goes through huggingface_hub."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    SpanBertForPreTraining(tiny_config()).save_pretrained(str(tmp_path / "snapshot"))
    asked = {}

    def fake_snapshot_download(repo_id, allow_patterns):
        asked["repo_id"], asked["patterns"] = repo_id, allow_patterns
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = SpanBertForPreTraining.from_pretrained("SpanBERT/spanbert-tiny-test", strict=True)
    assert asked["repo_id"] == "SpanBERT/spanbert-tiny-test" and "config.json" in asked["patterns"]
    assert model.config.hidden_size == 32


def test_hub_download_failure_is_a_clear_error(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(repo_id, allow_patterns):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="downloading it from the HF hub failed.*no network"):
        SpanBertForPreTraining.from_pretrained("SpanBERT/spanbert-base-cased")
