"""Per-GPU arithmetic of a parallel layout (`python -m moe figures --layout tp=8,pp=15,dp=208`).
Imports no torch.

What one GPU holds is what this code base's layout gives it (moe/parallel/parallelize.py): query heads,
wq/wo and each expert's d_ff split by tp; n_experts / ep experts; a single K/V head, the norms, the
router, the embedding and the output head replicated over tp; the stage's layers (the worst stage
is reported). Conventions:
- training bytes per parameter, as this code base trains (fp32 weights under bf16 autocast, AdamW;
  moe/parallel/parallelize.py): weights, gradients and the two moments (4 + 4 + 8 = 16 B), all
  sharded by FSDP2 over the parameter's replica group (dp x ep for the dense part, dp for the
  experts) between steps; during a step the weights are also gathered whole (fp32): the stage's
  whole share with "zero1", with "fsdp" the stage's embedding / head and two blocks at a time (the
  one computing and the one prefetched). `figures --simulate` (moe/parallel/simulate.py) builds the
  sharded tensors and checks these counts.
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
from moe.layout import Layout, bubble_fraction, rank_chunks


@dataclass(frozen=True)
class StageMemory:
    layers: int
    dense_params: int  # on one GPU: attention, norms, router (+ embedding / head on the end stages)
    expert_params: int  # on one GPU
    edge_params: int = 0  # of dense_params, the embedding / final norm and head (outside the blocks)

    @property
    def params(self) -> int:
        return self.dense_params + self.expert_params

    def sharded(self, lay: Layout) -> float:
        """Elements one GPU keeps between steps: its FSDP2 share over each replica group."""
        return self.dense_params / (lay.dp * lay.ep) + self.expert_params / lay.dp

    def gathered(self, lay: Layout) -> float:
        """Elements gathered whole during a step (see the conventions above); none without data
        parallelism, where the weights are whole already (and `sharded` counts them)."""
        if lay.data_shards == 1:
            return 0
        if lay.sharding == "zero1":
            return self.params
        return self.edge_params + 2 * (self.params - self.edge_params) / self.layers


def kv_heads_held(cfg: ModelConfig, tp: int) -> float:
    return cfg.n_kv_heads / tp if cfg.n_kv_heads > 1 else 1


def stage_memory(cfg: ModelConfig, lay: Layout) -> list[StageMemory]:
    d, hd, tp = cfg.d_model, cfg.head_dim, lay.tp
    q = cfg.n_heads * hd / tp  # fractional where tp does not divide the heads (see layout_rows)
    kv = kv_heads_held(cfg, tp) * hd
    dense_layer = 2 * d * q + 2 * d * kv + 2 * d + d * cfg.n_experts
    expert_layer = cfg.n_experts / lay.ep * cfg.n_matrices * d * cfg.d_ff / tp
    out = []
    for i, chunks in enumerate(rank_chunks(cfg.n_layers, lay)):  # each pipeline rank's stage(s)
        layers = [layer for chunk in chunks for layer in chunk]
        edge = cfg.vocab_size * d if i == 0 else 0
        edge += (0 if cfg.tie_embeddings else cfg.vocab_size * d) + d if i == lay.pp - 1 else 0
        out.append(StageMemory(len(layers), len(layers) * dense_layer + edge, len(layers) * expert_layer, edge))
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
    at_rest = 16 * worst.sharded(lay)
    gathered = 4 * worst.gathered(lay)
    how_gathered = (
        "the stage's whole share, gathered once per step (zero1)"
        if lay.sharding == "zero1"
        else "embedding / head and two blocks at a time (fsdp: one computing, one prefetched)"
    )

    tokens_per_micro = batch_tokens / (lay.data_shards * lay.microbatches)
    sequences_per_micro = tokens_per_micro / seq_len
    layers = max(s.layers for s in stages)
    act_micro = activation_bytes_per_token_layer(cfg, lay) * tokens_per_micro * layers
    if lay.pp == 1:
        in_flight = 1  # gradient accumulation: one microbatch's activations at a time
    else:
        in_flight = lay.microbatches if lay.schedule == "gpipe" else min(lay.pp, lay.microbatches)
    bubble = bubble_fraction(lay.pp, lay.microbatches, lay.virtual_stages)
    a2a = 4 * tokens_per_micro * cfg.top_k * (lay.ep - 1) / lay.ep * cfg.d_model * 2 * lay.microbatches * layers
    weight_bytes = params * 2
    rows = [
        ("GPUs", f"{lay.world_size:,}", f"pp {lay.pp} x dp {lay.dp} x ep {lay.ep} x tp {lay.tp}"),
        (
            "runs in this code base",
            fits.split(":")[0],
            fits.partition(": ")[2] or "every degree divides what it splits",
        ),
        (
            "layers per stage",
            _run_length([s.layers for s in stages]),
            "first stage also holds the embedding, last the output head",
        ),
        (
            "parameters per GPU (worst stage)",
            si(params),
            f"{si(worst.dense_params)} dense + {si(worst.expert_params)} expert; "
            f"{cfg.n_experts / lay.ep:g} experts of d_ff {cfg.d_ff / lay.tp:g}, {cfg.n_heads / lay.tp:g} query heads",
        ),
        ("  as fp16/bf16", binary_bytes(weight_bytes), f"{weight_bytes / 1e9:.1f} GB: weights only (inference)"),
        (
            "  weights, gradients, AdamW moments",
            binary_bytes(at_rest),
            f"fp32, 4 + 4 + 8 B/param, sharded by FSDP2 over {zero_dense} (dense) and {zero_expert} (expert) ranks"
            " (between steps)",
        ),
        (
            "  + weights gathered for the step",
            binary_bytes(gathered) if gathered else "0 (no data parallelism)",
            f"fp32: {how_gathered}" if gathered else "the weights are whole already",
        ),
        ("  training state, peak", binary_bytes(at_rest + gathered), "before activations"),
        (
            "tokens per microbatch per GPU",
            f"{tokens_per_micro:,.0f}",
            f"{si(batch_tokens)} tokens per step / ({lay.data_shards} data shards x {lay.microbatches} microbatches)"
            f" = {sequences_per_micro:.3g} sequences of {seq_len}",
        ),
        (
            "activations per microbatch",
            binary_bytes(act_micro),
            f"{activation_bytes_per_token_layer(cfg, lay):,} B per token and layer (bf16, flash attention, no "
            "recomputation)",
        ),
        (
            f"  peak, {in_flight} microbatch(es) in flight",
            binary_bytes(act_micro * in_flight),
            "1F1B keeps at most pp in flight on the first stage, GPipe all of them",
        ),
        (
            "pipeline bubble",
            f"{bubble:.1%}",
            (
                f"(pp - 1) / (virtual_stages x microbatches + pp - 1) = {lay.pp - 1} / "
                f"{lay.virtual_stages * lay.microbatches + lay.pp - 1}, interleaved 1F1B"
                + ("; zero bubble fills part of it with weight gradients" if lay.schedule == "zero-bubble" else "")
                if lay.virtual_stages > 1
                else f"(pp - 1) / (microbatches + pp - 1) = {lay.pp - 1} / "
                f"{lay.microbatches + lay.pp - 1}, for GPipe and 1F1B alike"
            ),
        ),
        (
            "all-to-all bytes per step per GPU",
            binary_bytes(a2a) if lay.ep > 1 else "0 (ep = 1)",
            "4 crossings (dispatch, combine, forward and backward) of each remote assignment, bf16, uniform routing",
        ),
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
