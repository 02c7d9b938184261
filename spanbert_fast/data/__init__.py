"""Data: text files → tokenizer → packed block shards → span masking → batches.

Modules: ``tokenizer`` (train/load WordPiece, special ids, word starts), ``corpus`` (reading
documents, sentence splitting, the demo corpus), ``encoding`` (sentences → token ids → packed
block lengths, run by prepare's workers), ``prepare`` (the streaming shard writer),
``block_dataset`` (the on-disk format, its checks and the memory-mapped ``BlockDataset``),
``masking`` (SpanBERT span masking and SBO targets), ``collate`` (masked blocks → the batch dict
the model consumes), ``loader`` (deterministic, resumable, DDP-sharded batch order). This package needs token ids only, never the network.
"""
# The torch-free public API; ``collate`` and ``loader`` (which import torch) are imported from
# their modules: ``from spanbert_fast.data.loader import PretrainingBatches``.
from .corpus import Document, demo_corpus_texts, iter_documents, split_sentences
from .masking import MaskedBlock, SpanMasker, mask_budget, span_length_probabilities
from .block_dataset import Block, BlockDataset
from .encoding import pack_blocks
from .prepare import prepare_corpus, prepare_documents
from .tokenizer import SpecialIds, load_tokenizer, save_tokenizer, special_ids, train_tokenizer, word_start_table

__all__ = [
    "Block", "BlockDataset", "Document", "MaskedBlock", "SpanMasker", "SpecialIds",
    "demo_corpus_texts", "iter_documents", "load_tokenizer", "mask_budget", "pack_blocks",
    "prepare_corpus", "prepare_documents", "save_tokenizer", "span_length_probabilities",
    "special_ids", "split_sentences", "train_tokenizer", "word_start_table",
]
