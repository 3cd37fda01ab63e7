r"""Where the tokens of one forward pass sit in their sequences, and which K/V cache they use.

Legend: B rows, T tokens per row, P pages per row, d head_dim.

One small type for the four ways a forward pass places its tokens; the model checks it once, in
`check`, and every layer reads the same object:

    Positions.causal(T)        no cache: positions 0..T-1 of every row, plain causal attention
                               (training, and scoring whole sequences)
    Positions.packed(doc_BT)   no cache: each row holds whole examples one after another (packed
                               instruction data, moe/data/instruct.py); doc[b, t] numbers token t's
                               example within row b, positions restart at 0 with every example, and
                               a token attends only to the earlier tokens of its own example
    Positions.at(pos_T)        a contiguous KVCache (moe/model/kv_cache.py): every row writes its
                               K/V at positions pos_T and reads positions 0..length-1
                               (prefill: arange(n); decode: [n])
    Positions.paged(pos_BT, pages_BP, page_size)
                               a PagedKVCache of page_size positions a page: row b is its own
                               sequence, token t at position pos[b, t] (-1: padding, neither cached
                               nor routed), its pages listed in pages[b] (the first P entries of its
                               block table)

A paged batch is placed once for all layers: which tokens are real, the page and slot each writes,
and the mask of what each reads are computed here, not again in every layer's cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Positions:
    pos: torch.Tensor  # int64 [T] (shared by every row), or [B, T] per row when paged
    length: int  # max(pos) + 1: the positions attention spans (a contiguous cache reads 0 .. length - 1)
    cached: bool = False  # write and read a KV cache
    pages_BP: torch.Tensor | None = None  # paged cache: each row's pages
    page_size: int = 0  # ... of this many positions
    valid_BT: torch.Tensor | None = None  # bool: the real tokens of a padded batch; None when all are
    page_N: torch.Tensor | None = None  # each real token's page (N real tokens, in row-major order) ...
    slot_N: torch.Tensor | None = None  # ... and slot in it
    mask_B1TS: torch.Tensor | None = None  # bool: which of the P * page_size positions (paged), or of
    # the row's T tokens (packed), each token reads

    @classmethod
    def causal(cls, T: int, device=None) -> Positions:
        return cls(torch.arange(T, device=device), T)

    @classmethod
    def packed(cls, doc_BT: torch.Tensor) -> Positions:
        if doc_BT.dim() != 2 or not doc_BT.numel():
            raise ValueError(f"packed positions need document ids [B, T], got shape {tuple(doc_BT.shape)}")
        T = doc_BT.shape[1]
        t_T = torch.arange(T, device=doc_BT.device)
        starts_BT = torch.ones_like(doc_BT, dtype=torch.bool)  # where an example begins
        starts_BT[:, 1:] = doc_BT[:, 1:] != doc_BT[:, :-1]
        first_BT = torch.cummax(torch.where(starts_BT, t_T, 0), dim=1).values  # its first token's index
        same_BTT = doc_BT[:, :, None] == doc_BT[:, None, :]
        return cls(t_T - first_BT, T, mask_B1TS=(same_BTT & (t_T[:, None] >= t_T))[:, None])

    @classmethod
    def at(cls, pos_T: torch.Tensor) -> Positions:
        if pos_T.dim() != 1 or not pos_T.numel():
            raise ValueError(f"cache positions must be a non-empty 1-D tensor [T], got shape {tuple(pos_T.shape)}")
        return cls(pos_T, int(pos_T.max()) + 1, cached=True)  # the one device sync of a cached step

    @classmethod
    def paged(cls, pos_BT: torch.Tensor, pages_BP: torch.Tensor, page_size: int) -> Positions:
        if pos_BT.dim() != 2 or pages_BP.dim() != 2 or pages_BP.shape[0] != pos_BT.shape[0] or not pos_BT.numel():
            raise ValueError(
                f"paged positions need pos [B, T] and pages [B, P], B and T >= 1, got {tuple(pos_BT.shape)} "
                f"and {tuple(pages_BP.shape)}"
            )
        lo, hi = (int(v) for v in pos_BT.aminmax())  # the one device sync of a paged step
        valid_BT = None if lo >= 0 else pos_BT >= 0
        row_N = torch.arange(pos_BT.shape[0], device=pos_BT.device).repeat_interleave(pos_BT.shape[1])
        pos_N = pos_BT.reshape(-1)
        if valid_BT is not None:
            row_N, pos_N = row_N[valid_BT.reshape(-1)], pos_N[valid_BT.reshape(-1)]
        if hi >= pages_BP.shape[1] * page_size:
            raise ValueError(f"position {hi} is past the {pages_BP.shape[1]} pages of {page_size} given each row")
        S = torch.arange(pages_BP.shape[1] * page_size, device=pos_BT.device)
        return cls(
            pos_BT,
            hi + 1,
            cached=True,
            pages_BP=pages_BP,
            page_size=page_size,
            valid_BT=valid_BT,
            page_N=pages_BP[row_N, pos_N // page_size],
            slot_N=pos_N % page_size,
            mask_B1TS=(S <= pos_BT.clamp(min=0)[..., None])[:, None],  # padding looks at position 0
        )

    @property
    def paged_rows(self) -> bool:
        return self.pages_BP is not None

    @property
    def per_row(self) -> bool:
        """Each row at its own positions (paged or packed), pos [B, T]."""
        return self.pos.dim() == 2

    def check(self, B: int, T: int, max_seq_len: int, cache=None) -> None:
        """Raise a ValueError naming what does not fit: a batch of B rows of T tokens, a model of
        max_seq_len positions, and `cache` (the first layer's, or None)."""
        want = (B, T) if self.per_row else (T,)
        if tuple(self.pos.shape) != want:
            raise ValueError(
                f"positions must have shape {list(want)} for a batch of {B} x {T} tokens, got {list(self.pos.shape)}"
            )
        if self.length > max_seq_len:
            raise ValueError(
                f"position {self.length - 1} is past max_seq_len {max_seq_len}"
                if self.cached
                else f"sequence of {T} tokens exceeds max_seq_len {max_seq_len}"
            )
        if not self.cached:
            return
        if cache is None:
            raise ValueError(
                "cache positions given but the model has no KV cache: call setup_caches() "
                "(contiguous) or setup_paged_caches() (paged) first"
            )
        if self.paged_rows != hasattr(cache, "page_size"):
            raise ValueError(
                f"{'paged' if self.paged_rows else 'contiguous'} positions given, but the model's "
                f"cache is {type(cache).__name__}"
            )
        if self.paged_rows and self.page_size != cache.page_size:
            raise ValueError(f"positions placed in pages of {self.page_size}, but the cache's hold {cache.page_size}")
        if not self.paged_rows and self.length > cache.max_len:
            raise ValueError(f"position {self.length - 1} is past the KV cache's {cache.max_len} positions")

    def rope(self, cos_table: torch.Tensor, sin_table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary tables at these positions: [T, d/2], or [B, T, d/2] per row (padding at 0)."""
        pos = self.pos.clamp(min=0) if self.paged_rows else self.pos
        return cos_table[pos], sin_table[pos]
