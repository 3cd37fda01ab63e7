"""prepare: text files tokenized into a dataset of memory-mapped shards (moe/data/prepare.py)."""

from __future__ import annotations

from moe.cli.common import EXIT_OK, POSITIVE_INT


def add_parser(sub) -> None:
    d = sub.add_parser("prepare", help="tokenize your text into a dataset of memory-mapped shards for train --data")
    d.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="PATH",
        help="text files, directories of them, "
        "JSONL files (a \"text\" field per line), .gz of these, or 'shakespeare' (the bundled corpus)",
    )
    d.add_argument(
        "--format",
        choices=("text", "chat"),
        default="text",
        help='text (default) or chat: JSONL rows of {"messages": [{role, content}, ...]}, written with '
        "a loss mask over the assistant's tokens for instruction fine-tuning (train --init-from)",
    )
    d.add_argument(
        "--tokenizer",
        default="bytes",
        help="bytes (default), bpe:N (a byte-level BPE of N tokens "
        "learned from the training documents), cl100k_base (GPT-4's; tiktoken), or a checkpoint, run "
        "or dataset directory: its tokenizer (and chat template)",
    )
    d.add_argument("--out", required=True, help="the dataset directory, e.g. data/NAME")
    d.add_argument(
        "--val-data",
        nargs="+",
        metavar="PATH",
        help="the validation documents (else: --val-fraction of the documents, chosen by a hash of their names)",
    )
    d.add_argument("--val-fraction", type=float, default=0.05, help="share of documents held out (default 0.05)")
    d.add_argument(
        "--on-bad",
        choices=("stop", "skip"),
        default="stop",
        help="an empty, unreadable or non-UTF-8 file: stop (default, before writing anything) or skip it",
    )
    d.add_argument("--shard-tokens", type=POSITIVE_INT, default=100_000_000, help="tokens per shard file")
    d.add_argument("--overwrite", action="store_true", help="replace a dataset already at --out")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(func=run)


def run(args) -> int:
    from moe.data.prepare import prepare

    prepare(
        args.data,
        args.tokenizer,
        args.out,
        format=args.format,
        val_data=args.val_data or (),
        val_fraction=args.val_fraction,
        on_bad=args.on_bad,
        overwrite=args.overwrite,
        shard_tokens=args.shard_tokens,
        progress=None if not args.no_progress else False,
    )
    return EXIT_OK
