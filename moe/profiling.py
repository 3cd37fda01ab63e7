"""Run a tensor-parallel shard of a config's layers on one device and say where the time goes.

Legend: B sequences, T tokens per sequence, C cached positions, D d_model.

`build_layers` materializes N blocks of a shard config (moe.extrapolate.shard_shape: what one GPU of
a tp group holds) with random weights, straight on the device in the given dtype. The three steps
are what that GPU runs, minus the tensor-parallel all-reduces (none is issued: one GPU has no
partner; moe.extrapolate models them):
    prefill  x [1, T, D] through the layers, causal attention, no grad
    decode   x [B, 1, D] at position C against a K/V cache of C + 1 positions per sequence
    train    forward and backward of x [T / seq, seq, D] with a random output gradient and the
             routers' aux losses (weight gradients are reset before each step, as on the first
             microbatch: no accumulation pass)

`breakdown` sums a torch.profiler trace into the model's named ranges (moe/attention, moe/norm,
moe/router, moe/permutation, moe/expert_matmuls, moe/combine; everything else is "other").
Backward work has no range of its own: each autograd node is charged to the range of the forward
op that created it (matched by the autograd sequence number).
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn as nn

from moe.attention import rope_tables
from moe.config import ModelConfig
from moe.kv_cache import KVCache
from moe.model import Block

RANGES = ("attention", "norm", "router", "permutation", "expert_matmuls", "combine")
CATEGORIES = (*RANGES, "other")
_PREFIX = "moe/"
_BACKWARD = "autograd::engine::evaluate_function: "


def build_layers(cfg: ModelConfig, n_layers: int, device, dtype) -> nn.ModuleList:
    """n_layers Blocks of cfg with random weights, created on `device` in `dtype` (no float32 copy)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return nn.ModuleList(Block(cfg) for _ in range(n_layers))
    finally:
        torch.set_default_dtype(previous)


class Steps:
    """The three steps on fixed random inputs (the same every call, so timing repeats exactly)."""

    def __init__(self, layers: nn.ModuleList, cfg: ModelConfig, device, dtype, seed: int = 0):
        self.layers, self.cfg, self.device, self.dtype = layers, cfg, device, dtype
        self.gen = torch.Generator(device).manual_seed(seed)
        self.cos, self.sin = (t.to(device) for t in rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta))

    def _randn(self, *shape, requires_grad=False):
        return torch.randn(*shape, generator=self.gen, device=self.device, dtype=self.dtype,
                           requires_grad=requires_grad)

    def _run(self, x_BTD, cos, sin, input_pos=None, kv_len=None):
        routing = []
        for block in self.layers:
            x_BTD, r = block(x_BTD, cos, sin, input_pos, kv_len)
            routing.append(r)
        return x_BTD, routing

    def prefill(self, tokens: int):
        x = self._randn(1, tokens, self.cfg.d_model)

        @torch.no_grad()
        def step(_=None):
            return self._run(x, self.cos[:tokens], self.sin[:tokens])
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
        pos = torch.tensor([context], device=self.device)

        @torch.no_grad()
        def step(_=None):
            return self._run(x, self.cos[pos], self.sin[pos], pos, context + 1)
        return step

    def train(self, tokens: int, seq_len: int):
        if tokens % seq_len:
            raise ValueError(f"train: tokens ({tokens}) must be a multiple of the sequence length ({seq_len})")
        x = self._randn(tokens // seq_len, seq_len, self.cfg.d_model, requires_grad=True)
        dy = self._randn(*x.shape)
        params = list(self.layers.parameters())

        def step(_=None):
            for p in params:
                p.grad = None
            y, routing = self._run(x, self.cos[:seq_len], self.sin[:seq_len])
            aux = torch.stack([r.aux_loss for r in routing]).sum()
            torch.autograd.backward([y, aux], [dy, torch.ones_like(aux)])
            return y, routing
        return step

    def clear_caches(self) -> None:
        for block in self.layers:
            block.attn.kv_cache = None


def _range_of(event) -> str | None:
    """The innermost named range around an event, or the autograd node it belongs to."""
    while event is not None:
        if event.name.startswith(_PREFIX) and event.name[len(_PREFIX):] in RANGES:
            return event.name[len(_PREFIX):]
        if event.name.startswith(_BACKWARD):
            return f"seq:{event.sequence_nr}"
        event = event.cpu_parent
    return None


def breakdown(events, cuda: bool, steps: int = 1, backward_only: bool = False) -> dict[str, float]:
    """Milliseconds per step in each category: the device (kernel) time on a GPU, the CPU time of
    the ops on a CPU, each event's own time (children excluded), so the categories add up.
    backward_only: count only the work of autograd nodes."""
    forward_range = {}  # autograd sequence number -> range of the forward op that made the node
    for e in events:
        if e.sequence_nr >= 0 and not e.name.startswith(_BACKWARD):
            r = _range_of(e)
            if r is not None and not r.startswith("seq:"):
                forward_range.setdefault(e.sequence_nr, r)
    totals = defaultdict(float)
    for e in events:
        us = e.self_device_time_total if cuda else e.self_cpu_time_total
        if not us:
            continue
        r = _range_of(e)
        backward = r is not None and r.startswith("seq:")
        if backward:
            r = forward_range.get(int(r[4:]))
        if backward or not backward_only:
            totals[r or "other"] += us / 1e3 / steps
    return {c: totals.get(c, 0.0) for c in CATEGORIES}
