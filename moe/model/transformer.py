"""The MoE transformer: token embedding, pre-norm blocks (attention, then the MoE MLP), output head.

Legend: B batch, T sequence, D d_model, V vocab_size.

    x = embed(idx)
    for each block:  x = x + Attention(RMSNorm(x));  x = x + MoE(RMSNorm(x))
    logits = head(RMSNorm(x))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.ranges import profiler_range
from moe.config import ModelConfig
from moe.model.attention import Attention
from moe.model.init import init_weights
from moe.model.kv_cache import KVCache, PagedKVCache
from moe.model.moe_layer import MoELayer
from moe.model.positions import Positions
from moe.model.quantized import linear
from moe.model.rope import Rotary
from moe.model.router import RouterOutput

IGNORE_INDEX = -100  # a target that the loss skips (padding after a captioned example, moe/vision/captions.py)


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [B, T, V]
    routing: list[RouterOutput]  # one per layer
    loss: torch.Tensor | None = None  # cross-entropy in nats per token, when targets were given

    @property
    def aux_loss(self) -> torch.Tensor:
        """The summed router losses of all layers (coefficients applied), computed when read."""
        return torch.stack([r.aux_loss for r in self.routing]).sum()


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0):
        """layer: its index, which says whether its attention slides (cfg.window(layer))."""
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg, cfg.window(layer))
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.moe = MoELayer(cfg)

    def forward(self, x_BTD, rope, positions: Positions | None = None):
        """rope: the (cos, sin) tables at the tokens' positions; positions: see moe/model/positions.py
        (None: positions 0..T-1, no cache)."""
        positions = positions or Positions.causal(x_BTD.shape[1], x_BTD.device)
        with profiler_range("moe/norm"):
            h_BTD = self.attn_norm(x_BTD)
        x_BTD = x_BTD + self.attn(h_BTD, rope, positions)
        with profiler_range("moe/norm"):
            h_BTD = self.mlp_norm(x_BTD)
        valid_BT = positions.valid_BT
        if valid_BT is not None:  # a paged batch: route only the real tokens, not the padding
            y_ND, routing = self.moe(h_BTD[valid_BT])
            return x_BTD + torch.zeros_like(h_BTD).index_put((valid_BT,), y_ND), routing
        y_BTD, routing = self.moe(h_BTD)
        return x_BTD + y_BTD, routing


def check_causal_routing(cfg: ModelConfig) -> None:
    """A KV cache means generation, one token after another: refuse a router that is not causal."""
    if not cfg.causal_routing:
        raise ValueError(
            f"router_rule {cfg.router_rule!r} is not causal (each expert picks among all the batch's "
            "tokens, later ones included), so it cannot generate: it is for training only"
        )


def install_paged_caches(blocks, cfg: ModelConfig, n_pages: int, page_size: int, dtype: torch.dtype) -> None:
    """A pool of n_pages pages of page_size positions in each block, on the block's device."""
    check_causal_routing(cfg)
    for block in blocks:
        device = block.attn_norm.weight.device
        block.attn.kv_cache = PagedKVCache(n_pages, page_size, cfg.n_kv_heads, cfg.head_dim, dtype, device)


class MoETransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = linear(cfg, cfg.d_model, cfg.vocab_size)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.rotary = Rotary(cfg)  # positions -> rotary tables (moe/model/rope.py), no parameters
        if self.tok_emb.weight.device.type != "meta":  # on meta: materialize() later, shard by shard
            self.init_weights()

    def init_weights(self, seed: int | None = None) -> None:
        """Every parameter from its own stream of `seed` (moe/model/init.py); None: a seed drawn from
        torch's global generator, so torch.manual_seed(s) before construction fixes the weights.
        Quantized projections are buffers that come from a checkpoint, never initialised."""
        if seed is None:
            seed = int(torch.randint(2**62, (), device="cpu"))
        init_weights(self, self.cfg, seed)

    def setup_caches(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> None:
        """Preallocate a KV cache of max_len positions (default max_seq_len) in every layer."""
        check_causal_routing(self.cfg)
        max_len = max_len or self.cfg.max_seq_len
        if max_len > self.cfg.max_seq_len:
            raise ValueError(f"KV cache of {max_len} positions exceeds max_seq_len {self.cfg.max_seq_len}")
        dtype = dtype or self.tok_emb.weight.dtype
        device = self.tok_emb.weight.device
        for block in self.blocks:
            block.attn.kv_cache = KVCache(batch, self.cfg.n_kv_heads, max_len, self.cfg.head_dim, dtype, device)

    def setup_paged_caches(self, n_pages: int, page_size: int, dtype: torch.dtype | None = None) -> None:
        """A pool of n_pages pages of page_size positions in every layer, for the serving engine."""
        install_paged_caches(self.blocks, self.cfg, n_pages, page_size, dtype or self.tok_emb.weight.dtype)

    def clear_caches(self) -> None:
        for block in self.blocks:
            block.attn.kv_cache = None

    def forward(
        self,
        idx_BT: torch.Tensor,
        positions: Positions | None = None,
        targets: torch.Tensor | None = None,
        before_block=None,
    ) -> ModelOutput:
        """idx [B, T] token ids. positions (moe/model/positions.py): None for positions 0..T-1 and no
        cache; Positions.at(pos_T) to write and read the contiguous KV cache (prefill: arange(T);
        decode: [n]); Positions.paged(pos_BT, pages_BP, page_size), each row its own sequence at its own
        positions in the paged cache (padding tokens give garbage logits and are not routed).
        targets [B, T]: also return the cross-entropy. before_block(i, x_BTD) -> x_BTD: run on the
        residual stream before block i (the vision path's gated cross-attention, moe/vision/model.py)."""
        self._check_tokens(idx_BT, "token ids")
        B, T = idx_BT.shape
        positions = positions or Positions.causal(T, idx_BT.device)
        positions.check(B, T, self.cfg.max_seq_len, self.blocks[0].attn.kv_cache)
        rope = positions.rope(*self.rotary.tables(positions.length))
        x_BTD = self.tok_emb(idx_BT)
        routing = []
        for i, block in enumerate(self.blocks):
            if before_block is not None:
                x_BTD = before_block(i, x_BTD)
            x_BTD, r = block(x_BTD, rope, positions)
            routing.append(r)
        logits = self.lm_head(self.norm(x_BTD))
        loss = None
        if targets is not None:
            self._check_tokens(targets, "targets", ignore=IGNORE_INDEX)
            loss = F.cross_entropy(
                logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
            )
        return ModelOutput(logits=logits, routing=routing, loss=loss)

    def _check_tokens(self, ids: torch.Tensor, what: str, ignore: int | None = None) -> None:
        """ids [B, T] must be token ids; `ignore`: a value also allowed (a target the loss skips)."""
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{what} must be an integer tensor [B, T], got {ids.dtype} {tuple(ids.shape)}")
        if ids.numel() and ids.device.type != "meta" and not torch.compiler.is_compiling():  # (values break a graph)
            ids = ids if ignore is None else ids[ids != ignore]
            if not ids.numel():
                return
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.cfg.vocab_size:
                raise ValueError(f"{what} out of range: found {lo}..{hi}, vocab_size is {self.cfg.vocab_size}")
