"""`python -m moe figures`: what a config implies, beside the leaked GPT-4 figures; what a parallel
layout puts on one GPU; what a 32k context costs against 8k. Imports no torch."""

from __future__ import annotations

from moe.config import ModelConfig, load_config
from moe.estimates.cluster import context_rows, quantized_rows
from moe.estimates.families import beside_rows
from moe.estimates.layout_memory import layout_rows
from moe.estimates.leak import LEAK_TRAIN_BATCH_TOKENS, figure_rows, is_gpt4_shape
from moe.estimates.units import format_table


def print_figures(cfg: ModelConfig, layout=None, batch_tokens: float | None = None, seq_len: int | None = None) -> None:
    """The config's figures; with a moe.layout.Layout, also what one GPU of that layout holds."""
    print(
        f"config {cfg.name!r}: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads of "
        f"{cfg.head_dim}, {cfg.n_kv_heads} K/V head(s), {cfg.n_experts} experts of d_ff {cfg.d_ff} "
        f"({cfg.activation}), top-{cfg.top_k}, vocab {cfg.vocab_size:,}"
    )
    rows = figure_rows(cfg)
    if is_gpt4_shape(cfg):
        print(format_table(rows, ("quantity", "this config", "leak", "comparison / note")))
        print(
            "\nlong context at inference, tp 8 x pp 16 (the leak: pretrained at 8k, 32k fine-tuned from it, "
            "'32k cannot run on 40GB A100s')"
        )
        print(format_table(context_rows(cfg), ("quantity", "8k context", "32k context", "how")))
        print(
            "\nweight-only quantized experts at inference, tp 8 x pp 16 (python -m moe quantize; int8 and fp8 "
            "store 1 byte per weight, int4 half a byte, plus their scales)"
        )
        print(format_table(quantized_rows(cfg), ("quantity", "bf16", "int8 / fp8", "int4", "how")))
        _print_recipe(cfg)
    else:  # the leak's figures describe the gpt4 shape only
        print(format_table([r[:2] for r in rows], ("quantity", "this config")))
        print("(the leaked GPT-4 figures are compared for the gpt4 preset only)\n\nbeside the gpt4 preset")
        print(format_table(beside_rows(cfg, load_config("gpt4")), ("quantity", cfg.name, "gpt4", "how")))
    if cfg.vision is not None:
        from moe.estimates.vision import vision_rows

        print(f"\nthe vision path (Flamingo-style, moe/vision/), beside the {cfg.name} language model")
        print(format_table(vision_rows(cfg), ("quantity", "this config", "how")))
    if layout is not None:
        batch_tokens = LEAK_TRAIN_BATCH_TOKENS if batch_tokens is None else batch_tokens
        seq_len = cfg.max_seq_len if seq_len is None else seq_len
        if not (batch_tokens > 0 and seq_len > 0):
            raise ValueError(f"batch_tokens and seq_len must be > 0, got {batch_tokens} and {seq_len}")
        print(
            f"\nper GPU in layout {layout.describe()} ({layout.schedule} schedule), "
            f"{batch_tokens:,.0f} tokens per step in sequences of {seq_len}"
        )
        print(format_table(layout_rows(cfg, layout, batch_tokens, seq_len), ("quantity", "per GPU", "how")))


def _print_recipe(cfg: ModelConfig) -> None:
    from moe.estimates.recipe import GPU_MTBF_HOURS, LEAK_GPUS, RAMP_TOKENS, checkpoint_rows, leak_ramp, ramp_rows

    ramp = leak_ramp()
    print(
        f"\nthe batch-size ramp to the leak's 60M tokens a step over its 13T tokens (train --batch-size-ramp "
        f"{ramp.ramp_start_batch},{ramp.ramp_increment},{RAMP_TOKENS:.0f}; start, step and span are our choice)"
    )
    print(format_table(ramp_rows(cfg, ramp), ("batch", "tokens a step", "per expert a step", "steps", "tokens")))
    mtbf_h = GPU_MTBF_HOURS / LEAK_GPUS
    print(
        f"\ncheckpoint interval on {LEAK_GPUS:,} GPUs failing once per {GPU_MTBF_HOURS:,.0f} GPU-hours each "
        f"(Llama 3's rate): the cluster fails every {mtbf_h * 60:.0f} min; Young/Daly's interval, 10 min restarts"
    )
    header = ("checkpoint cost", "best interval", "wall time lost", "lost at 4x the interval")
    print(format_table(checkpoint_rows(), header))
