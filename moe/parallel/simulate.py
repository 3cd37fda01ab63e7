"""A layout at full scale without the hardware: one rank of every distinct pipeline stage, built as
the trainer builds it (the model on the meta device, its stage, tp / ep DTensors, FSDP2), in a world
of torch.distributed's fake process group (every rank's bookkeeping, no communication), then the
bytes it would hold read off its actual sharded tensors.

`python -m moe figures --config gpt4 --layout tp=8,pp=15,dp=208 --simulate` prints them beside the
arithmetic (moe/estimates/layout_memory.py). The simulated rank of stage s is the first of that
stage (dp, ep and tp rank 0): FSDP2 gives any remainder of an uneven split to the first ranks, so
it holds the most.

Bytes follow this code base's training (fp32 weights under bf16 autocast, AdamW): per parameter
element held, 4 B weight and 4 B gradient (FSDP2 gives the gradient its parameter's shard), and
AdamW's moments as the optimizer allocates them (its state template, measured); and, during a
step, the weights gathered: the stage's whole (tp / ep) share with "zero1",
the embedding / head and two blocks (one computing, one prefetched) with "fsdp".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from moe.config import ModelConfig, TrainConfig
from moe.estimates.layout_memory import stage_memory
from moe.estimates.units import binary_bytes, si
from moe.layout import Layout, rank_chunks
from moe.model import MoETransformer
from moe.parallel.parallelize import init_parallel, parallelize
from moe.parallel.pipeline import build_stage
from moe.parallel.zero import ShardedAdamW

DATA_DIMS = ("data", "dp")  # the mesh dims FSDP2 shards over; the others are tp / ep splits


@dataclass(frozen=True)
class SimulatedRank:
    stage: int
    rank: int
    layers: int
    gathered: int  # parameter elements this rank computes with (its tp / ep share of the stage)
    sharded: int  # parameter elements it keeps between steps (its FSDP2 shard of those)
    edge: int  # of `gathered`, those outside the blocks (embedding, final norm, head)
    largest_block: int  # the most gathered elements of one block
    optimizer_bytes: int  # AdamW's moments as the optimizer creates them (state_template), on this rank

    def gathered_for_step(self, lay: Layout) -> int:
        """Elements gathered whole during a step: all with "zero1", the edge and two blocks with "fsdp";
        none without data parallelism (the weights are whole already)."""
        if lay.data_shards == 1:
            return 0
        if lay.sharding == "zero1":
            return self.gathered
        return self.edge + 2 * self.largest_block


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _counts(t: torch.Tensor) -> tuple[int, int]:
    """(gathered, sharded) elements of one parameter on this rank."""
    if not isinstance(t, DTensor):
        return t.numel(), t.numel()
    names = t.device_mesh.mesh_dim_names or ()
    splits = 1
    for i, placement in enumerate(t.placements):
        if not placement.is_replicate() and names[i] not in DATA_DIMS:
            splits *= t.device_mesh.size(i)
    return t.numel() // splits, _local(t).numel()


def simulate(cfg: ModelConfig, layout: Layout) -> list[SimulatedRank]:
    """Build the first rank of every pipeline stage of `layout` on the meta device and count."""
    layout.check(cfg)
    measured = {}
    for stage, rank, par, module in _stage_ranks(cfg, layout):
        parallelize(module, par)  # on meta: shards decided, nothing allocated
        state = ShardedAdamW(module, TrainConfig()).state_template()
        optimizer_bytes = sum(
            _local(t).numel() * t.element_size() for s in state.values() for k, t in s.items() if k != "step"
        )
        gathered = sharded = 0
        for p in module.parameters():
            g, s = _counts(p)
            gathered, sharded = gathered + g, sharded + s
        blocks = list(module.blocks.values() if isinstance(module.blocks, torch.nn.ModuleDict) else module.blocks)
        per_block = [sum(_counts(p)[0] for p in b.parameters()) for b in blocks]
        measured[stage] = SimulatedRank(
            stage, rank, len(blocks), gathered, sharded, gathered - sum(per_block), max(per_block), optimizer_bytes
        )
    return _every_stage(measured, cfg, layout)


def simulation_rows(cfg: ModelConfig, layout: Layout) -> tuple[list[tuple], float]:
    """Per stage: measured against moe/estimates/layout_memory.py's arithmetic; and the seconds taken."""
    start = time.perf_counter()
    ranks = simulate(cfg, layout)
    seconds = time.perf_counter() - start
    rows, run = [], []
    for r, arith in zip(ranks, stage_memory(cfg, layout), strict=True):
        peak = 4 * r.sharded + 4 * r.sharded + r.optimizer_bytes + 4 * r.gathered_for_step(layout)
        want_peak = 16 * arith.sharded(layout) + 4 * arith.gathered(layout)
        row = (
            str(r.layers),
            si(r.gathered),
            _diff(r.gathered, arith.params),
            binary_bytes(2 * r.gathered),
            binary_bytes(4 * r.sharded),
            _diff(r.sharded, arith.sharded(layout)),
            binary_bytes(r.optimizer_bytes),
            _diff(r.optimizer_bytes, 8 * arith.sharded(layout)),
            binary_bytes(peak),
            _diff(peak, want_peak),
        )
        if rows and rows[-1][1:] == row:  # stages that measure the same share a row
            rows[-1] = (f"{run[0].stage}-{r.stage} (ranks {run[0].rank:,}..{r.rank:,})", *row)
        else:
            run = [r]
            rows.append((f"{r.stage} (rank {r.rank:,})", *row))
    return rows, seconds


def _diff(measured: float, arithmetic: float) -> str:
    return f"{(measured / arithmetic - 1):+.2%}" if arithmetic else "-"


# --- serving -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatedServingRank:
    stage: int
    rank: int
    layers: int
    weight_bytes: int  # bf16, read off its tp / ep shards as the serving engine splits them
    kv_bytes_per_position: int  # bf16, read off the paged K/V pool it would allocate


def simulate_serving(cfg: ModelConfig, layout: Layout) -> list[SimulatedServingRank]:
    """The first rank of every pipeline stage of a serving layout (moe/parallel/serving.py), built
    on the meta device in a fake world as `load_shard` builds it: its weights and one page of K/V."""
    from moe.model.transformer import install_paged_caches
    from moe.parallel.parallelize import shard_blocks
    from moe.parallel.serving import check_layout

    check_layout(cfg, layout, layout.world_size)
    measured = {}
    for stage, rank, par, module in _stage_ranks(cfg, layout):
        blocks = shard_blocks(module, par)
        weights = sum(_local(p).numel() for p in module.parameters()) * 2
        install_paged_caches(blocks, cfg, 1, 1, torch.bfloat16)
        kv = sum(b.attn.kv_cache.k.nbytes + b.attn.kv_cache.v.nbytes for b in blocks)
        measured[stage] = SimulatedServingRank(stage, rank, len(blocks), weights, kv)
    return _every_stage(measured, cfg, layout)


def _representatives(cfg: ModelConfig, layout: Layout) -> list[int]:
    """For each pipeline stage, the first stage built the same: as many layers, and the embedding
    (first stage) or the head (last) or neither. Every block of a model is built alike, so two such
    stages hold the same shapes, and only one of them needs building (gpt4 at pp=15: 3 of 15)."""
    kinds = [
        (tuple(map(len, chunks)), s == 0, s == layout.pp - 1)
        for s, chunks in enumerate(rank_chunks(cfg.n_layers, layout))  # interleaved: several a rank
    ]
    return [kinds.index(k) for k in kinds]


def _every_stage(measured: dict, cfg: ModelConfig, layout: Layout) -> list:
    """The measured representatives, one per pipeline stage, each under its own stage and rank."""
    step = layout.world_size // layout.pp
    return [replace(measured[r], stage=s, rank=s * step) for s, r in enumerate(_representatives(cfg, layout))]


def _stage_ranks(cfg: ModelConfig, layout: Layout):
    """(stage, rank, Parallel, its unsplit stage on meta) for the first rank of every distinct
    pipeline stage (see _representatives), each inside a fake process group of the layout's world
    that closes after it."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("a simulation needs a process without a process group: it creates fake ones")
    for stage in sorted(set(_representatives(cfg, layout))):
        rank = stage * (layout.world_size // layout.pp)
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=layout.world_size)
        try:
            par = init_parallel(layout, torch.device("cpu"))
            with torch.device("meta"):
                model = MoETransformer(cfg)
            yield stage, rank, par, (build_stage(model, layout, stage) if layout.pp > 1 else model)
        finally:
            dist.destroy_process_group()


def serving_rows(cfg: ModelConfig, layout: Layout, contexts=(8192, 32768)) -> tuple[list[tuple], float]:
    """Per distinct stage: weights and K/V per rank, and the sequences whose K/V fits beside the
    weights in 90% of each GPU at each context, against moe/estimates/cluster.py's arithmetic
    (pp microbatches of max_microbatch sequences); and the seconds taken."""
    from moe.estimates.cluster import GPUS, inference_weights_bytes, max_microbatch

    start = time.perf_counter()
    ranks = simulate_serving(cfg, layout)
    seconds = time.perf_counter() - start
    tp, pp = layout.tp, layout.pp
    rows, seen = [], set()
    heaviest = max((r.weight_bytes, r.kv_bytes_per_position) for r in ranks)  # what the arithmetic counts
    for r in ranks:
        key = (r.layers, r.weight_bytes, r.kv_bytes_per_position)
        if key in seen:
            continue
        seen.add(key)
        fits = []
        for gpu in (GPUS["A100"], GPUS["H100"]):
            for c in contexts:
                users = max(0, int((0.9 * gpu.memory_gb * 1e9 - r.weight_bytes) // (r.kv_bytes_per_position * c)))
                want = (
                    pp * max_microbatch(cfg, gpu, tp, pp, c)
                    if (r.weight_bytes, r.kv_bytes_per_position) == heaviest
                    else None
                )
                fits.append(f"{users:,}" + (f" ({want:,})" if want is not None else ""))
        rows.append(
            (
                f"{r.stage} (rank {r.rank:,})",
                str(r.layers),
                binary_bytes(r.weight_bytes),
                _diff(r.weight_bytes, inference_weights_bytes(cfg, tp, pp))
                if (r.weight_bytes, r.kv_bytes_per_position) == heaviest
                else "-",
                si(r.weight_bytes / 2 * tp * layout.ep),
                f"{r.kv_bytes_per_position / 2**10:.3g} KiB",
                *fits,
            )
        )
    return rows, seconds
