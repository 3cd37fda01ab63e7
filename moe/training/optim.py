"""How parameters are updated: AdamW with weight decay on matrices only, and the learning-rate
schedule (linear warmup, then cosine decay to min_lr at max_steps)."""

from __future__ import annotations

import math

import torch

from moe.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig, max_steps: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def make_optimizer(params, cfg: TrainConfig, compiled: bool = False) -> torch.optim.Optimizer:
    """AdamW over `params` (e.g. model.parameters()); weight decay on matrices only (not norms).
    Fused where this torch supports it (on CPU it is about 20% of a tiny-preset step faster than the
    default). DTensor and plain parameters go in separate groups: a fused or foreach update takes a
    group's tensors together and cannot mix the two.
    compiled: for an update through torch.compile (moe/training/local.py), which fuses the per-tensor
    loop itself: the learning rate a tensor, so that a new value each step is new data, not a new
    graph (single-tensor, since foreach takes a tensor lr only as capturable, which runs on GPUs only
    should the update ever run eagerly)."""
    groups: dict[tuple, dict] = {}
    for p in params:
        decay = p.dim() >= 2
        groups.setdefault((decay, type(p)), {"params": [], "weight_decay": cfg.weight_decay if decay else 0.0})
        groups[(decay, type(p))]["params"].append(p)
    kw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    if compiled:
        return torch.optim.AdamW(list(groups.values()), **dict(kw, lr=torch.tensor(cfg.lr)), foreach=False)
    try:
        return torch.optim.AdamW(list(groups.values()), fused=True, **kw)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(list(groups.values()), **kw)


HOW = ("lr", "foreach", "fused", "capturable")  # how a group is updated, as opposed to what it holds


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """optimizer.load_state_dict(state), keeping this optimizer's own way of updating (fused, or a
    tensor lr for torch.compile): load_state_dict would take the saving run's, and a
    run may resume with or without --compile. The moments and step counts are the same either way."""
    own = [{k: g[k] for k in HOW if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, how in zip(optimizer.param_groups, own, strict=True):
        group.update(how)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):  # a compiled update's (make_optimizer(compiled=True))
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
