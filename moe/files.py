"""Files written whole or not at all, for checkpoints (moe/training/run_dir.py) and datasets
(moe/data/prepare.py).

    scratch_name(stem)        "<stem>-<pid>": a writer's scratch, beside where its result will go
    make_scratch(path)        that scratch directory, empty
    write_atomic(path, data)  one file: written beside `path`, fsynced, renamed over it
    replace_whole(tmp, dest)  a complete scratch directory renamed to `dest`; what dest held goes after
    clean_dead(dir, glob)     the scratch of writers that are gone, removed
    check_plain_name(n, what) a name that stays in its folder (no path separator)

A writer fills a scratch path that carries its process id and renames it into place when complete,
so a reader never sees half a result. A writer killed midway leaves its scratch behind; the next
writer removes it, and only it: a live writer's scratch (another process still at work) is kept.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil

_PID = re.compile(r"-(\d+)$")  # the writer's pid ends a scratch name


def check_plain_name(name: str, what: str) -> None:
    """Raise a ValueError naming `what` unless `name` is a file name alone (no directory part, not
    '', '.' or '..'), so that what is written under it stays in the folder it was meant for."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or os.sep in name:
        raise ValueError(f"{what} {name!r}: a plain file name, without a path separator, is needed")


def scratch_name(stem: str, pid: int | None = None) -> str:
    """A scratch name that clean_dead can trace back to its writer (pid: default this process)."""
    return f"{stem}-{pid or os.getpid()}"


def make_scratch(path: pathlib.Path) -> pathlib.Path:
    """An empty scratch directory at `path` (whatever this process left there before is removed)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def alive(pid: int) -> bool:
    """Whether process `pid` exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_dead(directory, *globs: str) -> list[pathlib.Path]:
    """Remove the scratch directories in `directory` that match one of `globs` and whose writer is
    gone (not this process, not a live one); return them."""
    removed = []
    for glob in globs:
        for entry in sorted(pathlib.Path(directory).glob(glob)):
            m = _PID.search(entry.name)
            if m and entry.is_dir() and int(m.group(1)) != os.getpid() and not alive(int(m.group(1))):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def fsync_dir(path: pathlib.Path) -> None:
    """Make a rename inside `path` durable (the directory's entry, not only the file's data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: pathlib.Path, data: bytes) -> None:
    """`path` holds its old content or `data`, never part of it, whenever the process dies."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def replace_whole(tmp: pathlib.Path, dest: pathlib.Path) -> None:
    """Rename the complete scratch directory `tmp` to `dest`. What dest held is first moved aside
    (to its own scratch name) and removed only once the new one is in place."""
    old = None
    if dest.exists():
        old = dest.parent / scratch_name(f".{dest.name}.old")
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
