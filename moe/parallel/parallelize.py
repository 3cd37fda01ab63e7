"""Apply a Layout (moe/layout.py) to a finished model on torch.distributed, from outside: the device
mesh and its groups, tensor and expert parallelism as DTensor shards (and ParallelExperts installed
in each MoE layer's seam), FSDP2 for data parallelism (both shardings), and the gradient scaling and
clipping that go with them. The model itself imports nothing from here.

The model arrives built on the meta device (no storage): parallelize only decides each tensor's
shards, and the trainer then allocates this rank's shards and initialises them from per-parameter
random streams (moe/model/init.py), so a layout starts from exactly the weights one process would
train and no rank ever allocates the whole model.

Where each parameter lives, and who else holds the same local tensor (its replica group):

    parameter                         split over          replica group (FSDP2 shards it over this)
    experts w_up/w_gate/w_down        ep (dim 0), tp (F)  dp
    attention wq / wo                 tp (heads)          dp x ep ("data")
    shared expert up, gate / down     tp (F)              dp x ep
    K/V (one head), norms, router,    nothing             dp x ep; the tp ranks compute identical
    (its bias, score bias), shared gate
    embedding, head                                       gradients (moe/parallel/collectives.py)
    (each stage's layers only)        pp

Data parallelism is FSDP2 in both shardings, each parameter sharded over its replica group, one
unit per block (its bucket: all-gathered before the block's forward, its gradients reduce-scattered
as soon as its backward is done, overlapping the next block's):
    "zero1"  reshard_after_forward=False: the weights are gathered once per step and stay whole until
             backward ends, so the step's traffic is one all-gather and one reduce-scatter, 2x the
             parameter bytes, as ZeRO-1 by reduce-scatter and all-gather; the gradients and AdamW's
             state are sharded (ZeRO-2's memory), the weights too between steps.
    "fsdp"   reshard_after_forward=True (ZeRO-3): the weights are freed after each block's forward and
             gathered again for its backward, 3x the parameter bytes, for the least memory.
FSDP2 averages over its mesh; the experts' gradients are divided by ep as well (sync_gradients),
since their local gradient already holds the ep ranks' tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from moe.layout import AXES, Layout
from moe.parallel.collectives import copy_to_group, reduce_from_group
from moe.parallel.expert_parallel import ParallelExperts

EXPERT_WEIGHTS = ("w_up", "w_gate", "w_down")


@dataclass
class Parallel:
    """One rank's place in the layout: its coordinates and the process groups it belongs to."""

    layout: Layout
    mesh: DeviceMesh  # dims ("pp", "dp", "ep", "tp")
    dense_mesh: DeviceMesh  # dims ("pp", "data", "tp"), data = dp x ep: the non-expert parameters' mesh
    device: torch.device
    rank: dict  # {"pp": i, "dp": j, "ep": k, "tp": l}
    groups: dict  # the same keys, plus "data": this rank's dp x ep group

    @property
    def data_rank(self) -> int:
        """Which of the dp x ep data shards of the batch this rank trains on."""
        return self.rank["dp"] * self.layout.ep + self.rank["ep"]

    @property
    def first_stage(self) -> bool:
        return self.rank["pp"] == 0

    @property
    def last_stage(self) -> bool:
        return self.rank["pp"] == self.layout.pp - 1


def init_parallel(layout: Layout, device: torch.device) -> Parallel:
    """Build the mesh for an initialized process group; every rank must call this together."""
    mesh = init_device_mesh(device.type, tuple(getattr(layout, a) for a in AXES), mesh_dim_names=AXES)
    coords = dict(zip(AXES, mesh.get_coordinate()))
    groups = {a: mesh.get_group(a) for a in AXES}
    # The dense parameters' mesh: the same ranks with dp x ep as one "data" dim, so that FSDP2 over it
    # composes with the tp DTensors built on its own "tp" dim (FSDP2 needs both from one root mesh).
    # (Flattening mesh["dp", "ep"] instead gave the same groups, but gloo processes then aborted at
    # exit about one run in ten.)
    dense = init_device_mesh(
        device.type, (layout.pp, layout.data_shards, layout.tp), mesh_dim_names=("pp", "data", "tp")
    )
    groups["data"] = dense.get_group("data")
    return Parallel(layout, mesh, dense, device, coords, groups)


def _is_expert(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in EXPERT_WEIGHTS


def parallelize(module: nn.Module, par: Parallel) -> nn.Module:
    """Split the blocks of `module` (the model, or this rank's pipeline Stage) over tp and ep, tell
    the routers to count tokens over the data group, and wrap in FSDP2 if the layout says so."""
    blocks = shard_blocks(module, par)
    if par.layout.data_shards > 1:
        for block in blocks:
            block.moe.router.count_group = par.groups["data"]
        _fully_shard(module, blocks, par)
    return module


def shard_blocks(module: nn.Module, par: Parallel) -> list[nn.Module]:
    """Split the attention heads and the experts of `module`'s blocks over tp and ep, in place (the
    split training and serving share); return the blocks."""
    lay = par.layout
    blocks = list(module.blocks.values() if isinstance(module.blocks, nn.ModuleDict) else module.blocks)
    tp_mesh, expert_mesh = par.dense_mesh["tp"], par.mesh["ep", "tp"]
    for block in blocks:
        if lay.tp > 1:
            # wo's output stays a partial sum, reduced by our own all-reduce (counted, as the
            # experts' are: moe/parallel/collectives.py), not inside DTensor.
            plan = {"wq": ColwiseParallel(), "wo": RowwiseParallel(output_layouts=Partial(), use_local_output=False)}
            if block.attn.n_kv_heads > 1:  # grouped-query: the K/V heads split like the query heads
                plan |= {"wk": ColwiseParallel(), "wv": ColwiseParallel()}
            else:  # one K/V head, computed on every tp rank; each rank's query heads give part of its gradient
                for lin in (block.attn.wk, block.attn.wv):
                    lin.register_forward_hook(lambda mod, inp, out, g=par.groups["tp"]: copy_to_group(out, g))
            parallelize_module(block.attn, tp_mesh, plan)
            block.attn.wo.register_forward_hook(lambda mod, inp, out, g=par.groups["tp"]: _reduced(out, g))
        moe = block.moe
        if lay.tp > 1 and moe.shared is not None:  # split like a dense MLP: column, then row parallel
            plan = {"up": ColwiseParallel(), "down": RowwiseParallel(output_layouts=Partial(), use_local_output=False)}
            if moe.shared.gate is not None:
                plan["gate"] = ColwiseParallel()
            parallelize_module(moe.shared, tp_mesh, plan)
            moe.shared.down.register_forward_hook(lambda mod, inp, out, g=par.groups["tp"]: _reduced(out, g))
        if lay.ep > 1 or lay.tp > 1:
            for name in EXPERT_WEIGHTS:
                w = getattr(moe, name)
                if w is not None:  # [E, D, F] split on F (dim 2); w_down [E, F, D] on dim 1
                    f_dim = 1 if name == "w_down" else 2
                    shard = distribute_tensor(w.detach(), expert_mesh, [Shard(0), Shard(f_dim)])
                    setattr(moe, name, nn.Parameter(shard))
            moe.experts = ParallelExperts(
                moe.cfg.activation,
                moe.cfg.expert_backend,
                moe.cfg.n_experts,
                par.groups["ep"],
                lay.ep,
                par.groups["tp"],
                lay.tp,
            )
    return blocks


def _reduced(partial: DTensor, group) -> torch.Tensor:
    """A row-parallel output's partial sums, summed over the tp group; its gradient, the same
    (replicated) tensor on every rank, flows back to each rank's partial sum as it is."""
    return reduce_from_group(partial.to_local(grad_placements=[Replicate()]), group)


def _fully_shard(module, blocks, par: Parallel) -> None:
    """FSDP2 over each parameter's replica group: the experts over dp, everything else over dp x ep
    (the "data" dim of the dense mesh, so that tp's DTensors compose with it: FSDP2 x tp)."""
    from torch.distributed.fsdp import fully_shard

    reshard = par.layout.sharding == "fsdp"
    dense, experts = par.dense_mesh["data"], par.mesh["dp"]
    kw = {
        mesh: dict(mesh=mesh, reshard_after_forward=reshard, shard_placement_fn=partial(shard_dim, n=mesh.size()))
        for mesh in (dense, experts)
    }
    for block in blocks:
        if par.layout.ep > 1:
            fully_shard(block.moe.router, **kw[dense])  # first, so the next unit holds only the experts
            for dense_part in (block.moe.shared, block.moe.shared_gate):  # every data shard trains these
                if dense_part is not None:
                    fully_shard(dense_part, **kw[dense])
            fully_shard(block.moe, **kw[experts])  # a slice of the experts' DTensor mesh
        fully_shard(block, **kw[dense])
    # The roots FSDP2 gathers the rest (embedding, norm, head) in: the module, or each stage an
    # interleaved schedule runs (the rank's Stage holding them all is never called itself).
    from moe.parallel.pipeline import Stage

    for root in module.chunks() if isinstance(module, Stage) else [module]:
        fully_shard(root, **kw[dense])


def shard_dim(p: nn.Parameter, n: int) -> Shard:
    """Where FSDP2 cuts a parameter over n ranks. Its default, dim 0, may be unevenly split (the first
    ranks take a row more), but is only 16 long for the experts and the router, or one head for a
    single K/V head: over more ranks than that, the first ones would hold a row each and the rest
    nothing. Then take the longest dimension that n divides (FSDP2 splits no other unevenly); if
    none does, dim 0 all the same (`figures --simulate` shows the imbalance)."""
    shape = local_tensor(p).shape
    if shape[0] >= n:
        return Shard(0)
    even = [d for d in range(len(shape)) if shape[d] % n == 0]
    return Shard(max(even, key=lambda d: (shape[d], -d)) if even else 0)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's storage of a DTensor (for in-place updates outside autograd), or the tensor itself."""
    return t._local_tensor if isinstance(t, DTensor) else t


@torch.no_grad()
def sync_gradients(module: nn.Module, par: Parallel) -> None:
    """Finish averaging the gradients over the dp x ep data shards: FSDP2 reduce-scattered them during
    backward, averaging over each parameter's replica group; the experts' (replica group dp) also
    need 1/ep. (set_gradient_divide_factor would do it in the reduce-scatter, but needs PREMUL_SUM,
    which gloo lacks.)"""
    if par.layout.data_shards == 1 or par.layout.ep == 1:
        return
    for name, p in module.named_parameters():
        if p.grad is not None and _is_expert(name):
            local_tensor(p.grad).div_(par.layout.ep)


def _copies(t: torch.Tensor, par: Parallel) -> int:
    """How many ranks of this stage hold the same local tensor as this one."""
    per_stage = par.layout.world_size // par.layout.pp
    if not isinstance(t, DTensor):
        return per_stage
    shards = math.prod(t.device_mesh.size(i) for i, pl in enumerate(t.placements) if not pl.is_replicate())
    return per_stage // shards


@torch.no_grad()
def clip_grad_norm(module: nn.Module, par: Parallel, max_norm: float) -> float:
    """Clip by the norm of the whole model's gradient, however it is split: each local square sum is
    divided by the number of ranks holding the same tensor, then summed over the world."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    sq = torch.zeros((), dtype=torch.float64, device=par.device)
    for g in grads:
        sq += local_tensor(g).double().pow(2).sum() / _copies(g, par)
    dist.all_reduce(sq)
    norm = float(sq.sqrt())
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads:
            local_tensor(g).mul_(scale)
    return norm
