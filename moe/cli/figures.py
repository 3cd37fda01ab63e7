"""figures: parameters, FLOPs and memory a config implies (and, with --layout, per GPU)."""

from __future__ import annotations

from moe.cli.common import EXIT_OK, POSITIVE_FLOAT, POSITIVE_INT, add_set, overrides


def add_parser(sub) -> None:
    f = sub.add_parser("figures", help="parameters, FLOPs and memory a config implies, beside the leaked GPT-4 figures")
    f.add_argument("--config", default="gpt4", help="preset name (configs/NAME.toml) or a .toml path")
    add_set(f)
    f.add_argument(
        "--layout",
        help="add the per-GPU view of a parallel layout, e.g. tp=8,pp=15,dp=208,microbatches=32 "
        "(keys: dp tp ep pp microbatches schedule first_stage_layers sharding)",
    )
    f.add_argument(
        "--batch-tokens", type=POSITIVE_FLOAT, help="tokens per training step for --layout (default 60e6, the leak's)"
    )
    f.add_argument(
        "--seq-len", type=POSITIVE_INT, help="sequence length for --layout (default: the config's max_seq_len)"
    )
    f.add_argument(
        "--simulate",
        action="store_true",
        help="also build one rank of each pipeline stage of --layout "
        "on the meta device in a fake process group and count its sharded tensors (needs torch)",
    )
    f.set_defaults(func=run)


def run(args) -> int:
    from moe.config import load_config
    from moe.estimates.report import print_figures
    from moe.layout import parse_layout

    try:
        layout = parse_layout(args.layout) if args.layout is not None else None
    except ValueError as e:
        raise ValueError(f"--layout {args.layout!r}: {e}") from None
    cfg = load_config(args.config, **overrides(args.set))
    if args.simulate and layout is None:
        raise ValueError("--simulate needs --layout: it builds one rank of each pipeline stage of that layout")
    if args.simulate:
        layout.check(cfg)  # before the figures, so a layout that cannot be built says so at once
    print_figures(cfg, layout, args.batch_tokens, args.seq_len)
    if args.simulate:
        _print_simulation(cfg, layout)
    return EXIT_OK


def _print_simulation(cfg, layout) -> None:
    from moe.estimates.units import format_table
    from moe.parallel.simulate import simulation_rows

    if layout.dp == 1 and cfg.vision is None:  # a serving layout: what the engine's ranks would hold
        from moe.parallel.simulate import serving_rows

        rows, seconds = serving_rows(cfg, layout)
        print(f"\nsimulated serving ranks ({seconds:.1f} s): bf16 weights and K/V pool as moe/parallel/serving.py")
        print("splits them; sequences whose K/V fits in 90% of a GPU (the arithmetic's pp x b in brackets)")
        print(
            format_table(
                rows,
                ("stage", "layers", "weights", "vs arith", "params per stage", "K/V per position")
                + tuple(f"{g} {c // 1024}k" for g in ("A100-40", "H100-80") for c in (8192, 32768)),
            )
        )
    rows, seconds = simulation_rows(cfg, layout)
    print(
        f"\nsimulated: the first rank of each pipeline stage, built on the meta device in a fake world of "
        f"{layout.world_size:,} ranks ({seconds:.1f} s); elements and bytes read off its sharded tensors, "
        "against the arithmetic above"
    )
    print(
        format_table(
            rows,
            (
                "stage",
                "layers",
                "params",
                "vs arith",
                "bf16 (inference)",
                "weights kept = gradients",
                "vs arith",
                "AdamW state",
                "vs arith",
                "training state, peak",
                "vs arith",
            ),
        )
    )
