"""Per-GPU arithmetic of a parallel layout (`python -m moe figures --layout tp=8,pp=15,dp=208`).
Imports no torch.

What one GPU holds is what this code base's layout gives it (moe/parallel/parallelize.py): query heads,
wq/wo and each expert's d_ff split by tp; n_experts / ep experts; a single K/V head, the norms, the
router, the embedding and the output head replicated over tp; the stage's layers (the worst stage
is reported). Conventions:
- training bytes per parameter: bf16 weights and gradients (2 + 2), and fp32 master weights and the
  two AdamW moments (4 + 4 + 4) sharded by ZeRO-1 over the parameter's replica group (dp x ep for
  the dense part, dp for the experts); FSDP2 also shards the weights and gradients.
- activations: bf16 tensors kept for backward, per token and layer, without recomputation and with
  a fused (flash) attention that keeps no T x T matrix:
      attention  2 d (norm in, normed) + (H/tp + 2 G') hd (q, k, v) + H/tp hd (attention out)
      MoE        2 d (norm in, normed) + 2 E (fp32 router logits) + k d (expert inputs)
                 + 2 k F/tp (pre- and post-activation) + k d (expert outputs)
  with G' the K/V heads held (1 when a single one is replicated).
- all-to-all: every assignment whose expert lives on another rank (a (ep - 1) / ep share under
  uniform routing) crosses twice forward (dispatch, combine) and twice backward, d bf16 values each.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe.config import ModelConfig
from moe.estimates.units import binary_bytes, si
from moe.layout import Layout, bubble_fraction, stage_layers

@dataclass(frozen=True)
class StageMemory:
    layers: int
    dense_params: int  # on one GPU: attention, norms, router (+ embedding / head on the end stages)
    expert_params: int  # on one GPU

    @property
    def params(self) -> int:
        return self.dense_params + self.expert_params


def kv_heads_held(cfg: ModelConfig, tp: int) -> float:
    return cfg.n_kv_heads / tp if cfg.n_kv_heads > 1 else 1


def stage_memory(cfg: ModelConfig, lay: Layout) -> list[StageMemory]:
    d, hd, tp = cfg.d_model, cfg.head_dim, lay.tp
    q = cfg.n_heads * hd / tp  # fractional where tp does not divide the heads (see layout_rows)
    kv = kv_heads_held(cfg, tp) * hd
    dense_layer = 2 * d * q + 2 * d * kv + 2 * d + d * cfg.n_experts
    expert_layer = cfg.n_experts / lay.ep * cfg.n_matrices * d * cfg.d_ff / tp
    out = []
    for i, layers in enumerate(stage_layers(cfg.n_layers, lay.pp, lay.first_stage_layers)):
        dense = len(layers) * dense_layer
        dense += cfg.vocab_size * d if i == 0 else 0
        dense += (0 if cfg.tie_embeddings else cfg.vocab_size * d) + d if i == lay.pp - 1 else 0
        out.append(StageMemory(len(layers), dense, len(layers) * expert_layer))
    return out


def worst_stage(stages: list[StageMemory]) -> StageMemory:
    """The stage whose GPUs hold the most parameters."""
    return max(stages, key=lambda s: s.params)


def activation_bytes_per_token_layer(cfg: ModelConfig, lay: Layout) -> int:
    d, hd, tp, k = cfg.d_model, cfg.head_dim, lay.tp, cfg.top_k
    heads = cfg.n_heads / tp
    attention = 2 * d + (heads + 2 * kv_heads_held(cfg, tp)) * hd + heads * hd
    moe = 2 * d + 2 * cfg.n_experts + k * d + 2 * k * cfg.d_ff / tp + k * d
    return round(2 * (attention + moe))


def layout_rows(cfg: ModelConfig, lay: Layout, batch_tokens: float, seq_len: int) -> list[tuple[str, str, str]]:
    """Rows of (quantity, per-GPU value, how it was counted) for the worst pipeline stage."""
    try:
        lay.check(cfg)
        fits = "yes"
    except ValueError as e:  # e.g. the leak's tp=8 against GPT-4's reported 84 heads: count fractional shares
        fits = f"no: {e}; the figures below count fractional shares (a real split pads or is uneven)"
    stages = stage_memory(cfg, lay)
    worst = worst_stage(stages)
    params = worst.params
    zero_dense, zero_expert = lay.dp * lay.ep, lay.dp
    sharded = worst.dense_params / zero_dense + worst.expert_params / zero_expert  # one replica group's share
    optimizer = 12 * sharded
    fsdp = lay.sharding == "fsdp"
    weights_grads = 4 * (sharded if fsdp else params)

    tokens_per_micro = batch_tokens / (lay.data_shards * lay.microbatches)
    sequences_per_micro = tokens_per_micro / seq_len
    layers = max(s.layers for s in stages)
    act_micro = activation_bytes_per_token_layer(cfg, lay) * tokens_per_micro * layers
    if lay.pp == 1:
        in_flight = 1  # gradient accumulation: one microbatch's activations at a time
    else:
        in_flight = lay.microbatches if lay.schedule == "gpipe" else min(lay.pp, lay.microbatches)
    bubble = bubble_fraction(lay.pp, lay.microbatches)
    a2a = (4 * tokens_per_micro * cfg.top_k * (lay.ep - 1) / lay.ep * cfg.d_model * 2
           * lay.microbatches * layers)
    weight_bytes = params * 2
    rows = [
        ("GPUs", f"{lay.world_size:,}", f"pp {lay.pp} x dp {lay.dp} x ep {lay.ep} x tp {lay.tp}"),
        ("runs in this code base", fits.split(":")[0], fits.partition(": ")[2] or "every degree divides what it splits"),
        ("layers per stage", _run_length([s.layers for s in stages]),
         "first stage also holds the embedding, last the output head"),
        ("parameters per GPU (worst stage)", si(params),
         f"{si(worst.dense_params)} dense + {si(worst.expert_params)} expert; "
         f"{cfg.n_experts / lay.ep:g} experts of d_ff {cfg.d_ff / lay.tp:g}, {cfg.n_heads / lay.tp:g} query heads"),
        ("  as fp16/bf16", binary_bytes(weight_bytes), f"{weight_bytes / 1e9:.1f} GB: weights only (inference)"),
        ("  weights + gradients, bf16", binary_bytes(weights_grads),
         "sharded by FSDP2" if fsdp else "whole on every data-parallel rank (ZeRO-1 shards only the optimizer)"),
        ("  fp32 master + AdamW moments, ZeRO-1", binary_bytes(optimizer),
         f"12 B/param over {zero_dense} (dense) and {zero_expert} (expert) ranks"),
        ("  training state total", binary_bytes(weights_grads + optimizer), "before activations"),
        ("tokens per microbatch per GPU", f"{tokens_per_micro:,.0f}",
         f"{si(batch_tokens)} tokens per step / ({lay.data_shards} data shards x {lay.microbatches} microbatches)"
         f" = {sequences_per_micro:.3g} sequences of {seq_len}"),
        ("activations per microbatch", binary_bytes(act_micro),
         f"{activation_bytes_per_token_layer(cfg, lay):,} B per token and layer (bf16, flash attention, no "
         "recomputation)"),
        (f"  peak, {in_flight} microbatch(es) in flight", binary_bytes(act_micro * in_flight),
         "1F1B keeps at most pp in flight on the first stage, GPipe all of them"),
        ("pipeline bubble", f"{bubble:.1%}", f"(pp - 1) / (microbatches + pp - 1) = {lay.pp - 1} / "
         f"{lay.microbatches + lay.pp - 1}, for GPipe and 1F1B alike"),
        ("all-to-all bytes per step per GPU", binary_bytes(a2a) if lay.ep > 1 else "0 (ep = 1)",
         "4 crossings (dispatch, combine, forward and backward) of each remote assignment, bf16, uniform routing"),
    ]
    return rows


def _run_length(counts: list[int]) -> str:
    """[7, 8, 8, 8] -> '7, 8 x3'."""
    runs: list[list[int]] = []
    for c in counts:
        if runs and runs[-1][0] == c:
            runs[-1][1] += 1
        else:
            runs.append([c, 1])
    return ", ".join(f"{c} x{n}" if n > 1 else str(c) for c, n in runs)
