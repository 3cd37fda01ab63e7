"""ZeRO stage 1: AdamW with its state sharded over each parameter's replica group.

Every parameter is owned by one rank of the group of ranks that hold the same local tensor (see
moe/parallel/parallelize.py: dp for the experts, dp x ep for the rest), chosen greedily by size so the
state is spread evenly. Gradients are already averaged on every rank (sync_gradients); the owner
alone keeps exp_avg / exp_avg_sq and updates the parameter, then broadcasts the new values to its
group. Optimizer memory per rank drops by the group size; the parameters and gradients stay whole.

Why not torch.distributed.optim.ZeroRedundancyOptimizer: it takes one process group for all
parameters (experts and the rest have different ones here), and its broadcast fails on the DTensor
parameters of tensor and expert parallelism ("c10d.broadcast_.default does not have a sharding
strategy registered", torch 2.13). Broadcasting the local shard of each DTensor does what it would.

With FSDP2 (sharding = "fsdp") or a layout with one data shard, every rank owns all of its
(already sharded or unreplicated) parameters and this is plain AdamW.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

from moe.config import TrainConfig
from moe.parallel.parallelize import Parallel, local_tensor, replica_group
from moe.training.optim import make_optimizer, set_lr


class Zero1AdamW:
    def __init__(self, module: nn.Module, par: Parallel, cfg: TrainConfig):
        self.par = par
        zero = par.layout.sharding == "zero1"
        me = dist.get_rank()
        load: dict[tuple, int] = {}  # elements owned per (group, global rank): the same on every member
        self.owner: dict[str, int] = {}
        self.names: dict[nn.Parameter, str] = {}
        self.broadcasts: dict[int, tuple] = {}  # id(group) -> (group, {owner: [params]})
        for name, p in module.named_parameters():
            group = replica_group(name, par)
            members = dist.get_process_group_ranks(group) if zero else [me]
            owner = min(members, key=lambda r: (load.get((id(group), r), 0), r))
            load[id(group), owner] = load.get((id(group), owner), 0) + local_tensor(p).numel()
            self.owner[name], self.names[p] = owner, name
            if len(members) > 1:
                self.broadcasts.setdefault(id(group), (group, {r: [] for r in members}))[1][owner].append(p)
        self.optimizer = make_optimizer((p for p, n in self.names.items() if self.owner[n] == me), cfg)

    def set_lr(self, lr: float) -> None:
        set_lr(self.optimizer, lr)

    @torch.no_grad()
    def step(self) -> None:
        self.optimizer.step()
        for group, by_owner in self.broadcasts.values():
            for owner, params in by_owner.items():
                if params:
                    flat = torch.cat([local_tensor(p).reshape(-1) for p in params])
                    dist.broadcast(flat, src=owner, group=group)
                    offset = 0
                    for p in params:
                        local = local_tensor(p)
                        local.copy_(flat[offset:offset + local.numel()].view_as(local))
                        offset += local.numel()

    def state_dict(self) -> dict:
        """{parameter name: AdamW state} for the parameters this rank owns (empty before the first step)."""
        return {self.names[p]: dict(s) for p, s in self.optimizer.state.items()}

    def state_template(self) -> dict:
        """Zero state of the owned parameters, in the shapes a distributed checkpoint loads into."""
        return {self.names[p]: {"step": torch.zeros((), dtype=torch.float32), "exp_avg": torch.zeros_like(p),
                                "exp_avg_sq": torch.zeros_like(p)}
                for group in self.optimizer.param_groups for p in group["params"]}

    def load_state_dict(self, state: dict) -> None:
        by_name = {n: p for p, n in self.names.items()}
        for name, s in state.items():
            self.optimizer.state[by_name[name]] = s
