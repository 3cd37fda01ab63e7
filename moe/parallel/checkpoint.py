"""Distributed checkpoints (torch.distributed.checkpoint) that load into any layout, or one process.

    run/
      latest                  the name of the newest complete step directory
      step-0001000/
        .metadata, *.distcp   DCP: "model.<name>" for every weight, "optim.<name>.{exp_avg,exp_avg_sq,step}"
        config.json           model and training config, and the layout that wrote it
        trainer.pt            step, data-sampler RNG state, history (the same on every rank)

DCP stores each tensor by its global name and shape, whatever shards wrote it: a DTensor's shards
(tensor and expert parallel, FSDP2) as chunks of the global tensor, a replicated tensor once, a
pipeline stage only its own layers. Loading asks for the tensors the new layout holds, in its own
shards, and DCP reads the overlapping chunks. AdamW's moments are sharded like their parameters
(FSDP2) and saved the same way.

The step directory is written under a temporary name and published by rank 0 once every rank has
finished (moe/training/run_dir.py). moe.training.checkpoint.load_weights reads it whole into one
process, without a process group.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from moe.checksums import MARKER, verify_all
from moe.config import ModelConfig, TrainConfig
from moe.training.run_dir import publish, temp_dir


def save(
    run_dir,
    module,
    optimizer,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    layout,
    trainer_state: dict,
    step: int,
    files: dict[str, bytes] | None = None,
) -> pathlib.Path:
    """Every rank calls this together. Returns the step directory."""
    run_dir = pathlib.Path(run_dir)
    rank0 = dist.get_rank() == 0
    pid = [os.getpid()]
    dist.broadcast_object_list(pid, src=0)  # the scratch directory carries rank 0's pid (run_dir.clean_stale)
    tmp = temp_dir(run_dir, step, pid[0])
    if rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    dcp.save({"model": module.state_dict(), "optim": optimizer.state_dict()}, checkpoint_id=tmp)
    dist.barrier()
    if rank0:
        config = {"model": model_cfg.to_dict(), "train": vars(train_cfg), "layout": vars(layout), **MARKER}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        torch.save(trainer_state, tmp / "trainer.pt")
        for name, content in (files or {}).items():  # e.g. the tokenizer
            (tmp / name).write_bytes(content)
        final = [publish(run_dir, tmp, step)]
    else:
        final = [None]
    dist.broadcast_object_list(final, src=0)
    return final[0]


def load(step_dir, module, optimizer=None) -> dict:
    """Load weights (and, given the optimizer, its state) saved by any layout into this rank's part
    of `module`; returns the trainer state. Every rank calls this together."""
    step_dir = pathlib.Path(step_dir)
    verify_all(step_dir)
    state = {"model": module.state_dict()}
    if optimizer is not None:
        state["optim"] = optimizer.state_template()
    dcp.load(state, checkpoint_id=step_dir)
    module.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optim"])
    return torch.load(step_dir / "trainer.pt", weights_only=True)
