"""embed: documented shapes, layer selection, pooling, determinism, file formats, CLI."""
import numpy as np
import pytest
import torch

from task_fixtures import fixture_tokenizer, tiny_checkpoint
from spanbert_fast import SpanBertModel
from spanbert_fast.cli import main
from spanbert_fast.tasks import embed, load_ragged, save_embeddings
from spanbert_fast.tasks.embeddings import layer_indices, parse_layers

TEXTS = ["The bread was warm.", "Oskar Lind cast the bell for Willow Creek and the chapel.", "", "Paris"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("embed"), hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


@pytest.fixture(scope="module")
def model(checkpoint):
    return SpanBertModel.from_pretrained(checkpoint, backend="torch")


def reference_states(model, text):
    """Hidden states of one unpadded text, computed directly."""
    ids = fixture_tokenizer().encode(text).ids  # [CLS] text [SEP]
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([ids]), output_hidden_states=True).hidden_states, len(ids)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_pooled_shape_and_values(model, pool):
    out = embed(model, fixture_tokenizer(), TEXTS, pool=pool, batch_size=3)
    assert out.shape == (len(TEXTS), 64) and out.dtype == np.float32
    for row, text in enumerate(TEXTS):
        states, _ = reference_states(model, text)
        expected = states[-1][0, 0] if pool == "cls" else states[-1][0].mean(dim=0)
        np.testing.assert_allclose(out[row], expected.numpy(), atol=1e-5, rtol=1e-5)


def test_layer_range_is_the_mean_of_those_layers(model):
    out = embed(model, fixture_tokenizer(), TEXTS[:2], layer=(-3, -2), pool="none")
    for row, text in enumerate(TEXTS[:2]):
        states, n = reference_states(model, text)
        expected = (states[0][0] + states[1][0]) / 2  # -3..-2 of 3 states = embeddings, layer 1
        assert out[row].shape == (n, 64)
        np.testing.assert_allclose(out[row], expected.numpy(), atol=1e-5, rtol=1e-5)


def test_deterministic_and_train_mode_restored(model):
    model.train()  # dropout is on in this checkpoint's config; embed must switch it off
    first = embed(model, fixture_tokenizer(), TEXTS, pool="mean")
    second = embed(model, fixture_tokenizer(), TEXTS, pool="mean", batch_size=1)
    assert model.training
    np.testing.assert_allclose(first, second, atol=1e-6, rtol=1e-6)
    np.testing.assert_array_equal(first, embed(model, fixture_tokenizer(), TEXTS, pool="mean"))


def test_layer_parsing_and_bounds():
    assert parse_layers("-1") == -1 and parse_layers("-4..-1") == (-4, -1) and parse_layers("0..2") == (0, 2)
    assert layer_indices(-1, 12) == [12] and layer_indices((-4, -1), 12) == [9, 10, 11, 12]
    with pytest.raises(ValueError, match="out of range"):
        layer_indices(-4, 2)
    with pytest.raises(ValueError, match="empty"):
        layer_indices((-1, -2), 2)
    with pytest.raises(ValueError, match="FIRST..LAST"):
        parse_layers("last")


def test_ragged_npz_round_trip(tmp_path, model):
    out = embed(model, fixture_tokenizer(), TEXTS, pool="none")
    path = save_embeddings(str(tmp_path / "tokens.npz"), out)
    back = load_ragged(path)
    assert [a.shape for a in back] == [a.shape for a in out]
    for a, b in zip(back, out):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"\.npz"):
        save_embeddings(str(tmp_path / "tokens.npy"), out)
    with pytest.raises(ValueError, match=r"\.npy"):
        save_embeddings(str(tmp_path / "pooled.npz"), np.zeros((2, 3), np.float32))


def test_long_text_is_cut(model):
    out = embed(model, fixture_tokenizer(), ["word " * 300], pool="none", max_length=16)
    assert out[0].shape == (16, 64)


def test_cli_writes_npy_and_npz(tmp_path, checkpoint, model, capsys):
    inputs = tmp_path / "texts.txt"
    inputs.write_text("\n".join(TEXTS) + "\n")
    npy = tmp_path / "cls.npy"
    assert main(["embed", checkpoint, "--input", str(inputs), "--layer", "-2..-1", "--pool", "mean",
                 "--out", str(npy), "--no-progress"]) == 0
    expected = embed(model, fixture_tokenizer(), TEXTS, layer=(-2, -1), pool="mean")
    np.testing.assert_allclose(np.load(npy), expected, atol=1e-6)
    npz = tmp_path / "tokens.npz"
    assert main(["embed", checkpoint, "--input", str(inputs), "--pool", "none", "--out", str(npz),
                 "--no-progress"]) == 0
    with np.load(npz) as archive:
        offsets, ids, vectors = archive["offsets"], archive["input_ids"], archive["embeddings"]
    tokenizer = fixture_tokenizer()
    assert offsets.tolist()[-1] == len(ids) == len(vectors)
    assert ids[offsets[1]: offsets[2]].tolist() == tokenizer.encode(TEXTS[1]).ids
    assert "wrote" in capsys.readouterr().out


def test_cli_bad_layer_is_one_line(tmp_path, checkpoint):
    inputs = tmp_path / "texts.txt"
    inputs.write_text("a text\n")
    with pytest.raises(SystemExit, match="embed: error: layer -9 out of range"):
        main(["embed", checkpoint, "--input", str(inputs), "--layer", "-9..-1", "--out", str(tmp_path / "x.npy")])


def test_cli_rows_are_lines_split_on_newline_only(tmp_path, checkpoint, model):
    """Form feeds, \\x1c-\\x1e, \\x85, \\u2028/\\u2029 inside a text do not split it; \\r\\n ends a line."""
    texts = ["The bread\x0cwas warm.", "Paris\u2028Rome\x85and\x1cLind", "", "the bell\u2029"]
    inputs = tmp_path / "texts.txt"
    inputs.write_bytes(("\r\n".join(texts) + "\n").encode("utf-8"))
    npy = tmp_path / "cls.npy"
    assert main(["embed", checkpoint, "--input", str(inputs), "--out", str(npy), "--no-progress"]) == 0
    got = np.load(npy)
    assert got.shape == (len(texts), 64)
    np.testing.assert_allclose(got, embed(model, fixture_tokenizer(), texts), atol=1e-6)


def test_cli_non_utf8_input_is_one_line_with_file_and_line(tmp_path, checkpoint):
    inputs = tmp_path / "texts.txt"
    inputs.write_bytes(b"a text\ncaf\xe9\n")
    with pytest.raises(SystemExit, match=rf"embed: error: {inputs}:2: not UTF-8 text"):
        main(["embed", checkpoint, "--input", str(inputs), "--out", str(tmp_path / "x.npy")])


@pytest.mark.parametrize("flag, value", [("--max-length", "1"), ("--max-length", "0"), ("--max-length", "-3"),
                                         ("--batch-size", "0")])
def test_cli_too_small_max_length_or_batch_size_is_one_line(tmp_path, checkpoint, flag, value):
    """--max-length 0 used to mean the model maximum and 1 gave [CLS] [SEP] ... garbage rows."""
    inputs = tmp_path / "texts.txt"
    inputs.write_text("a text\n")
    with pytest.raises(SystemExit, match=rf"embed: error: .*\({flag}\) must be at least"):
        main(["embed", checkpoint, "--input", str(inputs), "--out", str(tmp_path / "x.npy"), flag, value])
