"""Apply a Layout (moe/layout.py) to a finished model on torch.distributed, from outside: the device
mesh and its groups, tensor and expert parallelism as DTensor shards (and ParallelExperts installed
in each MoE layer's seam), FSDP2, and the gradient synchronization and clipping that data
parallelism with ZeRO-1 needs. The model itself imports nothing from here.

The model arrives built on the meta device (no storage): parallelize only decides each tensor's
shards, and the trainer then allocates this rank's shards and initialises them from per-parameter
random streams (moe/model/init.py), so a layout starts from exactly the weights one process would
train and no rank ever allocates the whole model.

Where each parameter lives, and who else holds the same local tensor (its replica group):

    parameter                         split over          replica group (gradients averaged over it)
    experts w_up/w_gate/w_down        ep (dim 0), tp (F)  dp
    attention wq / wo                 tp (heads)          dp x ep ("data")
    K/V (one head), norms, router,    nothing             dp x ep; the tp ranks compute identical
    embedding, head                                       gradients (moe/parallel/collectives.py)
    (each stage's layers only)        pp

Gradients are averaged over dp x ep data shards: the replica group sums, and the sum is divided
by dp x ep also for the experts, whose local gradient already holds the ep ranks' tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from moe.layout import AXES, Layout
from moe.parallel.collectives import copy_to_group
from moe.parallel.expert_parallel import ParallelExperts

EXPERT_WEIGHTS = ("w_up", "w_gate", "w_down")


@dataclass
class Parallel:
    """One rank's place in the layout: its coordinates and the process groups it belongs to."""

    layout: Layout
    mesh: DeviceMesh  # dims ("pp", "dp", "ep", "tp")
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
    ranks = mesh.mesh  # [pp, dp, ep, tp] global ranks
    for p in range(layout.pp):  # the data group: same stage and tp rank; every rank creates every group
        for t in range(layout.tp):
            members = ranks[p, :, :, t].flatten().tolist()
            group = dist.new_group(members)
            if (coords["pp"], coords["tp"]) == (p, t):
                groups["data"] = group
    return Parallel(layout, mesh, device, coords, groups)


def _is_expert(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in EXPERT_WEIGHTS


def parallelize(module: nn.Module, par: Parallel) -> nn.Module:
    """Split the blocks of `module` (the model, or this rank's pipeline Stage) over tp and ep, tell
    the routers to count tokens over the data group, and wrap in FSDP2 if the layout says so."""
    lay = par.layout
    blocks = module.blocks.values() if isinstance(module.blocks, nn.ModuleDict) else module.blocks
    tp_mesh, expert_mesh = par.mesh["tp"], par.mesh["ep", "tp"]
    for block in blocks:
        if lay.tp > 1:
            plan = {"wq": ColwiseParallel(), "wo": RowwiseParallel()}
            if block.attn.n_kv_heads > 1:  # grouped-query: the K/V heads split like the query heads
                plan |= {"wk": ColwiseParallel(), "wv": ColwiseParallel()}
            else:  # one K/V head, computed on every tp rank; each rank's query heads give part of its gradient
                for lin in (block.attn.wk, block.attn.wv):
                    lin.register_forward_hook(lambda mod, inp, out, g=par.groups["tp"]: copy_to_group(out, g))
            parallelize_module(block.attn, tp_mesh, plan)
        moe = block.moe
        if lay.ep > 1 or lay.tp > 1:
            for name in EXPERT_WEIGHTS:
                w = getattr(moe, name)
                if w is not None:  # [E, D, F] split on F (dim 2); w_down [E, F, D] on dim 1
                    f_dim = 1 if name == "w_down" else 2
                    shard = distribute_tensor(w.detach(), expert_mesh, [Shard(0), Shard(f_dim)])
                    setattr(moe, name, nn.Parameter(shard))
            moe.experts = ParallelExperts(moe.cfg.activation, moe.cfg.expert_backend, moe.cfg.n_experts,
                                          par.groups["ep"], lay.ep, par.groups["tp"], lay.tp)
        if lay.data_shards > 1:
            moe.router.count_group = par.groups["data"]
    if lay.sharding == "fsdp" and lay.data_shards > 1:
        _fully_shard(module, blocks, par)
    return module


def _fully_shard(module, blocks, par: Parallel) -> None:
    """FSDP2: experts sharded over dp (their replica group), everything else over dp x ep. FSDP2
    averages gradients over its mesh, which is right for the rest; sync_gradients divides the
    experts' by ep as well (set_gradient_divide_factor would, but needs PREMUL_SUM, which gloo lacks)."""
    from torch.distributed.fsdp import fully_shard

    data_mesh = DeviceMesh.from_group(par.groups["data"], par.device.type)  # dp x ep, flattened
    for block in blocks:
        if par.layout.ep > 1:
            fully_shard(block.moe.router, mesh=data_mesh)  # first, so the next unit holds only the experts
            fully_shard(block.moe, mesh=par.mesh["dp"])  # a slice of the experts' DTensor mesh, as FSDP2 requires
        fully_shard(block, mesh=data_mesh)
    fully_shard(module, mesh=data_mesh)


def replica_group(name: str, par: Parallel):
    return par.groups["dp"] if _is_expert(name) else par.groups["data"]


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's storage of a DTensor (for in-place updates outside autograd), or the tensor itself."""
    return t._local_tensor if isinstance(t, DTensor) else t


@torch.no_grad()
def sync_gradients(module: nn.Module, par: Parallel) -> None:
    """Average every gradient over the dp x ep data shards: one flattened all-reduce per replica
    group, divided by dp x ep. With FSDP2, which averaged over its mesh during backward, only the
    experts' extra 1/ep is left to apply."""
    lay = par.layout
    if lay.data_shards == 1:
        return
    if lay.sharding == "fsdp":
        for name, p in module.named_parameters():
            if p.grad is not None and _is_expert(name) and lay.ep > 1:
                local_tensor(p.grad).div_(lay.ep)
        return
    buckets: dict[int, list] = {}
    for name, p in module.named_parameters():
        if p.grad is not None:
            group = replica_group(name, par)
            buckets.setdefault(id(group), [group]).append(local_tensor(p.grad))
    for group, *grads in buckets.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        if dist.get_world_size(group) > 1:
            dist.all_reduce(flat, group=group)
        flat.div_(lay.data_shards)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


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
