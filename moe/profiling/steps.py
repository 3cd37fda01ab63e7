"""Run a tensor-parallel shard of a config's layers on one device: prefill, decode and training steps.

Legend: B sequences, T tokens per sequence, C cached positions, D d_model.

`build_layers` materializes N blocks of a shard config (moe.estimates.cluster.shard_shape: what one GPU
of a tp group holds) with random weights, straight on the device in the given dtype. The three steps
are what that GPU runs, minus the tensor-parallel all-reduces (none is issued: one GPU has no
partner; moe.estimates.cluster models them):
    prefill  x [1, T, D] through the layers, causal attention, no grad
    decode   x [B, 1, D] at position C against a K/V cache of C + 1 positions per sequence
    train    forward and backward of x [T / seq, seq, D] with a random output gradient and the
             routers' aux losses (weight gradients are reset before each step, as on the first
             microbatch: no accumulation pass)

Where the time goes is moe/profiling/breakdown.py's job.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from moe.config import ModelConfig
from moe.model import Block, KVCache, Positions
from moe.model.rope import Rotary


def build_layers(cfg: ModelConfig, n_layers: int, device, dtype) -> nn.ModuleList:
    """n_layers Blocks of cfg with random weights, created on `device` in `dtype` (no float32 copy)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return nn.ModuleList(Block(cfg, i) for i in range(n_layers))
    finally:
        torch.set_default_dtype(previous)


class Steps:
    """The three steps on fixed random inputs (the same every call, so timing repeats exactly)."""

    def __init__(self, layers: nn.ModuleList, cfg: ModelConfig, device, dtype, seed: int = 0):
        self.layers, self.cfg, self.device, self.dtype = layers, cfg, device, dtype
        self.gen = torch.Generator(device).manual_seed(seed)
        self.rotary = Rotary(cfg).to(device)

    def _randn(self, *shape, requires_grad=False):
        return torch.randn(
            *shape, generator=self.gen, device=self.device, dtype=self.dtype, requires_grad=requires_grad
        )

    def _run(self, x_BTD, positions: Positions):
        rope = positions.rope(*self.rotary.tables(positions.length))
        routing = []
        for block in self.layers:
            x_BTD, r = block(x_BTD, rope, positions)
            routing.append(r)
        return x_BTD, routing

    def prefill(self, tokens: int):
        x = self._randn(1, tokens, self.cfg.d_model)
        positions = Positions.causal(tokens, self.device)

        @torch.no_grad()
        def step(_=None):
            return self._run(x, positions)

        return step

    def decode(self, batch: int, context: int):
        """One token per sequence at position `context`, after a cache filled (with random K/V, as
        timing does not depend on the values) to `context` positions."""
        for block in self.layers:
            cache = KVCache(batch, self.cfg.n_kv_heads, context + 1, self.cfg.head_dim, self.dtype, self.device)
            cache.k.normal_(generator=self.gen)
            cache.v.normal_(generator=self.gen)
            block.attn.kv_cache = cache
        x = self._randn(batch, 1, self.cfg.d_model)
        positions = Positions.at(torch.tensor([context], device=self.device))

        @torch.no_grad()
        def step(_=None):
            return self._run(x, positions)

        return step

    def train(self, tokens: int, seq_len: int):
        if tokens % seq_len:
            raise ValueError(f"train: tokens ({tokens}) must be a multiple of the sequence length ({seq_len})")
        x = self._randn(tokens // seq_len, seq_len, self.cfg.d_model, requires_grad=True)
        dy = self._randn(*x.shape)
        params = list(self.layers.parameters())
        positions = Positions.causal(seq_len, self.device)

        def step(_=None):
            for p in params:
                p.grad = None
            y, routing = self._run(x, positions)
            aux = torch.stack([r.aux_loss for r in routing]).sum()
            torch.autograd.backward([y, aux], [dy, torch.ones_like(aux)])
            return y, routing

        return step

    def clear_caches(self) -> None:
        for block in self.layers:
            block.attn.kv_cache = None
