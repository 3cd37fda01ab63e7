"""A parallel layout: how many ways each axis splits the model and the batch. Imports no torch.

    dp  data parallel: replicas that see different sequences; gradients are averaged. Both shardings
        run on FSDP2: "zero1" gathers the weights once per step (2x the parameter bytes of traffic)
        and shards gradients and optimizer state; "fsdp" also frees and re-gathers them around
        each block (3x, the least memory).
    ep  expert parallel: a rank holds n_experts / ep experts of every layer and tokens travel to
        their expert's rank by all-to-all. The ep ranks also see different sequences, so for
        everything but the experts they are data parallel too (the "data" group is dp x ep ranks).
    tp  tensor parallel: query heads and each expert's d_ff are split; the tp ranks see the same
        tokens. A single K/V head (multi-query) is replicated on every tp rank.
    pp  pipeline parallel: the layers are split into pp stages and the batch into microbatches.

world size = pp * dp * ep * tp. Ranks are laid out in that order, tp innermost (its collectives are
the most frequent, so on a cluster they stay inside a node), pp outermost.

A step always means: the global batch of `batch_size` sequences, cut into `microbatches`, each cut
into dp * ep data shards; the loss is the mean over the microbatches. With pp = 1 the microbatches are
gradient accumulation, so any layout computes the same step as one process.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from moe.config import ModelConfig, from_dict, read_table

SCHEDULES = ("1f1b", "gpipe", "interleaved-1f1b", "zero-bubble")
INTERLEAVED = ("interleaved-1f1b", "zero-bubble")  # several chunks of layers a rank (virtual_stages >= 2)
SHARDINGS = ("zero1", "fsdp")
AXES = ("pp", "dp", "ep", "tp")  # outermost first


@dataclass(frozen=True)
class Layout:
    dp: int = 1
    tp: int = 1
    ep: int = 1
    pp: int = 1
    microbatches: int = 1  # per data shard and step: pipeline microbatches, or gradient accumulation
    schedule: str = "1f1b"  # pipeline schedule: "1f1b" or "gpipe" (the same bubble, different memory), or
    #                         an interleaved one (virtual_stages >= 2): "interleaved-1f1b" or "zero-bubble"
    first_stage_layers: int = 0  # 0: split the layers evenly; else the first stage (which also holds
    #                              the embedding) gets this many and the rest are split evenly
    sharding: str = "zero1"  # data parallel, both on FSDP2: "zero1" (weights gathered once per step;
    #                          gradients and optimizer state sharded) or "fsdp" (also re-gathered for backward)
    virtual_stages: int = 1  # "interleaved-1f1b", "zero-bubble": model chunks per pipeline rank; stage s (of pp x this)
    #                          runs on rank s % pp, so each rank holds every pp-th chunk of layers

    def __post_init__(self) -> None:
        for name in (*AXES, "microbatches", "virtual_stages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"layout: {name} must be a positive integer, got {value!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"layout: schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.sharding not in SHARDINGS:
            raise ValueError(f"layout: sharding must be one of {SHARDINGS}, got {self.sharding!r}")
        if (
            isinstance(self.first_stage_layers, bool)
            or not isinstance(self.first_stage_layers, int)
            or self.first_stage_layers < 0
        ):
            raise ValueError(f"layout: first_stage_layers must be an integer >= 0, got {self.first_stage_layers!r}")
        if self.virtual_stages > 1 and self.pp == 1:
            raise ValueError(
                f"layout: virtual_stages={self.virtual_stages} interleaves pipeline stages: it needs pp > 1"
            )
        if (self.schedule in INTERLEAVED) != (self.virtual_stages > 1):
            raise ValueError(
                f"layout: schedule {self.schedule!r} with virtual_stages={self.virtual_stages}: the interleaved "
                f"schedules {INTERLEAVED} run several chunks per rank (virtual_stages >= 2), and only they do"
            )

    @property
    def stages(self) -> int:
        """Pipeline stages in all: pp, or pp x virtual_stages chunks when interleaved."""
        return self.pp * self.virtual_stages

    @property
    def world_size(self) -> int:
        return self.pp * self.dp * self.ep * self.tp

    @property
    def data_shards(self) -> int:
        """Ranks that see different sequences within a pipeline stage and tensor-parallel group."""
        return self.dp * self.ep

    def describe(self) -> str:
        parts = [f"{a}={getattr(self, a)}" for a in ("dp", "ep", "tp", "pp") if getattr(self, a) > 1] or ["single"]
        if self.microbatches > 1:
            parts.append(f"microbatches={self.microbatches}")
        if self.pp > 1:
            parts.append(self.schedule + (f"x{self.virtual_stages}" if self.virtual_stages > 1 else ""))
        if self.data_shards > 1:
            parts.append(self.sharding)
        return ",".join(parts)

    def check(self, cfg: ModelConfig, world_size: int | None = None, batch_size: int | None = None) -> None:
        """Raise a ValueError naming the first degree that does not fit what it splits, then the world."""
        if cfg.n_heads % self.tp:
            raise ValueError(f"tp={self.tp} must divide n_heads={cfg.n_heads} (tensor parallelism splits query heads)")
        if cfg.n_kv_heads > 1 and cfg.n_kv_heads % self.tp:
            raise ValueError(
                f"tp={self.tp} must divide n_kv_heads={cfg.n_kv_heads}, or n_kv_heads must be 1 "
                "(a single K/V head is replicated)"
            )
        if cfg.d_ff % self.tp:
            raise ValueError(f"tp={self.tp} must divide d_ff={cfg.d_ff} (tensor parallelism splits each expert)")
        if cfg.n_experts % self.ep:
            raise ValueError(f"ep={self.ep} must divide n_experts={cfg.n_experts}")
        unsplit = {  # what the tensor- and expert-parallel layers do not split yet
            "qk_norm 'projection' (a norm over all heads)": self.tp > 1 and cfg.qk_norm == "projection",
            "attention_sinks": self.tp > 1 and cfg.attention_sinks,
            "out_bias": self.tp > 1 and cfg.out_bias,
            "expert_bias": (self.tp > 1 or self.ep > 1) and cfg.expert_bias,
        }
        refused = [name for name, bad in unsplit.items() if bad]
        if refused:
            raise ValueError(
                f"tp={self.tp} x ep={self.ep} cannot split {', '.join(refused)} yet: run it with tp = ep = 1"
            )
        if (cfg.capacity_factor or not cfg.causal_routing) and (self.data_shards > 1 or self.microbatches > 1):
            # The capacity is counted per batch a router sees (ceil(cf * T * k / E)), so splitting the
            # step's batch into shards or microbatches would change which assignments are dropped.
            raise ValueError(
                f"capacity_factor={cfg.capacity_factor} (router_rule {cfg.router_rule}) needs the whole "
                "batch routed at once, but "
                f"dp={self.dp} x ep={self.ep} x microbatches={self.microbatches} split it: the drops "
                "would depend on the split; use dropless routing (capacity_factor = 0)"
            )
        if self.pp > 1 and cfg.tie_embeddings:
            raise ValueError(
                "pipeline parallelism needs untied embeddings: the embedding and the output head "
                "live on different stages"
            )
        if self.stages > cfg.n_layers and self.virtual_stages > 1:
            raise ValueError(
                f"pp={self.pp} x virtual_stages={self.virtual_stages} = {self.stages} stages need at least "
                f"{self.stages} layers, the model has {cfg.n_layers}"
            )
        stage_layers(cfg.n_layers, self.stages, self.first_stage_layers)
        rounds = max(1, self.microbatches // self.pp)
        if self.virtual_stages > 1 and self.microbatches % rounds:
            raise ValueError(
                f"{self.schedule} runs microbatches in {rounds} rounds of pp={self.pp} or more: microbatches="
                f"{self.microbatches} must be a multiple of {rounds} (e.g. a multiple of pp)"
            )
        per_step = self.data_shards * self.microbatches
        if batch_size is not None and batch_size % per_step:
            raise ValueError(f"batch_size={batch_size} must be divisible by dp x ep x microbatches = {per_step}")
        if world_size is not None and self.world_size != world_size:
            raise ValueError(
                f"layout dp={self.dp} x ep={self.ep} x tp={self.tp} x pp={self.pp} = {self.world_size} "
                f"processes, but the world size is {world_size}"
            )


def stage_layers(n_layers: int, pp: int, first: int = 0) -> list[range]:
    """The layers of each pipeline stage. Even split, the remainder going one layer each to the
    stages after the first (which also holds the embedding); or, with `first`, that many layers on
    the first stage and the rest split the same way among the others."""
    if pp > n_layers:
        raise ValueError(f"pp={pp} stages need at least {pp} layers, the model has {n_layers}")
    if first and pp == 1:
        raise ValueError(f"first_stage_layers={first} needs pp > 1")
    if first and n_layers - first < pp - 1:
        raise ValueError(
            f"first_stage_layers={first} leaves fewer than one layer for each of the other "
            f"{pp - 1} stages ({n_layers} layers)"
        )
    if first:
        counts = [first, *_even(n_layers - first, pp - 1)]
    else:
        base, extra = divmod(n_layers, pp)
        counts = [base + (1 <= i <= extra) for i in range(pp)]
    starts = [sum(counts[:i]) for i in range(pp)]
    return [range(s, s + c) for s, c in zip(starts, counts)]


def rank_chunks(n_layers: int, lay: Layout) -> list[list[range]]:
    """Per pipeline rank, the layers of each stage it runs: stage s of lay.stages on rank s % pp
    (one stage a rank unless interleaved)."""
    stages = stage_layers(n_layers, lay.stages, lay.first_stage_layers)
    return [stages[r :: lay.pp] for r in range(lay.pp)]


def _even(n: int, parts: int) -> list[int]:
    base, extra = divmod(n, parts)
    return [base + (i < extra) for i in range(parts)]


def bubble_fraction(pp: int, microbatches: int, virtual_stages: int = 1) -> float:
    """Idle share of a step for GPipe and for 1F1B alike: (p - 1) / (m + p - 1). 1F1B saves
    activation memory (at most p microbatches in flight instead of m), not time. Interleaved 1F1B
    with v chunks per rank cuts the bubble v times: (p - 1) / (v m + p - 1) (Megatron-LM). Zero bubble
    (torch's interleaved zero bubble) splits each backward into its input and weight gradients and runs
    weight gradients in that bubble: the formula is its upper bound."""
    return (pp - 1) / (virtual_stages * microbatches + pp - 1)


def parse_layout(text: str, **defaults) -> Layout:
    """'tp=8,pp=15,dp=208[,ep=1,microbatches=16,schedule=gpipe,first_stage_layers=4,sharding=fsdp,virtual_stages=2]'."""
    values, seen = dict(defaults), set()
    names = {f.name: f.type for f in dataclasses.fields(Layout)}
    aliases = {"mb": "microbatches", "first": "first_stage_layers"}
    if not text.strip():
        raise ValueError("layout: empty; give key=value pairs, e.g. tp=8,pp=15,dp=208")
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ValueError(f"layout: an empty entry between commas in {text!r}")
        if "=" not in part:
            raise ValueError(f"layout: {part!r} is not key=value (e.g. tp=8,pp=15,dp=208)")
        key, value = (s.strip() for s in part.split("=", 1))
        key = aliases.get(key, key)
        if key not in names:
            raise ValueError(f"layout: unknown key {key!r}; keys: {', '.join(names)}")
        if key in seen:
            raise ValueError(f"layout: {key} is given twice in {text!r}")
        seen.add(key)
        values[key] = value if key in ("schedule", "sharding") else _int(key, value)
    return Layout(**values)


def load_layout(name_or_path, **overrides) -> Layout:
    """The `[parallel]` table of a preset or TOML file (all 1 if absent), with overrides (None: keep)."""
    values = {**read_table(name_or_path, "parallel"), **{k: v for k, v in overrides.items() if v is not None}}
    return from_dict(Layout, values, f"[parallel] of {str(name_or_path)!r}")


def _int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"layout: {key} must be an integer, got {value!r}") from None
