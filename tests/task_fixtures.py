"""Shared by the tests/test_tasks_*.py files: a tokenizer trained on tests/data and tiny models."""
import csv
import functools
import json
import os

import torch

from spanbert_fast import SpanBertConfig, SpanBertForPreTraining
from spanbert_fast.data.tokenizer import save_tokenizer, train_tokenizer

DATA = os.path.join(os.path.dirname(__file__), "data")


def data_path(name: str) -> str:
    return os.path.join(DATA, name)


def fixture_texts():
    """Every text in tests/data: SQuAD contexts and questions, CoNLL sentences, classification rows."""
    texts = []
    for name in ("squad_v1.json", "squad_v2.json"):
        with open(data_path(name)) as f:
            for article in json.load(f)["data"]:
                for paragraph in article["paragraphs"]:
                    texts.append(paragraph["context"])
                    texts.extend(q["question"] for q in paragraph["qas"])
    with open(data_path("conll.txt")) as f:
        texts.extend(line.split()[0] for line in f if line.strip() and not line.startswith("-DOCSTART-"))
    with open(data_path("classification.csv"), newline="") as f:
        texts.extend(row["text"] for row in csv.DictReader(f))
    return texts


@functools.lru_cache(maxsize=None)
def fixture_tokenizer():
    """A WordPiece tokenizer trained on the fixture texts (whole words for every fixture word)."""
    return train_tokenizer(fixture_texts(), vocab_size=600, min_frequency=1)


def tiny_task_config(vocab_size: int, **overrides) -> SpanBertConfig:
    """A model small enough to overfit the fixtures on CPU in seconds (no dropout)."""
    values = dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=128, max_position_embeddings=128, sbo_position_embedding_size=16,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return SpanBertConfig(**{**values, **overrides})


def tiny_checkpoint(directory, seed: int = 0, **config_overrides) -> str:
    """A freshly initialised pre-training checkpoint + the fixture tokenizer in ``directory``."""
    tokenizer = fixture_tokenizer()
    torch.manual_seed(seed)
    model = SpanBertForPreTraining(tiny_task_config(tokenizer.get_vocab_size(), **config_overrides))
    model.save_pretrained(str(directory))
    save_tokenizer(tokenizer, directory)
    return str(directory)
