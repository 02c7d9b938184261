"""``spanbert-fast finetune-re``: relation extraction on TACRED-format JSON / JSONL.

The common fine-tuning flags of ``finetune-*`` plus ``--pooling``; the task is
:class:`spanbert_fast.tasks.relation.RelationExtractionTask`, run by the shared driver.
"""
from __future__ import annotations

from spanbert_fast.commands.finetune import add_common_arguments, run_finetune


def run_relation_extraction(args) -> int:
    from spanbert_fast.tasks.relation import RelationExtractionTask

    return run_finetune(lambda: RelationExtractionTask(args.max_length, args.pooling, tokenizer_path=args.tokenizer),
                        args)


def register(subparsers) -> None:
    re_parser = subparsers.add_parser(
        "finetune-re", help="fine-tune relation extraction on TACRED JSON/JSONL (entity masking); TACRED micro P/R/F1")
    add_common_arguments(re_parser, default_max_length=128)
    head = re_parser.add_argument_group("head")
    head.add_argument("--pooling", default="cls", choices=["cls", "entity-start"],
                      help="cls: the [CLS] state (the SpanBERT paper); entity-start: the subject and object "
                           "marker states, concatenated")
    re_parser.set_defaults(func=run_relation_extraction)
