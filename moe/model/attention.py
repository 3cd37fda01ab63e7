r"""Causal self-attention with rotary positions, multi-query / grouped-query K/V, and a KV cache.

Legend: B batch, T new tokens, S cached length, D d_model, H query heads, G K/V heads (1: multi-query),
d head_dim.

    q = x Wq: H heads      k, v = x Wk, x Wv: G heads, each shared by H / G query heads
    MHA (G = H)            GQA (1 < G < H)          MQA (G = 1, GPT-4's reported choice)
    q q q q  k k k k       q q q q  k   k           q q q q  k
    |/|/|/|  v v v v       |/ \|/ \ v   v           \ \|/ /  v

The cache (moe/model/kv_cache.py) holds K and V for every position written so far; decoding one token
reads G heads of cache instead of H, which is the whole memory argument for multi-query attention.
`attend_cached` keeps that promise: it folds the H/G query heads that share a K/V head into the
query length, so each cached K/V head is read once rather than copied H/G times.

The whole module runs inside a `moe/attention` profiler range (bench.profile_model sums by range).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.ranges import profiler_range
from moe.config import ModelConfig
from moe.model.kv_cache import KVCache, PagedKVCache
from moe.model.positions import Positions
from moe.model.quantized import linear
from moe.model.rope import apply_rope


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = linear(cfg, cfg.d_model, cfg.n_heads * cfg.head_dim)  # nn.Linear, or quantized for serving
        self.wk = linear(cfg, cfg.d_model, cfg.n_kv_heads * cfg.head_dim)
        self.wv = linear(cfg, cfg.d_model, cfg.n_kv_heads * cfg.head_dim)
        self.wo = linear(cfg, cfg.n_heads * cfg.head_dim, cfg.d_model)
        self.kv_cache: KVCache | PagedKVCache | None = None

    def forward(self, x_BTD, rope: tuple[torch.Tensor, torch.Tensor], positions: Positions | None = None):
        """Uncached positions (None: 0..T-1): plain causal attention over x (packed: within each
        example). Cached ones: write this chunk's K/V into the cache at their positions and attend
        over what the cache returns (moe/model/positions.py). rope: the (cos, sin) tables at these
        positions, [T, d/2] or [B, T, d/2] per row."""
        with profiler_range("moe/attention"):
            return self._forward(x_BTD, rope, positions or Positions.causal(x_BTD.shape[1], x_BTD.device))

    def _forward(self, x_BTD, rope, positions: Positions):
        B, T, _ = x_BTD.shape
        q = self.wq(x_BTD).view(B, T, -1, self.head_dim).transpose(1, 2)  # [B, H, T, d] (H / tp a rank)
        k = self.wk(x_BTD).view(B, T, -1, self.head_dim).transpose(1, 2)  # [B, G, T, d]
        v = self.wv(x_BTD).view(B, T, -1, self.head_dim).transpose(1, 2)
        cos, sin = rope
        if cos.dim() == 3:  # per-row positions: broadcast over heads
            cos, sin = cos[:, None], sin[:, None]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        gqa = self.n_kv_heads != self.n_heads
        if not positions.cached and positions.mask_B1TS is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        elif not positions.cached:  # packed examples: causal within each, nothing across them
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=positions.mask_B1TS, enable_gqa=gqa)
        else:
            k, v, mask = self.kv_cache.update(k, v, positions)
            y = attend_cached(q, k.to(q.dtype), v.to(q.dtype), mask)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


def attend_cached(q_BHTd, k_BGSd, v_BGSd, mask):
    """softmax(q k^T / sqrt(d) + mask) v, where query head h reads K/V head h // (H/G). The H/G heads
    sharing a K/V head are folded into the query length (q [B, G, (H/G)*T, d], each head's T rows
    with a copy of the mask), so SDPA reads each K/V head once. With a mask, SDPA's enable_gqa
    would otherwise expand K and V to H heads, H/G times the cache's bytes (84x for GPT-4's MQA).
    mask: [T, S], [B, 1, T, S], or None when every query sees all S positions."""
    B, H, T, d = q_BHTd.shape
    G = k_BGSd.shape[1]
    r = H // G
    q_BGRd = q_BHTd.reshape(B, G, r * T, d)  # heads (g r) are consecutive, so this is a view: R = r*T
    if mask is not None and T > 1:  # (one query row broadcasts over the r*T as it is)
        mask = mask.repeat(r, 1) if mask.dim() == 2 else mask.repeat(1, 1, r, 1)  # row i*T + t is mask[t]
    y_BGRd = F.scaled_dot_product_attention(q_BGRd, k_BGSd, v_BGSd, attn_mask=mask)
    return y_BGRd.reshape(B, H, T, d)
