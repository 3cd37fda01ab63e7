"""A run directory you can trust: one writer at a time, step directories published without a gap,
every file checksummed.

    run/
      .lock                   held (flock) by the one process writing this run; names its pid
      latest                  the name of the newest complete step directory
      step-0001000/           one checkpoint (moe/training/checkpoint.py, or a distributed one:
        ...                   moe/parallel/checkpoint.py)
        checksums.json        sha256 and size of every other file, checked when a file is read
                              (moe/checksums.py; config.json records that it was written)
      summary.json, training.png

Guarantees, and how each is kept:
- **One writer.** `lock` takes an exclusive advisory lock on run/.lock for the whole run. The OS drops
  it when the holder dies, however it dies, so a crash never leaves it stuck; a second writer gets an
  error naming the holder's pid.
- **Errors before work.** `prepare` creates the directory and writes and removes a probe file, so an
  unwritable --out fails before any model is built.
- **No gap.** A step directory is written under a temporary name (.tmp-<step>-<pid>), its files
  checksummed and fsynced, then renamed to a name no other directory has (`step-0000020`, or
  `step-0000020.1` when that step is saved again), and only then is `latest` replaced atomically
  (write, fsync, rename). Superseded and old directories are removed after the pointer moved. So at
  every instant `latest` names a complete checkpoint (tests/training/test_reliability.py kills a save before
  each of its filesystem operations).
- **No litter.** `clean_stale` removes the temporary directories of writers that are gone (the
  scratch conventions of moe/files.py, which datasets share).
- **Damage is named.** moe/checksums.py's `verify` checks a file against its recorded checksum
  before it is parsed; a changed, missing or damaged record is refused by name too.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pathlib
import re
import shutil

from moe import checksums
from moe.files import clean_dead, fsync_dir, scratch_name, write_atomic

KEEP = 2  # step directories kept


class RunDirError(ValueError):
    """The run directory cannot be used as asked (locked, unwritable, damaged)."""


def step_name(step: int) -> str:
    return f"step-{step:07d}"


def _default_mode() -> int:
    """The mode a plain open() gives a new file: 0666 less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def prepare(run_dir) -> pathlib.Path:
    """Create run_dir if needed and prove it writable (a probe file written and removed), or raise a
    RunDirError naming the path and the reason. Call it before building anything."""
    run_dir = pathlib.Path(run_dir)
    probe = run_dir / f".probe-{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        what = "exists and is not a directory" if run_dir.exists() and not run_dir.is_dir() else e.strerror
        raise RunDirError(f"cannot write the run directory {str(run_dir)!r}: {what}") from None
    return run_dir


class RunLock:
    """An exclusive lock on run/.lock for as long as it is held (a context manager)."""

    def __init__(self, run_dir):
        self.path = pathlib.Path(run_dir) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, _default_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(
                f"{self.path.parent} is in use by another run (process {holder} holds "
                f"{self.path}); wait for it to finish, stop it, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the lock; the file stays (removing it would race a waiter)
            self.fd = None


def remove_if_unused(created: list[pathlib.Path]) -> None:
    """Remove the directories a refused run created (deepest first), each only if nothing but its
    lock file (and the directories removed before it) is in it."""
    for d in created:
        if not d.is_dir() or any(p.name != ".lock" for p in d.iterdir()):
            return
        (d / ".lock").unlink(missing_ok=True)
        d.rmdir()


def lock(run_dir) -> RunLock:
    return RunLock(run_dir)


def clean_stale(run_dir) -> list[pathlib.Path]:
    """Remove the scratch directories (.tmp-*-<pid>, .old-*-<pid>) whose writer is gone; return them."""
    return clean_dead(run_dir, ".tmp-*", ".old-*")


def temp_dir(run_dir: pathlib.Path, step: int, pid: int | None = None) -> pathlib.Path:
    """A writer's scratch directory for `step` (pid: the writing process, default this one)."""
    return run_dir / scratch_name(f".tmp-{step_name(step)}", pid)


def _free_name(run_dir: pathlib.Path, name: str) -> pathlib.Path:
    """`name`, or name.1, name.2, ... : a step directory name nothing holds yet."""
    candidate, n = run_dir / name, 0
    while candidate.exists():
        n += 1
        candidate = run_dir / f"{name}.{n}"
    return candidate


def publish(run_dir: pathlib.Path, tmp: pathlib.Path, step: int) -> pathlib.Path:
    """Make the complete directory `tmp` the checkpoint of `step`: checksum, chmod and fsync its files,
    rename it to a free name, point `latest` at it atomically, then remove what it supersedes (an
    earlier save of the same step) and prune old steps. Returns the step directory."""
    mode = _default_mode()
    for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
        os.chmod(f, mode)  # every file alike (safetensors writes 0600)
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    write_atomic(tmp / checksums.FILE, checksums.encode(checksums.entries(tmp)))
    os.chmod(tmp / checksums.FILE, mode)
    final = _free_name(run_dir, step_name(step))
    os.replace(tmp, final)
    fsync_dir(run_dir)
    write_atomic(run_dir / "latest", final.name.encode())
    fsync_dir(run_dir)
    for old in _step_dirs(run_dir):  # earlier saves of this step: superseded
        if old != final and old.name.split(".")[0] == step_name(step):
            shutil.rmtree(old)
    for stale in _step_dirs(run_dir)[:-KEEP]:
        if stale != final:
            shutil.rmtree(stale)
    return final


def _step_dirs(run_dir: pathlib.Path) -> list[pathlib.Path]:
    """Step directories, oldest first (by step, then by save)."""

    def key(p):
        step, _, n = p.name[len("step-") :].partition(".")
        return int(step), int(n or 0)

    return sorted((p for p in run_dir.glob("step-*") if re.fullmatch(r"step-\d+(\.\d+)?", p.name)), key=key)


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
        raise ValueError(
            f"{run_dir} already holds a checkpoint ({held.name}); resume it with "
            "--resume, or pass --overwrite to replace it, or choose another --out"
        )
    return held is not None


def is_distributed(step_dir) -> bool:
    """Written by moe/parallel/checkpoint.py (DCP's .metadata), not by moe/training/checkpoint.py."""
    return (pathlib.Path(step_dir) / ".metadata").exists()


def resolve(path) -> pathlib.Path:
    """The step directory for a run directory (through `latest`) or a step directory itself."""
    path = pathlib.Path(path)
    path = latest(path) or path
    if not (path / "model.safetensors").exists() and not is_distributed(path):
        raise FileNotFoundError(
            f"no checkpoint at {str(path)!r} (expected model.safetensors, a distributed "
            "checkpoint's .metadata, or a 'latest' file)"
        )
    return path
