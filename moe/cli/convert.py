"""convert: Hugging Face Mixtral checkpoints to ours and back (moe/training/hf_mixtral.py)."""

from __future__ import annotations

from moe.cli.common import EXIT_OK


def add_parser(sub) -> None:
    c = sub.add_parser("convert", help="Hugging Face Mixtral checkpoints to ours (--from-hf) and back (--to-hf)")
    way = c.add_mutually_exclusive_group(required=True)
    way.add_argument(
        "--from-hf",
        metavar="DIR",
        help="a MixtralForCausalLM directory: config.json, safetensors "
        "(sharded or not) and tokenizer.json; --out is then a run directory of ours",
    )
    way.add_argument(
        "--to-hf",
        metavar="CHECKPOINT",
        help="a run or step directory of ours (SwiGLU, untied, dropless); --out is then the Hugging Face directory",
    )
    c.add_argument("--out", required=True, help="where to write")
    c.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    c.set_defaults(func=run)


def run(args) -> int:
    from moe.training import hf_mixtral

    if args.from_hf:
        hf_mixtral.from_hf(args.from_hf, args.out, overwrite=args.overwrite)
    else:
        hf_mixtral.to_hf(args.to_hf, args.out, overwrite=args.overwrite)
    return EXIT_OK
