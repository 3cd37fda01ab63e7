"""A run directory: step directories and a `latest` pointer, written so a kill never leaves a gap.

    run/
      latest                  the name of the newest complete step directory
      step-0001000/           one checkpoint (moe/training/checkpoint.py, or a distributed one:
                              moe/parallel/checkpoint.py)
      summary.json, training.png

A step directory is written under a temporary name and `publish`ed: its files fsynced, renamed
into place, then `latest` replaced atomically (write, fsync, rename). Older step directories are
pruned only after the pointer moved.
"""

from __future__ import annotations

import os
import pathlib
import shutil

KEEP = 2  # step directories kept


def step_name(step: int) -> str:
    return f"step-{step:07d}"


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def publish(run_dir: pathlib.Path, tmp: pathlib.Path, final: pathlib.Path) -> pathlib.Path:
    """Make the complete directory `tmp` the step directory `final`: fsync its files, rename it into
    place, point `latest` at it atomically, prune old steps."""
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
    write_atomic(run_dir / "latest", final.name.encode())
    for stale in sorted(run_dir.glob("step-*"))[:-KEEP]:
        if stale != final:
            shutil.rmtree(stale)
    return final


def latest(run_dir) -> pathlib.Path | None:
    """The step directory `latest` names, or None."""
    pointer = pathlib.Path(run_dir) / "latest"
    return pointer.parent / pointer.read_text().strip() if pointer.exists() else None


def remove_checkpoints(run_dir) -> None:
    """Delete a run directory's checkpoints (the pointer first, so no reader follows it into a gap)."""
    run_dir = pathlib.Path(run_dir)
    (run_dir / "latest").unlink(missing_ok=True)
    for d in run_dir.glob("step-*"):
        shutil.rmtree(d)


def check_fresh(run_dir, overwrite: bool) -> bool:
    """Before a fresh run: raise if run_dir already holds checkpoints and overwrite is not set.
    Returns whether there are checkpoints to delete (remove_checkpoints) before training."""
    held = latest(run_dir)
    if held is not None and not overwrite:
        raise ValueError(f"{run_dir} already holds a checkpoint ({held.name}); resume it with "
                         "--resume, or pass --overwrite to replace it, or choose another --out")
    return held is not None


def is_distributed(step_dir) -> bool:
    """Written by moe/parallel/checkpoint.py (DCP's .metadata), not by moe/training/checkpoint.py."""
    return (pathlib.Path(step_dir) / ".metadata").exists()


def resolve(path) -> pathlib.Path:
    """The step directory for a run directory (through `latest`) or a step directory itself."""
    path = pathlib.Path(path)
    path = latest(path) or path
    if not (path / "model.safetensors").exists() and not is_distributed(path):
        raise FileNotFoundError(f"no checkpoint at {str(path)!r} (expected model.safetensors, a distributed "
                                "checkpoint's .metadata, or a 'latest' file)")
    return path
