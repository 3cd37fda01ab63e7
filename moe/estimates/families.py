"""A config's size beside the gpt4 preset's: what `figures` prints for every other config, e.g. the
open MoE families' presets (configs/gpt-oss-120b.toml, gpt-oss-20b, qwen3-30b-a3b, olmoe-1b-7b).

Published "active parameters" differ in what they count: OpenAI's gpt-oss figures leave the input
embedding out (a lookup, no matmul), Qwen's and OLMoE's keep it in; both are shown.
"""

from __future__ import annotations

from moe.config import ModelConfig
from moe.estimates.arithmetic import count_params, kv_cache_bytes, kv_cache_bytes_per_token
from moe.estimates.units import binary_bytes, si

GPU_BYTES = 80 * 2**30  # an 80 GB H100's memory, for the GPUs the bf16 weights fill


def beside_rows(cfg: ModelConfig, gpt4: ModelConfig) -> list[tuple[str, str, str, str]]:
    """(quantity, this config, the gpt4 preset, how) rows."""

    def both(f):
        return f(cfg), f(gpt4)

    rows = []
    for label, f, how in (
        ("total parameters", lambda c: si(count_params(c).total), "every weight, bias and norm scale"),
        ("active parameters per token", lambda c: si(count_params(c).active), "embedding and head included"),
        (
            "  without the input embedding",
            lambda c: si(count_params(c).active - count_params(c).embedding),
            "as OpenAI counts gpt-oss's",
        ),
        ("weights at bf16", lambda c: binary_bytes(2 * count_params(c).total), "2 bytes a parameter"),
        (
            "  80 GB GPUs they fill",
            lambda c: str(-(-2 * count_params(c).total // GPU_BYTES)),
            "weights only, before K/V and activations",
        ),
        ("K/V per token, bf16", lambda c: binary_bytes(kv_cache_bytes_per_token(c)), "2 x layers x K/V heads x d"),
        (
            "K/V of one max_seq_len sequence",
            lambda c: binary_bytes(kv_cache_bytes(c, c.max_seq_len)),
            "sliding layers hold their window",
        ),
    ):
        rows.append((label, *both(f), how))
    return rows
