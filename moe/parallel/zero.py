"""AdamW over this rank's shards, with the parameter names a distributed checkpoint keys its state by.

The sharding itself is FSDP2's (moe/parallel/parallelize.py): with data parallelism every parameter
is a DTensor sharded over its replica group, so AdamW's moments, created like the parameter, are
sharded the same way (ZeRO's optimizer-state partitioning), and the update needs no communication:
the next forward all-gathers the updated shards. Without data parallelism the parameters are whole
(or only tp/ep/pp shards) and this is plain AdamW.

Why not torch.distributed.optim.ZeroRedundancyOptimizer: it takes one process group for all
parameters (experts and the rest have different replica groups here), and its broadcast fails on
DTensor parameters. An earlier version of this file owned whole parameters per rank and broadcast
them after an all-reduce (3x the parameter bytes per step, against FSDP2's 2x).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from moe.config import TrainConfig
from moe.training.optim import make_optimizer, set_lr


class ShardedAdamW:
    def __init__(self, module: nn.Module, cfg: TrainConfig):
        self.names: dict[nn.Parameter, str] = {p: n for n, p in module.named_parameters()}
        self.optimizer = make_optimizer(list(self.names), cfg)

    def set_lr(self, lr: float) -> None:
        set_lr(self.optimizer, lr)

    @torch.no_grad()
    def step(self) -> None:
        self.optimizer.step()

    def state_dict(self) -> dict:
        """{parameter name: AdamW state} (empty before the first step); DTensor moments save as shards."""
        return {self.names[p]: dict(s) for p, s in self.optimizer.state.items()}

    def state_template(self) -> dict:
        """Zero state of every parameter, in the shapes and shards a distributed checkpoint loads into."""
        return {
            self.names[p]: {
                "step": torch.zeros((), dtype=torch.float32),
                "exp_avg": torch.zeros_like(p),
                "exp_avg_sq": torch.zeros_like(p),
            }
            for group in self.optimizer.param_groups
            for p in group["params"]
        }

    def load_state_dict(self, state: dict) -> None:
        by_name = {n: p for p, n in self.names.items()}
        for name, s in state.items():
            self.optimizer.state[by_name[name]] = s
