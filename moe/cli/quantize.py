"""quantize: a serving copy of a checkpoint with weight-only int8 / fp8 / int4 experts."""

from __future__ import annotations

from moe.cli.common import EXIT_OK


def add_parser(sub) -> None:
    q = sub.add_parser("quantize", help="a serving copy of a checkpoint with weight-only int8 / fp8 / int4 experts")
    q.add_argument("--checkpoint", required=True, help="run or step directory (unquantized)")
    q.add_argument(
        "--dtype",
        required=True,
        choices=("int8", "fp8", "int4"),
        help="int8 or fp8 e4m3 per output channel, or int4 in groups of 128 along the input (kernels/quantized.py)",
    )
    q.add_argument(
        "--dense",
        action="store_true",
        help="also the attention projections and the output head (same scheme; PyTorch dequantize-and-matmul)",
    )
    q.add_argument("--out", required=True, help="run directory for the quantized checkpoint")
    q.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    q.set_defaults(func=run)


def run(args) -> int:
    from moe.model.quantized import expert_bytes, weight_bytes
    from moe.training.checkpoint import load_model, quantize_checkpoint

    step_dir, before = quantize_checkpoint(
        args.checkpoint, args.out, args.dtype, dense=args.dense, overwrite=args.overwrite
    )
    quantized = load_model(step_dir)
    after = expert_bytes(quantized)
    print(
        f"experts quantized to {args.dtype}: {before / 2**20:.2f} MiB -> {after / 2**20:.2f} MiB (scales "
        f"included, {before / after:.2f}x smaller); all weights {weight_bytes(quantized) / 2**20:.2f} MiB "
        f"-> {step_dir}"
    )
    return EXIT_OK
