"""Checksums for a directory written whole (a checkpoint's step directory): checksums.json beside
the files records each one's sha256 and size when the directory is complete, and a reader checks a
file against that record before it parses it.

    entries(directory)      {name: sha256 and size} of every other file under `directory`
    encode(entries)         checksums.json's content: the entries and their seal
    expected(directory)     whether the directory's writer recorded checksums (checksums.json or the marker)
    verify(path)            raise DamagedFile naming `path` if it differs from what was recorded
    verify_all(directory)   verify every recorded file, reading checksums.json once

Three ways a directory can lie, and what each gets:
- **A file changed** (a flipped byte, a truncation, a rewrite): its size or sha256 disagrees with
  the record; the error names the file.
- **The record changed**: checksums.json carries the sha256 of its own entries (`seal`), so an edited
  or corrupted entry is reported as damage to checksums.json, not blamed on the file it describes.
- **The record is gone**: a writer that records checksums also says so in the directory's
  config.json (`"checksums": "checksums.json"`, see `MARKER`), so a deleted checksums.json is
  refused by name instead of turning verification off. A directory with neither (written before
  checksums existed) is read unchecked, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import warnings

FILE = "checksums.json"
MARKER = {"checksums": FILE}  # what a checksumming writer puts in its config.json (see the module doc)
_CONFIG = "config.json"


class DamagedFile(ValueError):
    """A file (or the record of it) differs from what was written; the message names it."""


def sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _seal(files: dict) -> str:
    """The sha256 of the entries, in one canonical spelling (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(files, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def entries(directory: pathlib.Path) -> dict:
    """{relative path: {"sha256", "bytes"}} for every file under `directory` but checksums.json."""
    return {
        str(f.relative_to(directory)): {"sha256": sha256(f), "bytes": f.stat().st_size}
        for f in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != FILE)
    }


def encode(files: dict) -> bytes:
    """checksums.json's content for these entries: the entries and their seal."""
    return json.dumps({"files": files, "seal": _seal(files)}, indent=1).encode()


def recorded(directory) -> dict | None:
    """The entries `directory` recorded, checked against their seal; None (with a warning) for a
    directory written before checksums existed. Raises DamagedFile for a damaged or missing record."""
    directory = pathlib.Path(directory)
    path = directory / FILE
    if not path.exists():
        if expected(directory):
            raise DamagedFile(
                f"{path}: missing, but {directory / _CONFIG} records that it was written; without it no "
                "file here can be checked (the checkpoint is damaged or was tampered with)"
            )
        warnings.warn(
            f"{directory} holds no {FILE} (written before checksums existed): its files are read unchecked",
            stacklevel=3,  # the loader that asked
        )
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DamagedFile(f"{path}: unreadable ({e}); the checksum record is damaged") from None
    if isinstance(data, dict) and "seal" in data:
        files = data.get("files")
        if not isinstance(files, dict) or data["seal"] != _seal(files):
            raise DamagedFile(
                f"{path}: its entries do not match its seal (the checksum record itself was changed or "
                "damaged); the files it lists cannot be checked"
            )
        return files
    return data  # the first format: the entries alone, unsealed


def expected(directory: pathlib.Path) -> bool:
    """Whether the directory's config.json says its writer recorded checksums."""
    try:
        return json.loads((directory / _CONFIG).read_text()).get("checksums") == FILE
    except (OSError, ValueError, AttributeError):
        return False  # no readable config: its own reader will name that


def check(path: pathlib.Path, files: dict) -> None:
    """Raise DamagedFile if `path` differs from its entry in `files` (its directory's record)."""
    want = files.get(path.name)
    record = path.parent / FILE
    if not isinstance(want, dict) or not {"sha256", "bytes"} <= set(want):
        raise DamagedFile(f"{path}: not listed in {record}; the checkpoint is damaged")
    if not path.exists():
        raise DamagedFile(f"{path}: missing; the checkpoint is damaged")
    size = path.stat().st_size
    if size != want["bytes"]:
        raise DamagedFile(
            f"{path}: {size:,} bytes where {want['bytes']:,} were written (truncated or "
            "overwritten); the checkpoint is damaged"
        )
    if sha256(path) != want["sha256"]:
        raise DamagedFile(
            f"{path}: checksum mismatch (sha256 differs from the one recorded at save); "
            "the file was changed or damaged after it was written"
        )


def verify(path) -> None:
    """Raise DamagedFile naming `path` if it differs from what its directory recorded."""
    path = pathlib.Path(path)
    files = recorded(path.parent)
    if files is not None:
        check(path, files)


def verify_all(directory) -> None:
    """verify() every file `directory` recorded, reading checksums.json once."""
    directory = pathlib.Path(directory)
    files = recorded(directory)
    for name in files or ():
        check(directory / name, files)
