"""Which trainer a run takes: one process (moe/training/local.py) or this rank's part of a Layout
(moe/parallel/trainer.py). The choice is made here, once, for `python -m moe train` and for Python.

A run trains distributed when its layout is more than one process's, when torchrun started more
than one process, or when it resumes a distributed checkpoint (those load into any layout, a world
of one included). Everything is checked before a process group exists, so a layout that cannot
work fails at once and names the torchrun command it needs.
"""

from __future__ import annotations

import os

from moe.config import ModelConfig, TrainConfig
from moe.layout import Layout


def world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def holds_distributed_checkpoint(path) -> bool:
    """Whether the run or step directory `path` ends in a distributed (DCP) checkpoint."""
    from moe.training import run_dir

    try:
        return run_dir.is_distributed(run_dir.resolve(path))
    except FileNotFoundError:
        return False


def is_distributed(layout: Layout, out_dir, *, resume: bool = False, world: int | None = None) -> bool:
    """Whether a run into `out_dir` trains through the distributed trainer (see the module's docstring)."""
    world = world_size() if world is None else world
    return layout != Layout() or world > 1 or (resume and holds_distributed_checkpoint(out_dir))


def check_distributed(model_cfg: ModelConfig, train_cfg: TrainConfig, layout: Layout, world: int) -> None:
    """Raise a ValueError if the model cannot train in `layout` on `world` processes."""
    if model_cfg.vision is not None:
        raise ValueError(
            f"config {model_cfg.name!r} has a vision path, which trains in one process: give no "
            "parallel layout and no torchrun"
        )
    if train_cfg.ramp and layout.pp > 1:
        raise ValueError(
            "a batch-size ramp changes the microbatches' shapes, which a pipeline schedule fixes when it is "
            "built: ramp with dp, ep and tp (more rows per rank), not pp"
        )
    try:
        for batch_size in train_cfg.batch_sizes():  # the ramp's too: each must split evenly
            layout.check(model_cfg, world, batch_size)
    except ValueError as e:
        hint = (
            f"; launch it with torchrun --nproc-per-node {layout.world_size} -m moe train ..."
            if layout.world_size != world
            else ""
        )
        raise ValueError(f"{e}{hint}") from None


def train_in_layout(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    out_dir,
    layout: Layout | None = None,
    *,
    world: int | None = None,
    resume: bool | str = False,
    log=print,
    **kw,
) -> dict:
    """Train in one process or in `layout` under torchrun, whichever the run needs, and return the
    summary. The keywords are moe.training.train's; `world` defaults to torchrun's WORLD_SIZE. The
    main process logs one line naming the run (and its layout) before anything is built. resume="auto":
    continue from --out's latest checkpoint when it has one, else start afresh."""
    layout = Layout() if layout is None else layout
    world = world_size() if world is None else world
    from moe import devices

    devices.resolve(kw.get("device"))  # before anything exists: no process group, no --out
    from moe.training.loop import resolve_resume

    resume, allow = resolve_resume(  # "auto": True or False from here on
        resume, out_dir, kw.get("overwrite", False), kw.get("init_from"), kw.get("allow_changes", False)
    )
    kw = {**kw, "allow_changes": allow}
    if not is_distributed(layout, out_dir, resume=resume, world=world):
        from moe.training import train

        log(f"training {model_cfg.name} -> {out_dir}")
        return train(model_cfg, train_cfg, out_dir, resume=resume, log=log, **kw)
    check_distributed(model_cfg, train_cfg, layout, world)

    from moe.parallel.trainer import close_process_group, train_distributed

    if int(os.environ.get("RANK", "0")) == 0:
        log(f"training {model_cfg.name} -> {out_dir} in layout {layout.describe()}")
    try:
        return train_distributed(model_cfg, train_cfg, layout, out_dir, resume=resume, log=log, **kw)
    finally:
        close_process_group()
