"""Checkpoints: a directory of step directories and a `latest` pointer.

    run/
      latest                  the name of the newest complete step directory
      step-0001000/
        model.safetensors     the weights (a tied output head is stored once, as the embedding)
        config.json           model and training config
        trainer.pt            optimizer state, step, RNG states, data position, history

A step directory is written under a temporary name and renamed into place, then `latest` is
replaced atomically (write, fsync, rename). A kill at any moment leaves `latest` pointing at a
complete checkpoint; older step directories are pruned only after the pointer moved.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil

import torch
from safetensors.torch import load_file, save_file

from moe.config import ModelConfig, TrainConfig, from_dict

KEEP = 2  # step directories kept


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    if model.cfg.tie_embeddings:
        sd.pop("lm_head.weight")
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_checkpoint(run_dir, model, model_cfg: ModelConfig, train_cfg: TrainConfig | None = None,
                    trainer_state: dict | None = None, step: int = 0) -> pathlib.Path:
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"step-{step:07d}"
    tmp = run_dir / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_weights(model), str(tmp / "model.safetensors"))
    config = {"model": model_cfg.to_dict(), "train": None if train_cfg is None else vars(train_cfg)}
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    if trainer_state is not None:
        torch.save(trainer_state, tmp / "trainer.pt")
    return publish(run_dir, tmp, final)


def publish(run_dir: pathlib.Path, tmp: pathlib.Path, final: pathlib.Path) -> pathlib.Path:
    """Make the complete directory `tmp` the step directory `final`: fsync its files, rename it into
    place, point `latest` at it atomically, prune old steps. Also used by moe/dist_checkpoint.py."""
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # the same step saved again (e.g. resumed, then interrupted at once)
        old = run_dir / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _fsync_dir(run_dir)
    _write_atomic(run_dir / "latest", final.name.encode())
    for stale in sorted(run_dir.glob("step-*"))[:-KEEP]:
        if stale != final:
            shutil.rmtree(stale)
    return final


def remove_checkpoints(run_dir) -> None:
    """Delete a run directory's checkpoints (the pointer first, so no reader follows it into a gap)."""
    run_dir = pathlib.Path(run_dir)
    (run_dir / "latest").unlink(missing_ok=True)
    for d in run_dir.glob("step-*"):
        shutil.rmtree(d)


def check_fresh(run_dir, overwrite: bool) -> bool:
    """Before a fresh run: raise if run_dir already holds checkpoints and overwrite is not set.
    Returns whether there are checkpoints to delete (remove_checkpoints) before training."""
    latest = pathlib.Path(run_dir) / "latest"
    if latest.exists() and not overwrite:
        raise ValueError(f"{run_dir} already holds a checkpoint ({latest.read_text().strip()}); resume it with "
                         "--resume, or pass --overwrite to replace it, or choose another --out")
    return latest.exists()


def is_distributed(step_dir) -> bool:
    """Written by moe/dist_checkpoint.py (DCP's .metadata), not by save_checkpoint."""
    return (pathlib.Path(step_dir) / ".metadata").exists()


def resolve(path) -> pathlib.Path:
    """The step directory for a run directory (through `latest`) or a step directory itself."""
    path = pathlib.Path(path)
    if (path / "latest").exists():
        path = path / (path / "latest").read_text().strip()
    if not (path / "model.safetensors").exists() and not is_distributed(path):
        raise FileNotFoundError(f"no checkpoint at {str(path)!r} (expected model.safetensors, a distributed "
                                "checkpoint's .metadata, or a 'latest' file)")
    return path


def read_config(path) -> tuple[ModelConfig, dict | None]:
    step_dir = resolve(path)
    data = json.loads((step_dir / "config.json").read_text())
    return from_dict(ModelConfig, data["model"], f"checkpoint {str(step_dir)!r}"), data.get("train")


def load_weights(model: torch.nn.Module, path) -> pathlib.Path:
    """Load weights into `model`, or raise naming every missing, unexpected and mis-shaped tensor.
    A distributed checkpoint (any layout, moe/dist_checkpoint.py) loads whole into this process."""
    step_dir = resolve(path)
    if is_distributed(step_dir):
        from moe.dist_checkpoint import load_weights_one_process

        load_weights_one_process(model, step_dir)
        return step_dir
    saved = load_file(str(step_dir / "model.safetensors"))
    expected = _weights(model)
    problems = [f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(v.shape)}"
                for k, v in expected.items() if k in saved and saved[k].shape != v.shape]
    problems += [f"missing {k} {tuple(v.shape)}" for k, v in expected.items() if k not in saved]
    problems += [f"unexpected {k} {tuple(v.shape)}" for k, v in saved.items() if k not in expected]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ValueError(f"checkpoint {str(step_dir)!r} does not fit this model ({len(problems)} tensor(s)): {shown}")
    model.load_state_dict(saved, strict=not model.cfg.tie_embeddings)
    return step_dir


def load_model(path, device="cpu", **overrides):
    """Build the model a checkpoint was saved from and load its weights. `overrides` change model
    fields that do not touch the weights' shapes (e.g. expert_backend)."""
    from moe.model import MoETransformer

    cfg, _ = read_config(path)
    cfg = dataclasses.replace(cfg, **overrides) if overrides else cfg
    model = MoETransformer(cfg).to(device)
    load_weights(model, path)
    return model


def load_trainer_state(path) -> dict | None:
    f = resolve(path) / "trainer.pt"
    return torch.load(f, weights_only=True) if f.exists() else None
