"""The vision path's two building blocks: attention of queries over another sequence, and an MLP.

Legend: N rows (images, or text sequences), Q queries, K keys, Dq / Dk their widths, H query heads,
G K/V heads, d head_dim.

    q = x_q Wq: H heads        k, v = x_kv Wk, x_kv Wv: G heads (each shared by H / G query heads)
    out = softmax(q k^T / sqrt(d) + mask) v Wo

No positions and no causal mask: the encoder's patches carry learned 2-D positions, and who may see
whom (media masking) is the caller's mask; an optional bias (a reading window) is added to the
scores. One class serves the encoder (x_q = x_kv, the patches),
the resampler (latents over patches and latents) and the gated cross-attention (text over visual tokens).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


class Attention(nn.Module):
    def __init__(self, d_q: int, d_kv: int, n_heads: int, n_kv_heads: int, head_dim: int):
        super().__init__()
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads ({n_heads}) must be divisible by n_kv_heads ({n_kv_heads})")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.wq = nn.Linear(d_q, n_heads * head_dim, bias=False)
        self.wk = nn.Linear(d_kv, n_kv_heads * head_dim, bias=False)
        self.wv = nn.Linear(d_kv, n_kv_heads * head_dim, bias=False)
        self.wo = nn.Linear(n_heads * head_dim, d_q, bias=False)

    def kv(self, x_NKD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V [N, G, K, d] of a sequence (the serving engine keeps the visual tokens' once)."""
        k = rearrange(self.wk(x_NKD), "n k (g d) -> n g k d", d=self.head_dim)
        v = rearrange(self.wv(x_NKD), "n k (g d) -> n g k d", d=self.head_dim)
        return k, v

    def forward(self, x_NQD, x_NKD=None, mask_NQK=None, kv=None, bias_NHQK=None):
        """x_q [N, Q, Dq] attends over x_kv [N, K, Dk] (or the precomputed `kv`); mask [N, Q, K] bool:
        True where a query may see a key (None: everywhere). Every query must see some key. bias: added
        to the scores before softmax (a reading window, moe/vision/reading.py), broadcast to [N, H, Q, K]."""
        k, v = kv if kv is not None else self.kv(x_NKD)
        q = rearrange(self.wq(x_NQD), "n q (h d) -> n h q d", d=self.head_dim)
        mask = None if mask_NQK is None else mask_NQK[:, None]
        if bias_NHQK is not None:
            bias_NHQK = bias_NHQK.to(q.dtype)
            mask = bias_NHQK if mask is None else bias_NHQK.masked_fill(~mask, float("-inf"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(rearrange(y, "n h q d -> n q (h d)"))


class MLP(nn.Module):
    """gelu(x W_up) W_down."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))
