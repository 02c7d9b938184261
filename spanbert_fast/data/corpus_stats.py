"""A prepared corpus as the training step sees it: block lengths, and the share of padding each
batch layout computes (``spanbert-fast info --data``)."""
from __future__ import annotations

import numpy as np


def corpus_info(data_dir: str, batch_size: int) -> dict:
    """Block statistics of a prepared corpus and the padding share of each batch layout."""
    from spanbert_fast.data.block_dataset import BlockDataset
    from spanbert_fast.data.static_shapes import padding_fractions
    from spanbert_fast.data.tokenizer import casing_decision

    dataset = BlockDataset(data_dir)
    lengths = dataset.block_lengths()
    pads = padding_fractions(lengths, dataset.block_size, min(batch_size, len(lengths)))
    return {
        "corpus": data_dir,
        "blocks": f"{len(lengths):,} of at most {dataset.block_size} tokens (+[CLS]/[SEP])",
        "tokens": f"{int(lengths.sum()):,}",
        "tokenizer casing": casing_decision(dataset.path / dataset.meta["files"]["tokenizer"]),
        "block length": f"mean {lengths.mean():.1f}, median {np.median(lengths):.0f}, "
                        f"{100 * (lengths == dataset.block_size).mean():.1f} % full",
        f"padding, batch {batch_size}": f"padded {100 * pads['padded']:.1f} % | packed (CUDA default) 0 % | "
                                        f"fixed shapes (--cuda-graphs) {100 * pads['fixed']:.1f} %",
    }
