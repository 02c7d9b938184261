"""Data: text files → tokenizer → packed block shards → span masking → batches.

Modules: ``tokenizer`` (train/load WordPiece, special ids, word starts), ``corpus`` (reading
documents, sentence splitting, the demo corpus), ``prepare`` (streaming shard writer and the
memory-mapped ``BlockDataset``), ``masking`` (SpanBERT span masking and SBO targets), ``collate``
(masked blocks → the batch dict the model consumes), ``loader`` (deterministic, resumable,
DDP-sharded batch order). This package needs token ids only, never the network.
"""
