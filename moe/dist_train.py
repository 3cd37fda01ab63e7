"""Training on torch.distributed in any Layout: `torchrun --nproc-per-node N -m moe train --dp .. --ep ..`.

One step, on every rank:
    1. the same global batch [B, T] on every rank (the same sampler seed), cut into
       `microbatches`; keep this rank's data shard (of dp x ep) of each
    2. forward and backward: the model itself (pp = 1: gradient accumulation over microbatches),
       or this rank's stage under a pipeline schedule (moe/pipeline.py)
    3. average gradients over the data shards (sync_gradients; FSDP2 already did), clip by the
       global norm, AdamW step with ZeRO-1 (moe/zero.py)
so the step equals one process's step on the whole batch (tests/test_distributed.py checks each
layout against it). Only the last pipeline stage sees the loss: it is averaged over data shards
and broadcast to the whole pipeline, so every rank reports the same number.

Differences from moe/train.py: no time budget (max_steps is fixed, so every rank agrees on the
schedule), the global torch RNG is not checkpointed (router jitter draws would not repeat on
resume), no plots. Checkpoints are distributed (moe/dist_checkpoint.py) and resume in any layout.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from moe import checkpoint, dist_checkpoint
from moe.config import ModelConfig, TrainConfig
from moe.data import get_batch, load_corpus, split_corpus
from moe.distributed import Parallel, clip_grad_norm, init_parallel, parallelize, sync_gradients
from moe.layout import Layout
from moe.model import MoETransformer
from moe.train import History, TrainingError, _autocast, lr_at
from moe.zero import Zero1AdamW


def init_process_group(device: str | None = None) -> torch.device:
    """Join the torchrun world (or start a world of one), return this rank's device."""
    if device is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        if "WORLD_SIZE" in os.environ:  # launched by torchrun
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return device


@dataclass
class Trainer:
    """This rank's part of the model and what steps it."""

    par: Parallel
    module: torch.nn.Module  # what this rank trains: the model, or its pipeline Stage
    optimizer: Zero1AdamW
    schedule: object | None  # the pipeline schedule when pp > 1
    train_cfg: TrainConfig

    @classmethod
    def build(cls, model_cfg: ModelConfig, train_cfg: TrainConfig, layout: Layout, device: torch.device) -> "Trainer":
        layout.check(model_cfg, dist.get_world_size(), train_cfg.batch_size)
        par = init_parallel(layout, device)
        torch.manual_seed(train_cfg.seed)  # every rank builds the same full model, then keeps its part
        model = MoETransformer(model_cfg).to(device)
        module, schedule = model, None
        if layout.pp > 1:
            from moe.pipeline import build_schedule, build_stage

            module = build_stage(model, layout, par.rank["pp"])
        parallelize(module, par)
        if layout.pp > 1:
            schedule = build_schedule(module, layout, par.rank["pp"], par.groups["pp"], device)
        return cls(par, module, Zero1AdamW(module, par, train_cfg), schedule, train_cfg)

    def shard(self, t_BT: torch.Tensor) -> torch.Tensor:
        """This rank's rows of the global batch: microbatch j is rows j*B/m .. (j+1)*B/m of the batch,
        as in one process's gradient accumulation, and each rank takes its data shard of every one
        (so the expert counts the routers all-reduce are those of the same microbatch)."""
        m, d = self.par.layout.microbatches, self.par.layout.data_shards
        t_MBT = t_BT.view(m, t_BT.shape[0] // m, *t_BT.shape[1:])
        n = t_MBT.shape[1] // d
        mine = t_MBT[:, self.par.data_rank * n:(self.par.data_rank + 1) * n]
        return mine.reshape(m * n, *t_BT.shape[1:]).to(self.par.device)

    def forward_backward(self, x_BT: torch.Tensor, y_BT: torch.Tensor) -> torch.Tensor:
        """Gradients of the mean loss over this rank's microbatches; returns its cross-entropy (last stage)."""
        x, y, m = self.shard(x_BT), self.shard(y_BT), self.par.layout.microbatches
        loss = torch.zeros((), device=self.par.device)
        if self.schedule is None:
            for x_mb, y_mb in zip(x.chunk(m), y.chunk(m)):
                with _autocast(self.par.device):
                    out = self.module(x_mb, targets=y_mb)
                ((out.loss + out.aux_loss) / m).backward()
                loss += out.loss.detach() / m
            return loss
        losses: list[torch.Tensor] = []
        args = (x,) if self.par.first_stage else ()
        with _autocast(self.par.device):
            self.schedule.step(*args, target=y if self.par.last_stage else None, losses=losses)
        return torch.stack(losses).mean().detach() if self.par.last_stage else loss

    def global_loss(self, loss: torch.Tensor) -> float:
        """The mean over data shards, from the last stage, on every rank."""
        loss = loss.clone().float()
        dist.all_reduce(loss, group=self.par.groups["data"])
        loss /= self.par.layout.data_shards
        if self.par.layout.pp > 1:
            last = dist.get_process_group_ranks(self.par.groups["pp"])[-1]
            dist.broadcast(loss, src=last, group=self.par.groups["pp"])
        return float(loss)

    def step(self, x_BT: torch.Tensor, y_BT: torch.Tensor, lr: float) -> tuple[float, float]:
        """One training step on the global batch; returns (loss, gradient norm before clipping)."""
        self.optimizer.set_lr(lr)
        loss = self.global_loss(self.forward_backward(x_BT, y_BT))
        if not math.isfinite(loss):
            raise TrainingError(f"loss became {loss}; stopped without updating")
        sync_gradients(self.module, self.par)
        norm = clip_grad_norm(self.module, self.par, self.train_cfg.grad_clip)
        self.optimizer.step()
        self.module.zero_grad(set_to_none=True)
        return loss, norm

    @torch.no_grad()
    def evaluate(self, data, gen_seed: int) -> float:
        """Validation cross-entropy over eval_batches fixed windows (the same as moe/train.py's)."""
        cfg = self.train_cfg
        gen = torch.Generator().manual_seed(gen_seed)
        total = 0.0
        self.module.eval()
        for _ in range(cfg.eval_batches):
            x, y = get_batch(data, cfg.batch_size, cfg.seq_len, gen)
            x, y = self.shard(x), self.shard(y)
            loss = torch.zeros((), device=self.par.device)
            with _autocast(self.par.device):
                if self.schedule is None:
                    loss = self.module(x, targets=y).loss
                else:
                    losses: list[torch.Tensor] = []
                    self.schedule.eval(*((x,) if self.par.first_stage else ()),
                                       target=y if self.par.last_stage else None, losses=losses)
                    if self.par.last_stage:
                        loss = torch.stack(losses).mean()
            total += self.global_loss(loss)
        self.module.train()
        return total / cfg.eval_batches


def train_distributed(model_cfg: ModelConfig, train_cfg: TrainConfig, layout: Layout, out_dir, *,
                      resume: bool = False, overwrite: bool = False, device: str | None = None,
                      corpus=None, log=print) -> dict:
    """The training loop of moe/train.py for any layout. Rank 0 logs and writes summary.json."""
    out_dir = pathlib.Path(out_dir)
    stale = not resume and checkpoint.check_fresh(out_dir, overwrite)  # before any process group
    dev = init_process_group(device)
    rank0 = dist.get_rank() == 0
    say = log if rank0 else (lambda *a, **k: None)
    trainer = Trainer.build(model_cfg, train_cfg, layout, dev)
    if stale and rank0:
        checkpoint.remove_checkpoints(out_dir)
    if train_cfg.time_budget_s:
        say(f"note: distributed training ignores time_budget_s ({train_cfg.time_budget_s:.0f}s) and runs "
            f"max_steps = {train_cfg.max_steps} (set with --max-steps)")
    train_data, val_data = split_corpus(load_corpus(corpus), train_cfg.val_fraction)
    data_gen = torch.Generator().manual_seed(train_cfg.seed)
    hist, step, train_time = History(), 0, 0.0
    if resume:
        step_dir = checkpoint.resolve(out_dir)
        if not checkpoint.is_distributed(step_dir):
            raise ValueError(f"{step_dir} was written by single-process training, not as a distributed checkpoint")
        state = dist_checkpoint.load(step_dir, trainer.module, trainer.optimizer)
        data_gen.set_state(state["data_rng"])
        step, train_time, hist = state["step"], state["train_time_s"], History(**state["history"])
        say(f"resumed from {step_dir} at step {step} (written by layout {state['layout']}) in layout {layout.describe()}")

    def save():
        state = dict(step=step, train_time_s=train_time, data_rng=data_gen.get_state(), history=vars(hist),
                     layout=layout.describe())
        return dist_checkpoint.save(out_dir, trainer.module, trainer.optimizer, model_cfg, train_cfg, layout,
                                    state, step)

    say(f"layout {layout.describe()} on {dist.get_world_size()} process(es), {dev.type}")
    tokens_per_step = train_cfg.batch_size * train_cfg.seq_len
    saved, saved_step, running = None, None, []
    while step < train_cfg.max_steps:
        t0 = time.perf_counter()
        x, y = get_batch(train_data, train_cfg.batch_size, train_cfg.seq_len, data_gen)
        loss, norm = trainer.step(x, y, lr_at(step, train_cfg, train_cfg.max_steps))
        step += 1
        train_time += time.perf_counter() - t0
        running.append(loss)
        if step % train_cfg.eval_interval == 0 or step == train_cfg.max_steps:
            val = trainer.evaluate(val_data, train_cfg.seed + 1)
            hist.add(step, step * tokens_per_step, train_time, sum(running) / len(running), val)
            running = []
            say(f"step {step}/{train_cfg.max_steps}  train {hist.train_loss[-1]:.4f}  val {val:.4f}  "
                f"grad norm {norm:.3f}  {train_time:.0f}s  {step * tokens_per_step / train_time:,.0f} tok/s")
        if step % train_cfg.checkpoint_interval == 0 or step == train_cfg.max_steps:
            saved, saved_step = save(), step
    if saved_step != step and step > 0:
        saved = save()
    summary = {"config": model_cfg.name, "layout": vars(layout), "world_size": dist.get_world_size(), "steps": step,
               "tokens": step * tokens_per_step, "train_time_s": round(train_time, 2),
               "final_val_loss": hist.val_loss[-1] if hist.val_loss else None, "checkpoint": str(saved),
               "history": vars(hist), "device": dev.type, "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d")}
    if rank0:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    say(f"done: step {step}, checkpoint {saved}")
    return summary
