"""convert: Hugging Face MoE checkpoints to ours and back (moe/training/hf_convert.py)."""

from __future__ import annotations

from moe.cli.common import EXIT_OK


def add_parser(sub) -> None:
    from moe.hf_families import ARCHITECTURES

    c = sub.add_parser(
        "convert", help="Hugging Face MoE checkpoints (Mixtral, Qwen3/Qwen2-MoE, OLMoE, gpt-oss) to ours and back"
    )
    way = c.add_mutually_exclusive_group(required=True)
    way.add_argument(
        "--from-hf",
        metavar="DIR",
        help=f"a directory of {', '.join(ARCHITECTURES.values())}: config.json, safetensors "
        "(sharded or not) and tokenizer.json; --out is then a run directory of ours",
    )
    way.add_argument(
        "--to-hf",
        metavar="CHECKPOINT",
        help="a run or step directory of ours; --out is then the Hugging Face directory",
    )
    c.add_argument(
        "--family",
        choices=sorted(ARCHITECTURES),
        help="--to-hf: the architecture to write (default: the one the config's features name: "
        "clamped SwiGLU gpt_oss, a shared expert qwen2_moe, per-head q/k norms qwen3_moe, "
        "projection norms olmoe, else mixtral)",
    )
    c.add_argument("--out", required=True, help="where to write")
    c.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    c.set_defaults(func=run)


def run(args) -> int:
    from moe.training import hf_convert

    if args.from_hf:
        if args.family:
            raise ValueError("--family is for --to-hf: --from-hf reads the family from config.json")
        hf_convert.from_hf(args.from_hf, args.out, overwrite=args.overwrite)
    else:
        hf_convert.to_hf(args.to_hf, args.out, family=args.family, overwrite=args.overwrite)
    return EXIT_OK
