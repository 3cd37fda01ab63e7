"""Parameter, FLOP and memory arithmetic implied by a ModelConfig. Imports no torch.

Counting conventions:
- Parameters are weight elements and biases (router, attention, experts, where a config has them),
  attention sinks, and RMSNorm scales (d each; q/k norms head_dim or the projection's width).
  Shared experts count as always active; expert choice's active experts per token are top_k on
  average.
- "Active" parameters per token: everything except the experts a token is not routed to, with the
  input embedding and the output head included (as the leaked ~280B figure seems to count them).
- Forward FLOPs per token = 2 * (active parameters that take part in a matmul: everything but the
  input embedding lookup and the norms) + attention scores, 4 * n_layers * n_heads * head_dim * context
  (QK^T and AV for a token attending to `context` keys). Training FLOPs = 3 x forward.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe.config import ModelConfig


@dataclass(frozen=True)
class ParamCounts:
    embedding: int  # input token embedding
    head: int  # output projection (0 when tied to the embedding)
    attention: int  # all layers: wq, wk, wv, wo
    norms: int  # all RMSNorm scales
    router: int  # all layers' gates (and their biases)
    expert_layer: int  # one expert in one layer
    n_layers: int
    n_experts: int
    top_k: int
    shared_experts: int = 0  # all layers' shared experts (and their gates): every token uses them

    @property
    def experts(self) -> int:
        return self.expert_layer * self.n_layers * self.n_experts

    @property
    def per_expert(self) -> int:
        """One expert's weights summed over all layers (the leak's "~111B per expert")."""
        return self.expert_layer * self.n_layers

    @property
    def shared(self) -> int:
        """Everything that is not an expert."""
        return self.embedding + self.head + self.attention + self.norms + self.router + self.shared_experts

    @property
    def total(self) -> int:
        return self.shared + self.experts

    @property
    def active(self) -> int:
        return self.shared + self.per_expert * self.top_k


def count_params(cfg: ModelConfig) -> ParamCounts:
    d, q, kv = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    biases = cfg.qkv_bias * (q + 2 * kv) + cfg.out_bias * d
    qk_norms = {"none": 0, "head": 2 * cfg.head_dim, "projection": q + kv}[cfg.qk_norm]
    return ParamCounts(
        embedding=cfg.vocab_size * d,
        head=0 if cfg.tie_embeddings else cfg.vocab_size * d,
        attention=cfg.n_layers * (d * q + 2 * d * kv + q * d + biases + cfg.attention_sinks * cfg.n_heads),
        norms=cfg.n_layers * (2 * d + qk_norms) + d,
        router=cfg.n_layers * (d + cfg.router_bias) * cfg.n_experts,
        expert_layer=cfg.n_matrices * d * cfg.d_ff + cfg.expert_bias * ((cfg.n_matrices - 1) * cfg.d_ff + d),
        n_layers=cfg.n_layers,
        n_experts=cfg.n_experts,
        top_k=cfg.top_k,
        shared_experts=cfg.n_layers * (cfg.n_matrices * d * cfg.shared_d_ff + d * cfg.shared_gate),
    )


def matmul_params_per_token(cfg: ModelConfig) -> int:
    """Active parameters that take part in a matmul: all but the embedding lookup and the norms."""
    p = count_params(cfg)
    head = p.head if not cfg.tie_embeddings else p.embedding
    return p.attention + p.router + p.shared_experts + p.per_expert * p.top_k + head


def attention_flops_per_token(cfg: ModelConfig, context: int) -> int:
    return 4 * cfg.n_layers * cfg.n_heads * cfg.head_dim * context


def forward_flops_per_token(cfg: ModelConfig, context: int = 0) -> int:
    return 2 * matmul_params_per_token(cfg) + attention_flops_per_token(cfg, context)


def kv_cache_bytes(cfg: ModelConfig, context: int, bytes_per_element: int = 2) -> int:
    """K and V of one sequence of `context` tokens in every layer, a sliding layer holding at most
    its window (what the paged engine keeps once it frees the pages that fall out of it)."""
    per_layer = 2 * cfg.n_kv_heads * cfg.head_dim * bytes_per_element
    return sum(per_layer * min(context, cfg.window(i) or context) for i in range(cfg.n_layers))


def kv_cache_bytes_per_token(cfg: ModelConfig, bytes_per_element: int = 2, n_kv_heads: int | None = None) -> int:
    """K and V for one token in every layer. n_kv_heads=cfg.n_heads gives the multi-head equivalent."""
    heads = cfg.n_kv_heads if n_kv_heads is None else n_kv_heads
    return 2 * cfg.n_layers * heads * cfg.head_dim * bytes_per_element
