"""Initialisation that does not depend on where the weights live.

Each parameter draws its values from its own random stream, seeded by (seed, the parameter's name),
and always draws its *full* tensor, on the host. So a parameter's value depends on neither the order
of construction nor the other parameters a rank holds: a rank that built the model on the meta
device and holds only a shard (tensor, expert or pipeline parallel, FSDP2) copies its part of the
same full tensor, and every layout starts from exactly one process's weights. No rank ever holds
more than its shards plus the largest single parameter, transiently, in host memory.

    parameter                                init
    *norm.weight                             ones
    *.bias, *_bias, *_gate                   zeros (a vision gate at 0 leaves the language model as it was)
    *.shift                                  zeros (a reading window's change from its start, moe/vision/reading.py)
    blocks.<i>.attn.wo.weight, *.moe.w_down, normal(0, init_std / sqrt(2 n_layers))  (GPT-2's residual scaling;
    *.moe.shared.down.weight
                                             lm.blocks.<i>... in the vision model, moe/vision/model.py)
    convolution weights (4-D)                normal(0, sqrt(2 / fan_in)) (He, for the vision strip stem's
                                             GELU layers: at init_std a reader over them learned slower,
                                             40% against 66% of characters at step 300 in the probe)
    every other weight                       normal(0, init_std)

Names are the full model's (a pipeline Stage keeps them, moe/parallel/pipeline.py), so a stage
draws its layers' values whatever the split.
"""

from __future__ import annotations

import math
import re
import zlib

import torch
import torch.nn as nn
from torch.distributed.tensor import DTensor, distribute_tensor

from moe.config import ModelConfig
from moe.model.rope import Rotary
from moe.model.router import TopKRouter

_RESIDUAL = re.compile(r"(lm\.)?blocks\.\d+\.(attn\.wo\.weight|moe\.w_down|moe\.shared\.down\.weight)")


def init_std(name: str, cfg: ModelConfig) -> float | None:
    """The normal std of parameter `name` (0: zeros), or None for a norm's gain (ones)."""
    if name.endswith("norm.weight"):
        return None
    if name.endswith((".bias", "_bias", "_gate", ".shift")):
        return 0.0
    if _RESIDUAL.fullmatch(name):
        return cfg.init_std / math.sqrt(2 * cfg.n_layers)
    return cfg.init_std


def draw(name: str, shape, cfg: ModelConfig, seed: int) -> torch.Tensor:
    """Parameter `name`'s full initial value, float32 on the host."""
    std = init_std(name, cfg)
    if std is None:
        return torch.ones(shape)
    if std == 0.0:
        return torch.zeros(shape)
    if len(shape) == 4:
        std = math.sqrt(2.0 / math.prod(shape[1:]))
    stream = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
    return torch.empty(shape).normal_(0.0, std, generator=stream)


@torch.no_grad()
def copy_shard(param: torch.Tensor, full: torch.Tensor) -> None:
    """Write this rank's part of `full` (the whole parameter) into `param`, a plain tensor or a DTensor
    shard (no communication: every rank holds the same `full` and keeps its own chunks)."""
    if isinstance(param, DTensor):
        local = distribute_tensor(
            full.to(param.dtype), param.device_mesh, param.placements, src_data_rank=None
        ).to_local()
        param.to_local().copy_(local)
    else:
        param.copy_(full)


def init_weights(module: nn.Module, cfg: ModelConfig, seed: int) -> None:
    """Initialise every parameter of `module` (the model, or a parallelized Stage of it) in place."""
    for name, p in module.named_parameters():
        copy_shard(p, draw(name, p.shape, cfg, seed))


def materialize(module: nn.Module, cfg: ModelConfig, device, seed: int) -> nn.Module:
    """A module built (and perhaps parallelized) on the meta device, allocated on `device` with only
    this rank's shards, its buffers recomputed or zeroed and its parameters initialised."""
    module.to_empty(device=device)
    for m in module.modules():
        if isinstance(m, Rotary):
            m.reset_tables()
        if isinstance(m, TopKRouter):
            m.reset_buffers()
    init_weights(module, cfg, seed)
    return module
