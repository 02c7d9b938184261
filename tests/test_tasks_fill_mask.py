"""fill_mask: planted tokens come back after overfitting; several masks; CLI; bad input."""
import os

import pytest
import torch

from task_fixtures import fixture_tokenizer, tiny_checkpoint, tiny_task_config
from spanbert_fast import SpanBertForPreTraining, SpanBertModel
from spanbert_fast.cli import main
from spanbert_fast.data.tokenizer import save_tokenizer, special_ids
from spanbert_fast.tasks import fill_mask
from spanbert_fast.tasks.batching import collate_features
from spanbert_fast.tasks.fill_mask import encode_with_masks
from spanbert_fast.train import Trainer, TrainingArgs

# (text, planted words) -- every [MASK] stands for the next planted word.
PLANTED = [
    ("It stands in [MASK], the capital of [MASK].", ["Paris", "France"]),
    ("Oskar Lind cast the [MASK] for Willow Creek.", ["bell"]),
    ("Farmers sell [MASK] and wool.", ["honey"]),
    ("The bus leaves at [MASK] every morning.", ["seven"]),
]


def mlm_batch(tokenizer):
    """One batch with the planted words masked (MLM targets only, no SBO targets)."""
    rows, positions, labels = [], [], []
    for text, words in PLANTED:
        ids, mask_positions = encode_with_masks(tokenizer, text)
        rows.append({"input_ids": ids})
        for position, word in zip(mask_positions, words):
            positions.append((len(rows) - 1, position))
            labels.append(tokenizer.token_to_id(word))
    batch = collate_features(rows, special_ids(tokenizer).pad)
    width = batch["input_ids"].shape[1]
    empty = torch.zeros(0, dtype=torch.long)
    batch.update(mlm_positions=torch.tensor([r * width + c for r, c in positions]), mlm_labels=torch.tensor(labels),
                 sbo_left=empty, sbo_right=empty, sbo_rel_pos=empty, sbo_labels=empty)
    return batch


def repeat(batch):
    while True:
        yield batch


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny pre-training model overfitted on the planted batch, saved with its tokenizer."""
    tokenizer = fixture_tokenizer()
    torch.manual_seed(0)
    model = SpanBertForPreTraining(tiny_task_config(tokenizer.get_vocab_size())).set_backend("torch")
    out = tmp_path_factory.mktemp("fill_mask")
    args = TrainingArgs(out_dir=str(out / "run"), max_steps=80, lr=3e-3, log_every=20, progress=False, plot=False)
    result = Trainer(model, repeat(mlm_batch(tokenizer)), args).train()
    assert result.history[-1]["mlm_acc"] == 1.0
    model.save_pretrained(str(out / "model"))
    save_tokenizer(tokenizer, out / "model")
    return model, tokenizer, str(out / "model")


def test_planted_tokens_come_back_first(trained):
    model, tokenizer, _ = trained
    for text, words in PLANTED:
        predictions = fill_mask(model, tokenizer, text, top_k=3)
        assert len(predictions) == len(words)  # one list per mask, in text order
        for per_mask, word in zip(predictions, words):
            assert len(per_mask) == 3
            assert per_mask[0][0] == word
            scores = [score for _, score in per_mask]
            assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1


def test_list_of_texts_matches_one_by_one(trained):
    model, tokenizer, _ = trained
    texts = [text for text, _ in PLANTED]
    together = fill_mask(model, tokenizer, texts, top_k=2, batch_size=3)
    for text, predictions in zip(texts, together):
        alone = fill_mask(model, tokenizer, text, top_k=2)
        assert [[t for t, _ in m] for m in predictions] == [[t for t, _ in m] for m in alone]
        for m_batch, m_alone in zip(predictions, alone):
            assert [s for _, s in m_batch] == pytest.approx([s for _, s in m_alone], abs=1e-5)


def test_mode_is_restored_and_no_dropout(trained):
    model, tokenizer, _ = trained
    model.train()
    first = fill_mask(model, tokenizer, PLANTED[0][0])
    assert model.training
    assert fill_mask(model, tokenizer, PLANTED[0][0]) == first


def test_cli_prints_planted_token(trained, capsys):
    _, _, folder = trained
    assert main(["fill-mask", folder, "Farmers sell [MASK] and wool.", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[MASK] 1:" and lines[1].split()[0] == "honey" and len(lines) == 3


def test_cli_with_vocab_txt_tokenizer(trained, capsys, tmp_path):
    _, _, folder = trained
    vocab = os.path.join(folder, "vocab.txt")  # a bare vocab.txt has no [MASK] added token
    assert main(["fill-mask", folder, "Oskar Lind cast the [MASK] for Willow Creek.", "--tokenizer", vocab]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[0] == "bell"


def test_cli_refuses_checkpoint_without_mlm_head(tmp_path, capsys):
    tokenizer = fixture_tokenizer()
    SpanBertModel(tiny_task_config(tokenizer.get_vocab_size())).save_pretrained(str(tmp_path))
    save_tokenizer(tokenizer, tmp_path)
    assert main(["fill-mask", str(tmp_path), "a [MASK] b"]) == 1
    assert "no masked-LM head" in capsys.readouterr().err


def test_missing_tokenizer_is_named(tmp_path):
    SpanBertForPreTraining(tiny_task_config(50)).save_pretrained(str(tmp_path))
    with pytest.raises(SystemExit, match=r"fill-mask: error: .*no tokenizer.json or vocab.txt.*--tokenizer"):
        main(["fill-mask", str(tmp_path), "a [MASK] b"])


def test_text_without_mask_is_an_error(tmp_path):
    folder = tiny_checkpoint(tmp_path)
    model = SpanBertForPreTraining.from_pretrained(folder, backend="torch")
    with pytest.raises(ValueError, match=r"no \[MASK\]"):
        fill_mask(model, fixture_tokenizer(), "nothing to fill")
