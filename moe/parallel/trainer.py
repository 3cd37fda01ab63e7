"""One rank's trainer in any Layout: `torchrun --nproc-per-node N -m moe train --dp .. --ep ..`.

The training loop is moe/training/loop.py's, for every layout; this is the Trainer it drives
(moe/training/protocol.py). One step, on every rank:
    1. the global batch [B, T] cut into `microbatches`, and this rank's data shard (of dp x ep) of
       each: the loop's sampler draws every row's window on every rank (one random stream) and
       reads only this rank's rows (batch_rows)
    2. forward and backward: the model itself (pp = 1: gradient accumulation over microbatches),
       or this rank's stage under a pipeline schedule (moe/parallel/pipeline.py)
    3. gradients averaged over the data shards (FSDP2 reduce-scatters them during backward;
       sync_gradients finishes the experts'), clipped by the global norm, AdamW on this rank's
       shards (moe/parallel/zero.py)
so the step equals one process's step on the whole batch (tests/parallel/test_distributed.py checks each
layout against it). Only the last pipeline stage sees the loss: it is averaged over data shards
and broadcast to the whole pipeline, so every rank reports the same number. Rank 0 logs and keeps
the run directory's books.

Construction: every rank builds the model on the meta device, keeps its stage, parallelizes it
(still on meta), then allocates only its own shards and initialises them (moe/model/init.py: the
same full tensors as one process, cut to the shard), or loads them from --init-from.

Decisions every rank must share cost one small collective: `agree` broadcasts rank 0's re-fitted
max_steps (time budget), `any` all-reduces the interrupt flag once per step (a signal that reaches one
rank stops all of them at the same step).

Differences from one process: the global torch RNG is not checkpointed (router jitter draws would
not repeat on resume); expert counts are reported with pp = 1 only. Checkpoints are distributed
(moe/parallel/checkpoint.py) and resume in any layout.
"""

from __future__ import annotations

import datetime
import gc
import math
import os
import pathlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from moe import devices
from moe.config import ModelConfig, TrainConfig
from moe.data.instruct import is_instruct
from moe.layout import Layout
from moe.model import MoETransformer
from moe.model.init import materialize
from moe.model.router import update_balance_biases
from moe.model.transformer import IGNORE_INDEX
from moe.parallel import checkpoint as dist_checkpoint
from moe.parallel.parallelize import Parallel, clip_grad_norm, init_parallel, local_tensor, parallelize, sync_gradients
from moe.parallel.zero import ShardedAdamW
from moe.training import loop, run_dir
from moe.training.local import autocast, model_inputs
from moe.training.protocol import NonFiniteLoss, StepResult, TrainingError


def init_process_group(device: str | None = None, timeout: datetime.timedelta | None = None) -> torch.device:
    """Join the torchrun world (or start a world of one), return this rank's device. timeout: how
    long a collective waits for its peers (None: torch's default, 10 minutes for gloo and nccl)."""
    if device is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    device = devices.resolve(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        if "WORLD_SIZE" in os.environ:  # launched by torchrun
            dist.init_process_group(backend, timeout=timeout, **_attempt_store(timeout))
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return device


def _attempt_store(timeout: datetime.timedelta | None) -> dict:
    """init_process_group's store after torchrun --max-restarts restarted the workers: torchrun's
    own store, under a key prefix of this attempt. The launcher keeps one store for every attempt
    (it shares its rendezvous store by default), so without a prefix a restarted rank can read the
    address a dead rank of the last attempt left there and fail to connect (seen with gloo).
    TORCHELASTIC_RESTART_COUNT is the same on every rank of one launcher, and on every node of a
    fixed set of nodes restarted together; a node that joins an elastic run later counts from 0,
    which this does not handle. {} on a first attempt."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart == "0" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=timeout or datetime.timedelta(minutes=10),
    )
    return dict(
        store=dist.PrefixStore(f"moe/attempt-{restart}", store),
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
    )


def close_process_group() -> None:
    """Destroy every process group, then collect the garbage they leave in reference cycles (the
    device meshes' groups): left to the interpreter's shutdown, a gloo group's threads were torn
    down out of order and the process aborted ("terminate called without an active exception")
    about one run in ten."""
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


@dataclass
class DistributedTrainer:
    """This rank's part of the model and what steps it."""

    par: Parallel
    module: torch.nn.Module  # what this rank trains: the model, or its pipeline Stage
    optimizer: ShardedAdamW
    schedule: object | None  # the pipeline schedule when pp > 1
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    compile_s: float | None = None  # a layout's step runs eagerly (build refuses compile = true)

    @classmethod
    def build(
        cls, model_cfg: ModelConfig, train_cfg: TrainConfig, layout: Layout, device: torch.device, init_from=None
    ) -> DistributedTrainer:
        layout.check(model_cfg, dist.get_world_size(), train_cfg.batch_size)
        if train_cfg.compile:
            raise ValueError(
                "compile = true is for one process only so far: a layout's step (FSDP2, DTensor, "
                "pipeline schedules) runs eagerly"
            )
        par = init_parallel(layout, device)
        torch.manual_seed(train_cfg.seed)
        with torch.device("meta"):  # no rank allocates the whole model: only its shards, below
            model = MoETransformer(model_cfg)
        module, schedule = model, None
        if layout.pp > 1:
            from moe.parallel.pipeline import build_schedule, build_stage

            module = build_stage(model, layout, par.rank["pp"])
        parallelize(module, par)
        materialize(module, model_cfg, device, train_cfg.seed)  # the same full tensors as one process
        if init_from is not None:
            dist_checkpoint.load_shards(module, model, init_from)
        if layout.pp > 1:
            schedule = build_schedule(module, layout, par.rank["pp"], par.groups["pp"], device)
        return cls(par, module, ShardedAdamW(module, train_cfg), schedule, model_cfg, train_cfg)

    @property
    def is_main(self) -> bool:
        return dist.get_rank() == 0

    def batch_rows(self, batch_size: int) -> list[int]:
        """This rank's rows of the global batch, which the loop alone reads: microbatch j is rows
        j*B/m .. (j+1)*B/m of the batch, as in one process's gradient accumulation, and each rank takes
        its data shard of every one (so the expert counts the routers all-reduce are those of the
        same microbatch)."""
        m, d = self.par.layout.microbatches, self.par.layout.data_shards
        per_mb = batch_size // m
        n = per_mb // d
        return [j * per_mb + self.par.data_rank * n + i for j in range(m) for i in range(n)]

    def forward_backward(self, x_BT: torch.Tensor, y_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gradients of the mean loss over this rank's microbatches; returns its cross-entropy (last
        stage) and, without a pipeline, its expert counts [L, E]."""
        x, y, m = x_BT.to(self.par.device), y_BT.to(self.par.device), self.par.layout.microbatches  # (batch_rows)
        loss = torch.zeros((), device=self.par.device)
        if self.schedule is None:
            counts = None
            weights = self._token_weights(y_BT.chunk(m))  # counted from the host's copy: no device sync
            for j, (x_mb, y_mb) in enumerate(zip(x.chunk(m), y.chunk(m))):
                self._accumulate(last=j == m - 1)
                with autocast(self.par.device):
                    out = self.module(**model_inputs(x_mb, self.par.device), targets=y_mb)
                # no counted target: the mean of nothing is NaN, so a zero through the whole graph instead
                # (its backward must still run every collective the other ranks' backward runs)
                ce = out.loss * weights[j] if weights[j] else out.logits.sum() * 0.0
                ((ce + out.aux_loss) / m).backward()
                loss += ce.detach() / m
                mb_counts = torch.stack([r.tokens_per_expert for r in out.routing])
                counts = mb_counts if counts is None else counts + mb_counts
            return loss, counts
        losses: list[torch.Tensor] = []
        args = (x,) if self.par.first_stage else ()
        with autocast(self.par.device):
            self.schedule.step(*args, target=y if self.par.last_stage else None, losses=losses)
        return (torch.stack(losses).mean().detach() if self.par.last_stage else loss), None

    def _token_weights(self, targets: list[torch.Tensor]) -> list[float]:
        """Each microbatch's share of the global batch's counted targets (those not IGNORE_INDEX:
        instruction data counts the assistant's tokens only) against an equal share, n_j m D / N:
        the mean of the weighted microbatch means over m microbatches and D data shards is then the
        one process's mean over all N, however the counted tokens fall. 1.0 each when every target
        counts. One small all-reduce (gloo, of host tensors)."""
        n = [int((y != IGNORE_INDEX).sum()) for y in targets]
        total = torch.tensor([sum(n)], dtype=torch.int64)
        dist.all_reduce(total, group=self.par.groups["data"])
        equal = int(total) / (len(n) * self.par.layout.data_shards)
        return [k / equal if equal else 1.0 for k in n]

    def _accumulate(self, last: bool) -> None:
        """Gradient accumulation under "zero1": keep the weights gathered and the gradients whole
        until the last microbatch, so a step reduce-scatters and all-gathers once whatever m is.
        ("fsdp" reduce-scatters every microbatch: it trades traffic for memory.)"""
        if self.par.layout.sharding == "zero1" and self.par.layout.data_shards > 1:
            self.module.set_requires_gradient_sync(last)
            self.module.set_reshard_after_backward(last)

    def global_loss(self, loss: torch.Tensor) -> float:
        """The mean over data shards, from the last stage, on every rank."""
        loss = loss.clone().float()
        dist.all_reduce(loss, group=self.par.groups["data"])
        loss /= self.par.layout.data_shards
        if self.par.layout.pp > 1:
            last = dist.get_process_group_ranks(self.par.groups["pp"])[-1]
            dist.broadcast(loss, src=last, group=self.par.groups["pp"])
        return float(loss)

    def step(self, x_BT: torch.Tensor, y_BT: torch.Tensor, lr: float) -> StepResult:
        """One training step on the global batch; (loss, gradient norm before clipping, expert counts)."""
        self.optimizer.set_lr(lr)
        local_loss, counts = self.forward_backward(x_BT, y_BT)
        loss = self.global_loss(local_loss)
        if not math.isfinite(loss):
            self.module.zero_grad(set_to_none=True)
            raise NonFiniteLoss(loss)
        sync_gradients(self.module, self.par)
        norm = clip_grad_norm(self.module, self.par, self.train_cfg.grad_clip)
        self.optimizer.step()
        update_balance_biases(self.module)
        self.module.zero_grad(set_to_none=True)
        if counts is not None:  # the data shards' assignments, summed: the global batch's
            dist.all_reduce(counts, group=self.par.groups["data"])
            counts = counts.cpu()
        return StepResult(loss, norm, counts)

    @torch.no_grad()
    def evaluate(self, batches) -> float:
        """Validation cross-entropy over the batches, the same number on every rank."""
        total = 0.0
        self.module.eval()
        for x, y in batches:
            weight = self._token_weights([y])[0] if self.schedule is None else 1.0
            x, y = x.to(self.par.device), y.to(self.par.device)
            loss = torch.zeros((), device=self.par.device)
            with autocast(self.par.device):
                if self.schedule is None:
                    out = self.module(**model_inputs(x, self.par.device), targets=y)
                    loss = out.loss * weight if weight else loss
                else:
                    losses: list[torch.Tensor] = []
                    self.schedule.eval(
                        *((x,) if self.par.first_stage else ()),
                        target=y if self.par.last_stage else None,
                        losses=losses,
                    )
                    if self.par.last_stage:
                        loss = torch.stack(losses).mean()
            total += self.global_loss(loss)
        self.module.train()
        return total / len(batches)

    def eval_extras(self) -> dict:
        return {}  # a layout trains text models (MoETransformer): nothing beyond the loss

    def nonfinite_weights(self) -> list[str]:
        bad = [n for n, p in self.module.named_parameters() if not torch.isfinite(local_tensor(p)).all()]
        if self.any(bool(bad)):
            return bad or ["(a parameter on another rank)"]
        return []

    def save(self, out_dir: pathlib.Path, state: dict, step: int, files: dict[str, bytes]) -> pathlib.Path:
        return dist_checkpoint.save(
            out_dir,
            self.module,
            self.optimizer,
            self.model_cfg,
            self.train_cfg,
            self.par.layout,
            dict(state, layout=self.par.layout.describe()),
            step,
            files,
        )

    def load(self, step_dir: pathlib.Path) -> tuple[dict, str]:
        if not run_dir.is_distributed(step_dir):
            raise TrainingError(f"{step_dir} was written by single-process training, not as a distributed checkpoint")
        state = dist_checkpoint.load(step_dir, self.module, self.optimizer)
        return state, f" (written by layout {state['layout']}) in layout {self.par.layout.describe()}"

    def agree(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64)
        dist.broadcast(t, src=0)
        return int(t)

    def any(self, flag: bool) -> bool:
        t = torch.tensor([int(flag)], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t)

    def describe(self) -> dict:
        return {"device": self.par.device.type, "layout": vars(self.par.layout), "world_size": dist.get_world_size()}


def train_distributed(
    model_cfg: ModelConfig, train_cfg: TrainConfig, layout: Layout, out_dir, *, device: str | None = None, **kw
) -> dict:
    """The training loop (moe.training.loop.train, whose keywords it takes) on this rank's part of
    `layout`, under torchrun or in one process. Rank 0 logs and writes summary.json."""
    data = kw.get("data")
    packed = getattr(data, "packed", False) or (isinstance(data, (str, pathlib.Path)) and is_instruct(data))
    if packed and layout.pp > 1:
        raise ValueError(
            "packed instruction data trains with pp = 1 so far: pipeline stages pass hidden states "
            "only, not the examples' boundaries their attention needs"
        )

    def build(model_cfg, train_cfg, _, init_from):
        trainer = DistributedTrainer.build(model_cfg, train_cfg, layout, init_process_group(device), init_from)
        if trainer.is_main:
            kw.get("log", print)(
                f"layout {layout.describe()} on {dist.get_world_size()} process(es), {trainer.par.device.type}"
            )
        return trainer

    return loop.train(model_cfg, train_cfg, out_dir, build=build, **kw)
