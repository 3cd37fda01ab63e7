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
from torch.distributed.tensor import DTensor

from moe.checksums import MARKER, verify_all
from moe.config import ModelConfig, TrainConfig
from moe.training import checkpoint, run_dir
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


@torch.no_grad()
def load_shards(module, full_model, path) -> None:
    """This rank's shards of a checkpoint's weights into `module` (allocated, perhaps parallelized):
    a distributed checkpoint through DCP, which reads only the chunks that overlap them (every rank
    calls this together); a single-process one by slices of its safetensors file, so no rank reads
    a tensor it does not hold. `full_model` (on meta) gives the names and shapes the file must have."""
    step_dir = run_dir.resolve(path)
    if run_dir.is_distributed(step_dir):
        load(step_dir, module)
        return
    weights = checkpoint.open_weights(step_dir, full_model)
    for name, p in module.named_parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        local.copy_(weights.get_slice(name)[_local_slices(p)])


def _local_slices(p: torch.Tensor) -> tuple[slice, ...]:
    """Which part of the global tensor this rank's shard of `p` is (each Shard placement cuts its
    dim into equal chunks, the layout's checks having made them divide; a replicated tensor: all)."""
    bounds = [(0, n) for n in p.shape]
    if isinstance(p, DTensor):
        coordinate = p.device_mesh.get_coordinate()
        for mesh_dim, placement in enumerate(p.placements):
            if placement.is_shard():
                start, stop = bounds[placement.dim]
                size = (stop - start) // p.device_mesh.size(mesh_dim)
                start += coordinate[mesh_dim] * size
                bounds[placement.dim] = (start, start + size)
    return tuple(slice(a, b) for a, b in bounds)
