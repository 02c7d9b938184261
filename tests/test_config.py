import json

import pytest

from spanbert_fast import SpanBertConfig


def test_round_trip_through_config_json(tmp_path):
    config = SpanBertConfig.preset("tiny", attention_window=64, sbo_loss_weight=0.5, last_layer_subset=False)
    config.save(tmp_path)
    assert SpanBertConfig.load(tmp_path) == config
    values = json.loads((tmp_path / "config.json").read_text())
    assert values["model_type"] == "bert" and values["hidden_size"] == 128


def test_reads_hf_bert_config_with_extra_fields(tmp_path):
    hf = {"architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 64,
          "num_attention_heads": 4, "num_hidden_layers": 1, "intermediate_size": 256,
          "vocab_size": 28996, "torch_dtype": "float16", "transformers_version": "4.0", "directionality": "bidi"}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    config = SpanBertConfig.load(tmp_path)
    assert config.hidden_size == 64 and config.sbo_max_targets == 15 and config.last_layer_subset


@pytest.mark.parametrize("bad, match", [
    ({"model_type": "roberta"}, "not a BERT model"),
    ({"position_embedding_type": "relative_key"}, "not supported"),
    ({"hidden_size": 100, "num_attention_heads": 3}, "divisible"),
    ({"hidden_act": "relu"}, "hidden_act"),
])
def test_bad_configs_give_clear_errors(tmp_path, bad, match):
    (tmp_path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=match):
        SpanBertConfig.load(tmp_path)


def test_missing_config_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        SpanBertConfig.load(tmp_path)


def test_unknown_preset():
    with pytest.raises(ValueError, match="tiny"):
        SpanBertConfig.preset("huge")
