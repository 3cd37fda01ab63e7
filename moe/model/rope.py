r"""Rotary position embeddings, and their scaling for a context longer than pretraining.

Legend: d head_dim, i = 0 .. d/2 - 1 a rotary pair, theta the base (rope_theta), L a sequence length,
L0 = original_max_position_embeddings (the pretraining length), s = factor.

    default   inv_freq_i = theta^(-2i/d)
    linear    inv_freq_i / s                     (position interpolation: position p reads as p / s)
    dynamic   theta' = theta * (s L / L0 - (s - 1))^(d / (d - 2)) when L > L0, else theta
              (dynamic NTK: the base grows with the current length L, so frequencies change with L)
    yarn      per pair, between interpolation (inv_freq / s) and extrapolation (inv_freq): pairs that turn
              fewer than beta_slow times over L0 are interpolated, more than beta_fast times kept; a
              linear ramp in between, over pair indices
                  dim(r) = d * ln(L0 / (2 pi r)) / (2 ln theta),  low = floor(dim(beta_fast)),
                  high = ceil(dim(beta_slow)), ramp_i = clamp((i - low) / (high - low), 0, 1)
                  inv_freq_i = (inv_freq_i / s) * ramp_i + inv_freq_i * (1 - ramp_i)
              and cos, sin scaled by attention_factor (default 0.1 ln s + 1; with mscale and
              mscale_all_dim, DeepSeek's ratio of two such terms), so attention logits are scaled
              by its square

The field names and meanings are Hugging Face's (transformers 5 keeps them in `rope_parameters`:
{"rope_theta": theta, "rope_type": ..., "factor": s, "original_max_position_embeddings": L0,
"beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim", "truncate"}); our config
holds rope_theta beside a `rope_scaling` dict of the rest, with transformers' defaults filled in
(moe/config.py rope_scaling_of: L0 defaults to max_seq_len, yarn's s to max_seq_len / L0), and
tests/model/test_long_context.py checks these frequencies against the formulas and against
transformers' own functions. As in transformers, a
dynamic model's cached keys keep the frequencies of the length at which they were written.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from moe.config import ModelConfig


def inv_frequencies(
    head_dim: int, theta: float, scaling: dict | None = None, length: int | None = None
) -> tuple[torch.Tensor, float]:
    """(inv_freq float64 [d/2], attention_factor) per the module doc; `length` matters for dynamic only."""
    base = theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if not scaling:
        return 1.0 / base, 1.0
    kind, s = scaling["rope_type"], float(scaling["factor"])
    if kind == "linear":
        return 1.0 / (s * base), 1.0
    L0 = scaling["original_max_position_embeddings"]  # (the config fills it in for dynamic and yarn)
    if kind == "dynamic":
        if length is None or length <= L0:
            return 1.0 / base, 1.0
        grown = theta * (s * length / L0 - (s - 1)) ** (head_dim / (head_dim - 2))
        return 1.0 / grown ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim), 1.0
    # yarn
    beta_fast, beta_slow = scaling.get("beta_fast") or 32.0, scaling.get("beta_slow") or 1.0

    def pair_at(rotations: float) -> float:  # the pair index that turns `rotations` times over L0
        return head_dim * math.log(L0 / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = pair_at(beta_fast), pair_at(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # a ramp of zero width
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    inv_freq = (1.0 / (s * base)) * ramp + (1.0 / base) * (1 - ramp)
    return inv_freq, yarn_attention_factor(scaling)


def yarn_attention_factor(scaling: dict) -> float:
    """The given attention_factor, else 0.1 ln s + 1, or with DeepSeek's mscale and mscale_all_dim
    the ratio (0.1 mscale ln s + 1) / (0.1 mscale_all_dim ln s + 1); 1 when s <= 1."""
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    s = float(scaling["factor"])

    def m(scale: float) -> float:
        return 1.0 if s <= 1 else 0.1 * scale * math.log(s) + 1.0

    mscale, mscale_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
    return m(mscale) / m(mscale_all) if mscale and mscale_all else m(1.0)


def rope_tables(
    head_dim: int, max_len: int, theta: float, scaling: dict | None = None, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin float32 [max_len, head_dim / 2] for positions 0 .. max_len - 1, with the attention
    factor applied. Angles are computed in float64: exact at long positions."""
    inv_freq, attention_factor = inv_frequencies(head_dim, theta, scaling, length)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
    return (angles.cos() * attention_factor).float(), (angles.sin() * attention_factor).float()


def apply_rope(x_BHTd: torch.Tensor, cos_Td: torch.Tensor, sin_Td: torch.Tensor) -> torch.Tensor:
    """Rotate the (i, i + d/2) pairs of each head by position-dependent angles (the Llama/Mixtral
    "rotate half" layout, so weights convert to and from Hugging Face's). cos, sin broadcast against
    x: [T, d/2], or [B, 1, T, d/2] for per-row positions."""
    x = x_BHTd.float() if x_BHTd.element_size() < 4 else x_BHTd  # rotate half precision in float32
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos_Td.to(x.device, x.dtype), sin_Td.to(x.device, x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).type_as(x_BHTd)


class Rotary(nn.Module):
    """The model's rotary tables: computed once for max_seq_len positions, or, for dynamic scaling,
    again for each length past the original (tables(length))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head_dim, self.theta, self.scaling, self.max_len = (
            cfg.head_dim,
            cfg.rope_theta,
            cfg.rope_scaling,
            cfg.max_seq_len,
        )
        self.register_buffer("cos", None, persistent=False)  # not in checkpoints: derived from the config
        self.register_buffer("sin", None, persistent=False)
        self.reset_tables()

    def reset_tables(self) -> None:
        """(Re)compute the tables, on the device the module is on (after to_empty, for instance)."""
        cos, sin = rope_tables(self.head_dim, self.max_len, self.theta, self.scaling)
        device = self.cos.device if self.cos is not None else None
        self.cos, self.sin = cos.to(device), sin.to(device)

    @property
    def dynamic(self) -> bool:
        return bool(self.scaling) and self.scaling["rope_type"] == "dynamic"

    def tables(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [>= length, d/2] to gather a sequence of `length` positions from."""
        if not self.dynamic or length <= self.scaling["original_max_position_embeddings"]:
            return self.cos, self.sin
        cos, sin = rope_tables(self.head_dim, length, self.theta, self.scaling, length)
        return cos.to(self.cos.device), sin.to(self.sin.device)
