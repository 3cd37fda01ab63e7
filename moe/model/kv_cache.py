r"""KV caches: one contiguous cache for a batch that moves in lockstep, and a paged one for serving.

Legend: B rows, T new tokens per row, S cached positions read, G K/V heads, d head_dim,
N pages in the pool, P pages per row this step, page page_size positions.

Both caches do the same thing in `update(k, v, positions)` (positions: moe/model/positions.py):
write the new tokens' K/V at their positions, and return all K/V a query may read plus the mask
saying which it may (causal: position s is visible to a query at position t when s <= t).

KVCache [B, G, max_len, d]: every row writes at the same positions pos [T] (prefill arange(T),
then [n] per decode step). `generate` uses it, one sequence at a time.

PagedKVCache [N, G, page, d]: a pool of fixed-size pages. A sequence owns a list of pages (its
block table): position p lives at page table[p // page], slot p % page. Rows of one step are
different sequences at different positions, with different numbers of new tokens, padded to T
with position -1 (nothing written, output ignored). Pages are handed out by the serving engine
(moe/serving/engine.py) as a sequence grows, so the memory budget is counted in pages and a short
request holds few.

    pool   [page 0][page 1][page 2][page 3][page 4] ...
    seq a  table [3, 0]     positions 0-15 in page 3, 16-31 in page 0
    seq b  table [1, 4, 2]
"""

from __future__ import annotations

import torch
import torch.nn as nn

from moe.model.positions import Positions


class KVCache(nn.Module):
    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype, device=None):
        super().__init__()
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, k_BGTd, v_BGTd, positions: Positions):
        """Write the new tokens at positions.pos [T]; return K, V [B, G, kv_len, d] and the mask
        [T, kv_len], or None for one token (decode: it is at kv_len - 1 and sees everything, and
        without a mask SDPA may use its flash kernel)."""
        pos_T, kv_len = positions.pos, positions.length
        self.k.index_copy_(2, pos_T, k_BGTd.to(self.k.dtype))
        self.v.index_copy_(2, pos_T, v_BGTd.to(self.v.dtype))
        if pos_T.numel() == 1:
            return self.k[:, :, :kv_len], self.v[:, :, :kv_len], None
        mask_TS = torch.arange(kv_len, device=pos_T.device) <= pos_T[:, None]
        return self.k[:, :, :kv_len], self.v[:, :, :kv_len], mask_TS


class PagedKVCache(nn.Module):
    def __init__(self, n_pages: int, page_size: int, n_kv_heads: int, head_dim: int, dtype, device=None):
        super().__init__()
        self.page_size = page_size
        shape = (n_pages, n_kv_heads, page_size, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, k_BGTd, v_BGTd, positions: Positions):
        """Write the real tokens into their pages (positions.page_N, slot_N); return each row's K, V
        [B, G, P * page, d] read through its block table, and the mask [B, 1, T, P * page]."""
        B, G, T, d = k_BGTd.shape
        valid_BT, page_N, slot_N = positions.valid_BT, positions.page_N, positions.slot_N
        for cache, new_BGTd in ((self.k, k_BGTd), (self.v, v_BGTd)):
            new_BTGd = new_BGTd.transpose(1, 2)
            new_NGd = new_BTGd.reshape(B * T, G, d) if valid_BT is None else new_BTGd[valid_BT]
            cache[page_N, :, slot_N] = new_NGd.to(cache.dtype)
        return self._read(self.k, positions.pages_BP), self._read(self.v, positions.pages_BP), positions.mask_B1TS

    def _read(self, cache_NGpd: torch.Tensor, pages_BP: torch.Tensor) -> torch.Tensor:
        """[B, G, P * page, d]: each row's pages in block-table order (index_select: on the CPU 5x
        faster than indexing with the [B, P] table itself)."""
        (B, P), (_, G, page, d) = pages_BP.shape, cache_NGpd.shape
        pages_BPGpd = cache_NGpd.index_select(0, pages_BP.reshape(-1)).view(B, P, G, page, d)
        return pages_BPGpd.transpose(1, 2).reshape(B, G, P * page, d)
