r"""Causal self-attention with rotary positions, multi-query / grouped-query K/V, and a KV cache.

Legend: B batch, T new tokens, S cached length, D d_model, H query heads, G K/V heads (1: multi-query),
d head_dim.

    q = x Wq: H heads      k, v = x Wk, x Wv: G heads, each shared by H / G query heads
    MHA (G = H)            GQA (1 < G < H)          MQA (G = 1, GPT-4's reported choice)
    q q q q  k k k k       q q q q  k   k           q q q q  k
    |/|/|/|  v v v v       |/ \|/ \ v   v           \ \|/ /  v

The cache holds K and V for every position written so far; decoding one token reads G heads of
cache instead of H, which is the whole memory argument for multi-query attention.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from moe.config import ModelConfig


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [max_len, head_dim / 2] for rotary embeddings."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()  # angles in float64: exact at long positions


def apply_rope(x_BHTd: torch.Tensor, cos_Td: torch.Tensor, sin_Td: torch.Tensor) -> torch.Tensor:
    """Rotate the (i, i + d/2) pairs of each head by position-dependent angles (the Llama/Mixtral
    "rotate half" layout, so weights convert to and from Hugging Face's)."""
    x = x_BHTd.float() if x_BHTd.element_size() < 4 else x_BHTd  # rotate half precision in float32
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos_Td.to(x.device, x.dtype), sin_Td.to(x.device, x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).type_as(x_BHTd)


class KVCache(nn.Module):
    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype, device=None):
        super().__init__()
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos_T: torch.Tensor, k_BGTd: torch.Tensor, v_BGTd: torch.Tensor, kv_len: int):
        """Write K/V of the new tokens at their positions; return the first kv_len positions."""
        self.k.index_copy_(2, input_pos_T, k_BGTd.to(self.k.dtype))
        self.v.index_copy_(2, input_pos_T, v_BGTd.to(self.v.dtype))
        return self.k[:, :, :kv_len], self.v[:, :, :kv_len]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(self, x_BTD, cos_Td, sin_Td, input_pos_T=None, kv_len: int | None = None):
        """Without input_pos: plain causal attention over x. With input_pos (and a cache set up):
        write this chunk's K/V at those positions and attend over the cache up to kv_len."""
        q = rearrange(self.wq(x_BTD), "b t (h d) -> b h t d", d=self.head_dim)
        k = rearrange(self.wk(x_BTD), "b t (g d) -> b g t d", d=self.head_dim)
        v = rearrange(self.wv(x_BTD), "b t (g d) -> b g t d", d=self.head_dim)
        q, k = apply_rope(q, cos_Td, sin_Td), apply_rope(k, cos_Td, sin_Td)
        gqa = self.n_kv_heads != self.n_heads
        if input_pos_T is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            if self.kv_cache is None:
                raise RuntimeError("input_pos given but no KV cache: call model.setup_caches() first")
            k, v = self.kv_cache.update(input_pos_T, k, v, kv_len)
            mask_TS = torch.arange(kv_len, device=q.device) <= input_pos_T[:, None]  # causal over the cache
            y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask_TS, enable_gqa=gqa)
        return self.wo(rearrange(y, "b h t d -> b t (h d)"))
