"""From one GPU's layers to the leaked GPT-4 clusters: decode latency, throughput and cost on 8-way
tensor x 16-way pipeline parallelism, and training MFU and days. Imports no torch.

Legend: b sequences per pipeline microbatch, C context (cached positions), L layers, tp / pp the
tensor / pipeline degrees, t_L the time of one layer on one GPU holding its 1/tp shard.

Per-layer times come from `bench.profile_model` (measured on a GPU) or from `roofline_layer`
(a prediction: each op group takes max(FLOPs / peak, bytes / bandwidth)). Both go through the same
cluster model, whose assumptions are stated once, in ASSUMPTIONS, and printed with every result:

decode (inference):
    the stages split the layers as moe.layout.stage_layers does (120 / 16: eight of 8, eight of 7;
    the 8-layer stages set the pace), and pp microbatches of b sequences are in flight, so every
    stage is busy and users = pp * b;
    stage time  t_s = layers * (t_L(b, C) + 2 * allreduce(b * d * 2 bytes)) + p2p(b * d * 2 / tp)
                      + allgather(b * d * 2 bytes over tp)   (stage_traffic: no send from the
                      last stage, no all-gather on the first; + the vocab-parallel head on the last)
    per-token latency = pp * max stage time;  tokens/s per user = 1 / latency
    cluster tokens/s = b / max stage time;    $ per 1k tokens = GPUs * $/h / 3600 / (tokens/s) * 1000
    the KV cache of all users (pp * b sequences of C positions, every layer of the stage, the single
    K/V head replicated over tp) must fit beside the stage's weights.
training: tp x pp x dp with 1F1B over m microbatches per step; step time = (m + pp - 1) * the worst
    stage's microbatch time (forward + backward + 4 tensor-parallel all-reduces per layer, with full
    recomputation, one more forward, when the activations of pp microbatches in flight do not fit);
    the data-parallel gradient all-reduce and the optimizer step are assumed hidden (overlapped);
    MFU = model FLOPs (3 x forward, causal attention at half the sequence) / (time * GPUs * datasheet
    peak), the convention of the leak's 32-36% (PaLM's definition; recomputation does not count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from moe.config import ModelConfig
from moe.estimates.arithmetic import (
    attention_flops_per_token,
    count_params,
    forward_flops_per_token,
    kv_cache_bytes_per_token,
)
from moe.estimates.layout_memory import activation_bytes_per_token_layer, kv_heads_held, stage_memory, worst_stage
from moe.estimates.leak import LEAK_TRAIN_BATCH_TOKENS, TRAIN_TOKENS
from moe.layout import Layout, stage_layers

TRAIN_SEQ = 8192  # leak: 8k pre-training context
LEAK_TRAIN = {  # leak: 25,000 A100s for 90-100 days at 32-36% MFU; about 55 days on 8,192 H100s
    "A100": dict(gpus=25_000, mfu=(0.32, 0.36), days=(90, 100)),
    "H100": dict(gpus=8_192, mfu=None, days=(55, 55)),
}
COLLECTIVE_LATENCY_S = 10e-6  # per all-reduce or pipeline send, NCCL small-message latency (assumed)


@dataclass(frozen=True)
class GPU:
    name: str
    peak_tflops: float  # datasheet dense bf16, the MFU denominator
    bandwidth_gbs: float  # datasheet HBM
    memory_gb: float
    price_per_hour: float  # an assumed rental price, dollars per GPU-hour
    nvlink_busbw_gbs: float  # achieved all-reduce bus bandwidth inside a node (assumed, nccl-tests scale)
    network_gbs: float  # per-GPU inter-node bandwidth (InfiniBand), for pipeline sends
    matmul_efficiency: float = 798 / 989  # achieved fraction of peak: a measured H100 8192^3 bf16 matmul
    copy_efficiency: float = 3.0 / 3.35  # achieved fraction of bandwidth: a measured H100 copy

    @property
    def flops(self) -> float:
        """FLOP/s a large matmul achieves."""
        return self.peak_tflops * 1e12 * self.matmul_efficiency

    @property
    def bytes_per_s(self) -> float:
        return self.bandwidth_gbs * 1e9 * self.copy_efficiency


GPUS = {
    "H100": GPU("H100 SXM 80GB", 989, 3350, 80, 2.0, 360, 50),
    "A100": GPU("A100 SXM 40GB", 312, 1555, 40, 1.0, 230, 25),
}
_H, _A = GPUS["H100"], GPUS["A100"]
ASSUMPTIONS = [  # built from the constants above, so the printed list is what the code uses
    f"GPUs: {_H.name} ({_H.peak_tflops} TFLOP/s dense bf16, {_H.bandwidth_gbs / 1e3:g} TB/s, ${_H.price_per_hour:g}/h) "
    f"and {_A.name} ({_A.peak_tflops} TFLOP/s, {_A.bandwidth_gbs / 1e3:g} TB/s, ${_A.price_per_hour:g}/h, the leak's "
    "inference GPU: 'less than 30 GB' of weights per GPU); datasheet figures",
    f"achieved fractions: matmul {_H.matmul_efficiency:.0%} and copy {_H.copy_efficiency:.0%} of the datasheet "
    "(bench/README.md: a measured H100's 798 TFLOP/s and 3.0 TB/s); replaced by the run's own ceilings when measured "
    "on an H100; an A100 is assumed to reach the same fractions, and a measured layer time is carried to "
    "another GPU by the ratio of their roofline times",
    f"tensor-parallel all-reduce: {COLLECTIVE_LATENCY_S * 1e6:g} us + 2 (tp-1)/tp x bytes / bus bandwidth "
    f"({_H.nvlink_busbw_gbs:g} GB/s H100, {_A.nvlink_busbw_gbs:g} GB/s A100, NVLink, nccl-tests scale); 2 per layer "
    "forward, 4 forward+backward; not overlapped with compute",
    f"pipeline send between stages: {COLLECTIVE_LATENCY_S * 1e6:g} us + bytes / ({_H.network_gbs:g} GB/s H100, "
    f"{_A.network_gbs:g} GB/s A100 InfiniBand per GPU), each tp rank sending 1/tp of the activations, which the "
    "next stage's tp ranks all-gather over NVLink",
    "decode: pp microbatches in flight (users = pp x b); no speculative decoding; weights bf16; KV cache bf16, "
    "the one K/V head replicated on all tp ranks; 10% of GPU memory reserved for activations and workspace; "
    "the output head timed as vocab-parallel (1/tp per GPU) but counted whole in memory, as this code base "
    "holds it (about 1.9 GB more than a vocab-parallel head)",
    f"training: tp8 x pp15 x dp (dp = GPUs // 120), 1F1B, microbatches of one {TRAIN_SEQ}-token sequence, "
    f"{LEAK_TRAIN_BATCH_TOKENS / 1e6:g}M tokens per step, ZeRO-1; data-parallel all-reduce and optimizer hidden; full "
    "recomputation when the ZeRO-1 state and pp microbatches of activations do not fit in 90% of memory",
    "84 query heads over tp=8 is 10.5 per GPU: the slowest ranks hold 11, so the profiled shard holds 11",
]


def shard_shape(cfg: ModelConfig, tp: int) -> ModelConfig:
    """What one GPU of a tp-way tensor-parallel group holds of each layer: ceil(heads / tp) query
    heads, d_ff / tp of every expert, K/V heads / tp (a single K/V head is replicated), and the
    norms and router whole. No torch: the profiler builds its layers from this config."""
    if cfg.d_ff % tp:
        raise ValueError(f"tp={tp} does not divide d_ff={cfg.d_ff}")
    kv = cfg.n_kv_heads // tp if cfg.n_kv_heads % tp == 0 else cfg.n_kv_heads
    heads = -(-cfg.n_heads // tp)
    heads = -(-heads // kv) * kv  # whole groups of query heads per K/V head
    return replace(cfg, name=f"{cfg.name}/tp{tp}", n_heads=heads, n_kv_heads=kv, d_ff=cfg.d_ff // tp)


# --- one layer on one GPU: FLOPs, bytes and a roofline time ------------------------------------------


def layer_params(cfg: ModelConfig) -> dict[str, int]:
    """Weight elements of one layer, by op group."""
    p = count_params(cfg)
    return dict(
        attention=p.attention // cfg.n_layers,
        router=p.router // cfg.n_layers,
        expert=p.expert_layer,
        norms=2 * cfg.d_model,
    )


def _kv_bytes_per_position(cfg: ModelConfig, kv_heads: float | None = None) -> float:
    """K and V of one position in one layer, bf16."""
    return kv_cache_bytes_per_token(cfg, 2, kv_heads) / cfg.n_layers


def experts_touched(tokens: int, cfg: ModelConfig) -> float:
    """Expected distinct experts chosen by `tokens` tokens routed uniformly at random, top-k of E."""
    return cfg.n_experts * (1 - (1 - cfg.top_k / cfg.n_experts) ** tokens)


def layer_costs(
    cfg: ModelConfig,
    tokens: int,
    context: float,
    kv_rows: int = 0,
    touched: float | None = None,
    expert_bytes: float = 2.0,
) -> dict[str, tuple[float, float]]:
    """{op group: (FLOPs, bytes)} of one forward layer of `cfg` (a shard) over `tokens` tokens that
    each attend to `context` positions on average. kv_rows: sequences whose K/V cache is read
    (decode); 0 for prefill and training, where K and V are computed, not read. touched: experts
    that received tokens (default: the expectation under uniform routing). bf16 everywhere, but
    expert weights at expert_bytes per weight (quantized serving: expert_weight_bytes)."""
    w = layer_params(cfg)
    d, hd = cfg.d_model, cfg.head_dim
    q_width = cfg.n_heads * hd
    kv_bytes = kv_rows * math.ceil(context) * _kv_bytes_per_position(cfg)
    act = 2 * tokens * d  # one bf16 activation of the layer's width
    experts = experts_touched(tokens, cfg) if touched is None else touched
    return {
        "attention": (
            2 * tokens * w["attention"] + 4 * tokens * cfg.n_heads * hd * context,
            2 * w["attention"] + kv_bytes + 2 * act + 4 * tokens * q_width,
        ),
        "router": (2 * tokens * w["router"], 2 * w["router"] + act),
        "expert_matmuls": (
            2 * tokens * cfg.top_k * w["expert"],
            expert_bytes * w["expert"] * experts + 2 * cfg.top_k * act + 4 * tokens * cfg.top_k * cfg.d_ff,
        ),
        "norms": (0.0, 2 * act + 2 * w["norms"]),
    }


def roofline_layer(
    cfg: ModelConfig,
    gpu: GPU,
    tokens: int,
    context: float,
    kv_rows: int = 0,
    backward: bool = False,
    touched: float | None = None,
    expert_bytes: float = 2.0,
) -> float:
    """Seconds for one layer: each op group max(FLOPs / achieved peak, bytes / achieved bandwidth);
    with backward, 3x the forward FLOPs and bytes (dX and dW each re-read the weights)."""
    scale = 3 if backward else 1
    return sum(
        max(scale * f / gpu.flops, scale * b / gpu.bytes_per_s)
        for f, b in layer_costs(cfg, tokens, context, kv_rows, touched, expert_bytes).values()
    )


def rescale(
    seconds: float,
    shard: ModelConfig,
    measured_on: GPU,
    target: GPU,
    tokens: int,
    context: float,
    kv_rows: int = 0,
    backward: bool = False,
) -> float:
    """A time measured on one GPU, carried to another by the ratio of their roofline times."""
    return seconds * (
        roofline_layer(shard, target, tokens, context, kv_rows, backward)
        / roofline_layer(shard, measured_on, tokens, context, kv_rows, backward)
    )


# --- the cluster -----------------------------------------------------------------------------------


def allreduce_s(n_bytes: float, ranks: int, gpu: GPU) -> float:
    return COLLECTIVE_LATENCY_S + 2 * (ranks - 1) / ranks * n_bytes / (gpu.nvlink_busbw_gbs * 1e9)


def send_s(n_bytes: float, gpu: GPU) -> float:
    return COLLECTIVE_LATENCY_S + n_bytes / (gpu.network_gbs * 1e9)


def allgather_s(n_bytes: float, ranks: int, gpu: GPU) -> float:
    """n_bytes gathered from ranks slices over NVLink (each rank receives (ranks-1)/ranks of it)."""
    return COLLECTIVE_LATENCY_S + (ranks - 1) / ranks * n_bytes / (gpu.nvlink_busbw_gbs * 1e9)


def stage_traffic(
    cfg: ModelConfig, layers: int, tokens: int, tp: int, first: bool, last: bool, itemsize: int = 2
) -> dict[str, tuple[int, float]]:
    """{exchange: (calls, tensor bytes a call)} of one tp rank of a stage of `layers` layers in a
    forward of `tokens` tokens (moe/parallel/serving.py does these):
        all_reduce   two a layer when tp > 1 (attention's output, the experts' combined output), [tokens, d]
        send         to the next stage, this rank's 1/tp slice of [tokens, d] (not on the last stage)
        all_gather   the stage's input [tokens, d] rebuilt from the tp slices (tp > 1, not on the first)"""
    act = tokens * cfg.d_model * itemsize
    return {
        "all_reduce": (2 * layers if tp > 1 else 0, act),
        "send": (0 if last else 1, act / tp),
        "all_gather": (1 if tp > 1 and not first else 0, act),
    }


def stage_comm_s(traffic: dict[str, tuple[int, float]], tp: int, gpu: GPU) -> float:
    """The seconds of a stage_traffic, the exchanges not overlapped with compute."""
    time_of = {
        "all_reduce": lambda n: allreduce_s(n, tp, gpu),
        "send": lambda n: send_s(n, gpu),
        "all_gather": lambda n: allgather_s(n, tp, gpu),
    }
    return sum(calls * time_of[kind](n) for kind, (calls, n) in traffic.items())


def head_s(cfg: ModelConfig, gpu: GPU, tokens: int, tp: int) -> float:
    """The output head's 1/tp shard (vocab-parallel) on the last stage."""
    n = cfg.vocab_size * cfg.d_model / tp
    return max(2 * tokens * n / gpu.flops, 2 * n / gpu.bytes_per_s)


def inference_weights_bytes(cfg: ModelConfig, tp: int, pp: int) -> float:
    """bf16 weights on one GPU of the heaviest stage."""
    return 2 * worst_stage(stage_memory(cfg, Layout(tp=tp, pp=pp))).params


def kv_bytes_per_sequence(cfg: ModelConfig, tp: int, pp: int, context: int) -> float:
    """One sequence's K/V cache on one GPU: the stage's layers, its K/V heads (a single one replicated)."""
    return math.ceil(cfg.n_layers / pp) * _kv_bytes_per_position(cfg, kv_heads_held(cfg, tp)) * context


def max_microbatch(cfg: ModelConfig, gpu: GPU, tp: int, pp: int, context: int) -> int:
    """The largest b whose pp * b sequences' K/V cache fits beside the weights (0: not even one)."""
    free = 0.9 * gpu.memory_gb * 1e9 - inference_weights_bytes(cfg, tp, pp)
    return max(0, int(free // (pp * kv_bytes_per_sequence(cfg, tp, pp, context))))


def prefill_latency_s(cfg: ModelConfig, gpu: GPU, layer_s: float, tokens: int, tp: int = 8, pp: int = 16) -> float:
    """One prompt alone through all stages (time to first token): every layer, every stage's
    exchanges (stage_traffic), and the head for the last position."""
    stages = stage_layers(cfg.n_layers, pp)
    return sum(
        len(s) * layer_s + stage_comm_s(stage_traffic(cfg, len(s), tokens, tp, i == 0, i == pp - 1), tp, gpu)
        for i, s in enumerate(stages)
    ) + head_s(cfg, gpu, 1, tp)


@dataclass(frozen=True)
class DecodePoint:
    gpu: str
    context: int
    b: int  # sequences per microbatch
    users: int  # pp * b sequences decoding at once
    latency_ms: float  # per output token, for one user
    tokens_per_s_user: float
    tokens_per_s: float  # the whole cluster
    usd_per_1k_tokens: float
    fits: bool  # the users' KV cache fits in memory


def decode_point(
    cfg: ModelConfig, gpu: GPU, layer_s: float, b: int, context: int, tp: int = 8, pp: int = 16
) -> DecodePoint:
    """The cluster model of the module doc at one microbatch size, given t_L(b, context)."""
    stages = [
        len(s) * layer_s + stage_comm_s(stage_traffic(cfg, len(s), b, tp, i == 0, i == pp - 1), tp, gpu)
        for i, s in enumerate(stage_layers(cfg.n_layers, pp))
    ]
    stages[-1] += head_s(cfg, gpu, b, tp)
    stage = max(stages)
    latency = pp * stage
    tokens_per_s = b / stage
    usd = tp * pp * gpu.price_per_hour / 3600 / tokens_per_s * 1000
    return DecodePoint(
        gpu.name,
        context,
        b,
        pp * b,
        1e3 * latency,
        1 / latency,
        tokens_per_s,
        usd,
        b <= max_microbatch(cfg, gpu, tp, pp, context),
    )


def weight_bound_batch(shard: ModelConfig, gpu: GPU, context: int) -> dict[str, float]:
    """Where each expert's weight reads stop dominating a decode layer, per microbatch of b sequences:
    compute: rows per expert (b k / E) reach the ridge point peak / bandwidth (FLOP per byte: a row
             does 2 FLOP per 2-byte weight), so the grouped matmul turns compute-bound;
    kv:      the K/V cache read (b * context positions) outgrows the experts' weight bytes."""
    ridge = gpu.flops / gpu.bytes_per_s
    expert_bytes = 2 * layer_params(shard)["expert"] * shard.n_experts
    kv_per_seq = _kv_bytes_per_position(shard) * (context + 1)
    return dict(compute=ridge * shard.n_experts / shard.top_k, kv=expert_bytes / kv_per_seq)


@dataclass(frozen=True)
class TrainEstimate:
    gpu: str
    gpus: int  # used: tp * pp * dp
    dp: int
    microbatches: int
    recompute: bool
    step_s: float
    mfu: float
    days: float
    days_at_leak_mfu: tuple[float, float] | None


def train_estimate(
    cfg: ModelConfig,
    gpu: GPU,
    n_gpus: int,
    layer_fwd_bwd_s: float,
    tokens: int = TRAIN_SEQ,
    tp: int = 8,
    pp: int = 15,
    leak_mfu: tuple[float, float] | None = None,
) -> TrainEstimate:
    """The training model of the module doc, given t_L for forward+backward of one microbatch of
    `tokens` tokens (one sequence) on one GPU."""
    dp = n_gpus // (tp * pp)
    used = tp * pp * dp
    m = max(1, round(LEAK_TRAIN_BATCH_TOKENS / dp / tokens))
    lay = Layout(tp=tp, pp=pp, dp=dp, microbatches=m)
    worst = worst_stage(stage_memory(cfg, lay))
    state = 4 * worst.params + 12 * worst.params / dp  # bf16 weights and gradients, ZeRO-1 fp32 master and moments
    activations = activation_bytes_per_token_layer(cfg, lay) * tokens * worst.layers * min(pp, m)
    recompute = state + activations > 0.9 * gpu.memory_gb * 1e9
    layer = layer_fwd_bwd_s * (4 / 3 if recompute else 1) + 4 * allreduce_s(tokens * cfg.d_model * 2, tp, gpu)
    stage = worst.layers * layer + send_s(2 * tokens * cfg.d_model * 2 / tp, gpu)  # activations and their gradients
    step = (m + pp - 1) * stage
    mfu = _train_flops_per_token(cfg) * m * tokens * dp / (step * used * gpu.peak_tflops * 1e12)
    days = TRAIN_TOKENS / (m * tokens * dp / step) / 86400
    at_leak = None if leak_mfu is None else tuple(_days_at_full_mfu(cfg, gpu, used) / u for u in leak_mfu)
    return TrainEstimate(gpu.name, used, dp, m, recompute, step, mfu, days, at_leak)


def _train_flops_per_token(cfg: ModelConfig) -> float:
    """Model FLOPs: 3x forward, causal attention over half the training sequence on average."""
    return 3 * forward_flops_per_token(cfg, TRAIN_SEQ / 2)


def _days_at_full_mfu(cfg: ModelConfig, gpu: GPU, n_gpus: int) -> float:
    """Days for 13T tokens at 100% MFU; days at any MFU are this / MFU."""
    return _train_flops_per_token(cfg) * TRAIN_TOKENS / (n_gpus * gpu.peak_tflops * 1e12 * 86400)


def implied_mfu(cfg: ModelConfig, gpu: GPU, n_gpus: int, days: float) -> float:
    """The MFU at which n_gpus finish 13T tokens of this config in `days`."""
    return _days_at_full_mfu(cfg, gpu, n_gpus) / days


def context_rows(cfg: ModelConfig, contexts=(8192, 32768), tp: int = 8, pp: int = 16) -> list[tuple[str, ...]]:
    """What a longer context costs at inference, per context: (quantity, value at each context, how).
    The leak: pretraining at 8k, a 32k version fine-tuned from it, and "the 32k seqlen GPT-4 definitely
    cannot run on 40GB A100s"."""
    weights = inference_weights_bytes(cfg, tp, pp)
    rows = [
        (
            "K/V cache per sequence, whole model (bf16)",
            *(f"{kv_cache_bytes_per_token(cfg) * c / 2**30:.3g} GiB" for c in contexts),
            f"{cfg.n_layers} layers x {cfg.n_kv_heads} K/V head(s) x {cfg.head_dim} x 2 (K and V)"
            " x 2 bytes per position",
        ),
        (
            f"  on one GPU of tp {tp} x pp {pp}",
            *(f"{kv_bytes_per_sequence(cfg, tp, pp, c) / 2**20:.3g} MiB" for c in contexts),
            f"a stage's {math.ceil(cfg.n_layers / pp)} layers; the single K/V head is replicated over tp",
        ),
    ]
    for gpu in (GPUS["A100"], GPUS["H100"]):
        rows.append(
            (
                f"  largest decode microbatch b on {gpu.name}",
                *(
                    f"{max_microbatch(cfg, gpu, tp, pp, c)} (users {pp * max_microbatch(cfg, gpu, tp, pp, c)})"
                    for c in contexts
                ),
                f"pp b sequences' K/V beside {weights / 1e9:.1f} GB of weights in 90% of {gpu.memory_gb:g} GB",
            )
        )
    mha = replace(cfg, n_kv_heads=cfg.n_heads)  # the K/V the leak's "55B shared attention" implies
    a100 = GPUS["A100"]
    rows.append(
        (
            f"  ... with {cfg.n_heads} K/V heads (multi-head) on {a100.name}",
            *(str(max_microbatch(mha, a100, tp, pp, c)) for c in contexts),
            f"the same with multi-head K/V ({inference_weights_bytes(mha, tp, pp) / 1e9:.1f} GB of weights): "
            "0 means not one sequence fits",
        )
    )
    rows.append(
        (
            "attention share of forward FLOPs per token",
            *(f"{attention_flops_per_token(cfg, c) / forward_flops_per_token(cfg, c):.1%}" for c in contexts),
            "4 layers heads head_dim context / (2 matmul params + that), at the last position of a full context",
        )
    )
    return rows


# --- weight-only quantized serving ------------------------------------------------------------------


def expert_weight_bytes(cfg: ModelConfig, scheme: str) -> float:
    """Bytes per expert weight stored as kernels/quantized.py does: bf16 2; int8 / fp8 1 plus a float32
    scale per output column (per expert: F for the up/gate matrices, D for down); int4 half a byte
    plus a float32 scale per group of 128 along the input."""
    d, f = cfg.d_model, cfg.d_ff
    per_matrix_scales = {
        "bf16": 0.0,
        "int8": 4 * (f + d) / (2 * d * f),
        "fp8": 4 * (f + d) / (2 * d * f),
        "int4": 4 / 128,
    }[scheme]
    return {"bf16": 2.0, "int8": 1.0, "fp8": 1.0, "int4": 0.5}[scheme] + per_matrix_scales


def quantized_rows(
    cfg: ModelConfig, tp: int = 8, pp: int = 16, context: int = 8192, batches=(1, 64)
) -> list[tuple[str, ...]]:
    """Weight-only quantization at inference (tp x pp): bytes per GPU and the decode roofline per token,
    at bf16, int8 / fp8 and int4 expert weights. The leak: "less than 30GB per GPU at FP16 and less
    than 15GB at FP8/int8"."""
    worst = worst_stage(stage_memory(cfg, Layout(tp=tp, pp=pp)))
    shard = shard_shape(cfg, tp)
    widths = ("bf16", "int8", "int4")
    rows = [
        (
            "expert weights per GPU (worst stage)",
            *(f"{worst.expert_params * expert_weight_bytes(cfg, w) / 1e9:.1f} GB" for w in widths),
            "the rest stays bf16 (below)",
        ),
        (
            "all weights per GPU, experts quantized",
            *(
                f"{(worst.expert_params * expert_weight_bytes(cfg, w) + 2 * worst.dense_params) / 1e9:.1f} GB"
                for w in widths
            ),
            "leak: < 30 GB at fp16, < 15 GB at fp8/int8 (weights only, before the K/V cache)",
        ),
        (
            "all weights per GPU, everything at that width",
            *(f"{worst.params * expert_weight_bytes(cfg, w) / 1e9:.1f} GB" for w in widths),
            "attention, embedding and head quantized too",
        ),
    ]
    for gpu in (GPUS["H100"], GPUS["A100"]):
        for b in batches:
            times = [
                decode_point(
                    cfg,
                    gpu,
                    roofline_layer(shard, gpu, b, context, b, expert_bytes=expert_weight_bytes(cfg, w)),
                    b,
                    context,
                    tp,
                    pp,
                ).latency_ms
                for w in widths
            ]
            rows.append(
                (
                    f"decode per token, b={b}, {context // 1024}k context, {gpu.name}",
                    *(f"{t:.1f} ms" for t in times),
                    f"roofline x {tp * pp} GPUs; {times[0] / times[1]:.2f}x "
                    f"faster at int8, {times[0] / times[2]:.2f}x at int4",
                )
            )
    return rows
