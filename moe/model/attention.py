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

The open MoE families vary it (ModelConfig's attention fields; the defaults are the plain form):

    q, k, v = x Wq (+ bq), x Wk (+ bk), x Wv (+ bv)      qkv_bias (Qwen2-MoE, gpt-oss)
    q, k = RMSNorm(q), RMSNorm(k)                        qk_norm "projection": over all H*d, G*d (OLMoE)
    q, k, v = clamp(., -c, c)                            qkv_clip c (OLMoE's clip_qkv)
    q, k = RMSNorm per head, over d                      qk_norm "head" (Qwen3-MoE)
    q, k = rope(q), rope(k)
    scores s_ts = q_t . k_s / sqrt(d), visible when s <= t, and t - s < W in a sliding layer (gpt-oss)
    y_t = sum_s softmax_s(s_ts) v_s                      attention_sinks: softmax over [s_t., sink_h], the
                                                         sink's share dropped (a learned logit per head)
    out = y Wo (+ bo)                                    out_bias (gpt-oss)

Sinks are not in SDPA, so attention with sinks runs `attend_with_sinks`: the same masks, scores in
float32, explicit softmax.

The whole module runs inside a `moe/attention` profiler range (bench.profile_model sums by range).
"""

from __future__ import annotations

import math

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
    def __init__(self, cfg: ModelConfig, window: int = 0):
        """window > 0: a sliding layer of that many positions (cfg.window(layer))."""
        super().__init__()
        H, G, d, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_model
        self.n_heads, self.n_kv_heads, self.head_dim, self.window = H, G, d, window
        self.wq = linear(cfg, D, H * d, cfg.qkv_bias)  # nn.Linear, or quantized for serving
        self.wk = linear(cfg, D, G * d, cfg.qkv_bias)
        self.wv = linear(cfg, D, G * d, cfg.qkv_bias)
        self.wo = linear(cfg, H * d, D, cfg.out_bias)
        self.qk_norm, self.qkv_clip = cfg.qk_norm, cfg.qkv_clip
        q_width, k_width = (d, d) if cfg.qk_norm == "head" else (H * d, G * d)
        self.q_norm = nn.RMSNorm(q_width, eps=cfg.norm_eps) if cfg.qk_norm != "none" else None
        self.k_norm = nn.RMSNorm(k_width, eps=cfg.norm_eps) if cfg.qk_norm != "none" else None
        self.sinks = nn.Parameter(torch.empty(H)) if cfg.attention_sinks else None
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
        q, k, v = self.wq(x_BTD), self.wk(x_BTD), self.wv(x_BTD)
        if self.qk_norm == "projection":
            q, k = self.q_norm(q), self.k_norm(k)
        if self.qkv_clip:
            q, k, v = (t.clamp(-self.qkv_clip, self.qkv_clip) for t in (q, k, v))
        q = q.view(B, T, -1, self.head_dim)  # [B, T, H, d] (H / tp a rank)
        k = k.view(B, T, -1, self.head_dim)  # [B, T, G, d]
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.view(B, T, -1, self.head_dim).transpose(1, 2)
        cos, sin = rope
        if cos.dim() == 3:  # per-row positions: broadcast over heads
            cos, sin = cos[:, None], sin[:, None]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        gqa = self.n_kv_heads != self.n_heads
        plain = self.sinks is None and not self.window  # SDPA's own causal mask, or the mask as it is
        if not positions.cached and positions.mask_B1TS is None and plain:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        elif not positions.cached and plain:  # packed examples: causal within each, nothing across them
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=positions.mask_B1TS, enable_gqa=gqa)
        else:
            if positions.cached:
                k, v, mask = self.kv_cache.update(k, v, positions)
                k, v = k.to(q.dtype), v.to(q.dtype)
            else:
                mask = positions.mask_B1TS if positions.mask_B1TS is not None else causal_mask(T, x_BTD.device)
            if self.window:
                mask = within_window(mask, positions, k.shape[2], self.window)
            y = attend_cached(q, k, v, mask) if self.sinks is None else attend_with_sinks(q, k, v, mask, self.sinks)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


def causal_mask(T: int, device) -> torch.Tensor:
    """bool [T, T]: query t sees keys s <= t."""
    t = torch.arange(T, device=device)
    return t[None, :] <= t[:, None]


def within_window(mask, positions: Positions, S: int, window: int) -> torch.Tensor:
    """`mask` ([T, S], [B, 1, T, S] or None: all visible) narrowed to the keys a sliding layer sees:
    key s (a position: caches return K/V in position order) with s > t - window for a query at t."""
    if positions.cached:
        pos = positions.pos.clamp(min=0)  # [T], or [B, T] paged (padding at 0)
    else:  # uncached rows hold their tokens in order (packed: each example's positions are consecutive)
        pos = torch.arange(positions.pos.shape[-1], device=positions.pos.device)
    near = torch.arange(S, device=pos.device) > pos[..., None] - window  # [T, S] or [B, T, S]
    if near.dim() == 3:
        near = near[:, None]
    return near if mask is None else mask & near


def attend_with_sinks(q_BHTd, k_BGSd, v_BGSd, mask, sinks_H):
    """attend_cached with a sink: head h's softmax also holds the logit sinks[h], whose share of the
    probability is dropped (gpt-oss). Scores in float32; mask as attend_cached's."""
    B, H, T, d = q_BHTd.shape
    G = k_BGSd.shape[1]
    q = q_BHTd.float().reshape(B, G, H // G, T, d)
    scores_BGrTS = q @ k_BGSd.float()[:, :, None].transpose(-1, -2) / math.sqrt(d)
    if mask is not None:
        mask = mask if mask.dim() == 2 else mask[:, :, None]  # [B, 1, T, S] -> [B, 1, 1, T, S]
        scores_BGrTS = scores_BGrTS.masked_fill(~mask, float("-inf"))
    sink = sinks_H.float().view(1, G, H // G, 1, 1).expand(B, G, H // G, T, 1)
    p_BGrTS = torch.softmax(torch.cat([scores_BGrTS, sink], dim=-1), dim=-1)[..., :-1]
    y = p_BGrTS @ v_BGSd.float()[:, :, None]
    return y.reshape(B, H, T, d).to(q_BHTd.dtype)


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
