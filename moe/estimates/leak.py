"""The leaked GPT-4 figures, and the rows of `python -m moe figures` (moe/estimates/report.py) that
hold what a config implies beside them.

Imports no torch. The leaked figures are the ones quoted from the July 2023 SemiAnalysis report;
where they contradict each other or the stated shape, the table says so instead of fudging the
config to match one of them.
"""

from __future__ import annotations

from moe.config import ModelConfig
from moe.estimates.arithmetic import (
    count_params,
    forward_flops_per_token,
    kv_cache_bytes_per_token,
    matmul_params_per_token,
)
from moe.estimates.units import binary_bytes, si

TRAIN_TOKENS = 13e12  # leak: ~13T tokens
LEAK_TRAIN_BATCH_TOKENS = 60e6  # leak: "batch size 60 million tokens" (by the end of training)
TP, PP = 8, 16  # leak: inference on 8-way tensor x 16-way pipeline parallelism (128 GPUs)
LEAK = {
    "total": 1.8e12,
    "per_expert": 111e9,
    "shared_attention": 55e9,
    "active": 280e9,
    "forward_flops": 560e9,
    "train_flops": 2.15e25,
    "params_per_node": 130e9,
    "gb_per_gpu_fp16": 30e9,  # "less than 30 GB per GPU"
}


def _vs(ours: float, leak: float) -> str:
    diff = ours / leak - 1
    return "agrees (within 5%)" if abs(diff) <= 0.05 else f"config is {diff:+.0%} off the leak"


def figure_rows(cfg: ModelConfig) -> list[tuple[str, str, str, str]]:
    """Rows of (quantity, what the config implies, the leak's figure, comparison or note)."""
    p = count_params(cfg)
    mha_attention = cfg.n_layers * 4 * cfg.d_model * cfg.n_heads * cfg.head_dim
    fwd = forward_flops_per_token(cfg)
    train = 3 * fwd * TRAIN_TOKENS
    per_gpu = p.total / (TP * PP)
    layers_per_stage = cfg.n_layers / PP
    rows = [
        ("total parameters", si(p.total), si(LEAK["total"]), _vs(p.total, LEAK["total"])),
        (
            "parameters per expert (all layers)",
            si(p.per_expert),
            si(LEAK["per_expert"]),
            _vs(p.per_expert, LEAK["per_expert"]),
        ),
        (
            "shared parameters: attention",
            si(p.attention),
            si(LEAK["shared_attention"]),
            f"{_vs(p.attention, LEAK['shared_attention'])}: multi-query attention at d_model {cfg.d_model} "
            f"gives {si(p.attention)}; the leak's ~55B matches full multi-head K/V ({si(mha_attention)}), "
            "so '55B shared' and 'multi-query' contradict each other",
        ),
        (
            "shared parameters: embedding + head + norms + router",
            si(p.embedding + p.head + p.norms + p.router),
            "-",
            f"vocab {cfg.vocab_size:,} (cl100k_base), untied"
            if not cfg.tie_embeddings
            else f"vocab {cfg.vocab_size:,}, tied",
        ),
        (
            "active parameters per token",
            si(p.active),
            si(LEAK["active"]),
            f"{_vs(p.active, LEAK['active'])}: top-{cfg.top_k} experts + shared; the leak's 280B is "
            "2 x 111B + 55B, i.e. it counts multi-head-sized attention",
        ),
        (
            "forward FLOPs per token (matmuls, context 0)",
            si(fwd, "FLOP"),
            si(LEAK["forward_flops"], "FLOP"),
            f"{_vs(fwd, LEAK['forward_flops'])}: 2 x {si(matmul_params_per_token(cfg))} matmul parameters",
        ),
        (
            "  + attention scores at 8k context",
            si(forward_flops_per_token(cfg, 8192) - fwd, "FLOP"),
            "-",
            "4 x layers x heads x head_dim x context",
        ),
        (
            "training FLOPs for 13T tokens (6 N D)",
            f"{train:.3g}",
            f"{LEAK['train_flops']:.3g}",
            f"{_vs(train, LEAK['train_flops'])}; 2.15e25 / (6 x 13T) implies "
            f"{si(LEAK['train_flops'] / 6 / TRAIN_TOKENS)} active",
        ),
        (
            f"parameters per 8-GPU node ({TP} TP x {PP} PP)",
            si(p.total / PP),
            si(LEAK["params_per_node"]),
            f"{_vs(p.total / PP, LEAK['params_per_node'])}: {si(p.total)} / {PP} stages; 130B x {PP} = "
            f"{si(LEAK['params_per_node'] * PP)} would exceed the leak's own total",
        ),
        (
            f"layers per pipeline stage ({PP} stages)",
            f"{layers_per_stage:g}",
            "-",
            "not a whole number: the stages cannot be even (the leak also says 15-way pipelining for "
            "training, which divides 120 into 8)"
            if cfg.n_layers % PP
            else "even split",
        ),
        ("parameters per GPU", si(per_gpu), "-", f"total / {TP * PP} GPUs"),
        (
            "  bytes per GPU at fp16",
            binary_bytes(2 * per_gpu),
            "< 30 GB",
            f"{2 * per_gpu / 1e9:.1f} GB: {'agrees' if 2 * per_gpu < LEAK['gb_per_gpu_fp16'] else 'exceeds 30 GB'}"
            f"; the leak's 130B/node would be {2 * LEAK['params_per_node'] / TP / 1e9:.1f} GB/GPU",
        ),
        ("  bytes per GPU at int8", binary_bytes(per_gpu), "-", "weights only, before KV cache and activations"),
    ]
    for name, heads in (("multi-query", cfg.n_kv_heads), ("multi-head", cfg.n_heads)):
        per_token = kv_cache_bytes_per_token(cfg, 2, heads)
        rows.append(
            (
                f"KV cache per token, {name} ({heads} K/V heads, fp16)",
                binary_bytes(per_token),
                "-",
                f"8k context: {binary_bytes(per_token * 8192)}, 32k context: {binary_bytes(per_token * 32768)} "
                "per sequence",
            )
        )
    return rows


def is_gpt4_shape(cfg: ModelConfig) -> bool:
    return (cfg.n_layers, cfg.d_model, cfg.n_experts, cfg.d_ff) == (120, 10752, 16, 43008)
