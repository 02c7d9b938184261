"""Small models and hand-made batches shared by the model, hub and training tests."""
import torch

from spanbert_fast import SpanBertConfig

TINY = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64, sbo_position_embedding_size=8)


def tiny_config(**overrides) -> SpanBertConfig:
    return SpanBertConfig(**{**TINY, **overrides})


def tiny_batch(vocab_size: int = 97, seed: int = 0):
    """Two rows (lengths 10 and 7) in the collator's format, with hand-picked spans.

    Row 0: span at cols 3..5 (boundaries 2 and 6); row 1: span at col 2 (boundaries 1, 3).
    """
    g = torch.Generator().manual_seed(seed)
    batch, length = 2, 10
    input_ids = torch.randint(5, vocab_size, (batch, length), generator=g)
    input_ids[:, 0] = 1  # [CLS]
    input_ids[0, 9] = 2  # [SEP]
    input_ids[1, 6] = 2
    input_ids[1, 7:] = 0  # [PAD]
    attention_mask = (torch.arange(length)[None] < torch.tensor([[10], [7]])).long()
    labels = input_ids.clone()
    mlm_positions = torch.tensor([3, 4, 5, length + 2])
    mlm_labels = labels.flatten()[mlm_positions].clone()
    input_ids.view(-1)[mlm_positions] = 3  # [MASK]
    sbo_left, sbo_right = torch.tensor([2, 2, 2, length + 1]), torch.tensor([6, 6, 6, length + 3])
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        mlm_positions=mlm_positions,
        mlm_labels=mlm_labels,
        sbo_left=sbo_left,
        sbo_right=sbo_right,
        sbo_rel_pos=torch.tensor([0, 1, 2, 0]),
        sbo_labels=mlm_labels.clone(),
        head_rows=torch.unique(torch.cat([mlm_positions, sbo_left, sbo_right])),  # [2, 3, 4, 5, 6, 11, 12, 13]
    )


class NumberedBatches:
    """An endless, resumable batch source: batch i is ``tiny_batch(seed=i)``."""

    def __init__(self, crash_at=None):
        self.position = 0
        self.crash_at = crash_at

    def __iter__(self):
        while True:
            if self.position == self.crash_at:
                raise KeyboardInterrupt("simulated crash")
            batch = tiny_batch(seed=self.position)
            self.position += 1
            yield batch

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]
