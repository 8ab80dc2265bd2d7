"""Files that never look complete before they are: sha256 digests, atomic writes, JSONL.

Outputs go to a temporary name beside their final path (`.NAME.tmp-PID`) and are renamed when
complete, so a crash leaves no file that looks finished; leftovers of dead processes are removed.
Digests of unchanged files are computed once per process.

Usage:
    with atomic_write(path) as handle:
        handle.write(text)
    write_jsonl(path, records)          # dicts or pydantic models
    sha256_path(folder)                 # a file, or a folder's names and contents
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

logger = logging.getLogger("selftune.runs")

# ---------------------------------------------------------------------------------------------
# Hashing and atomic writes
# ---------------------------------------------------------------------------------------------


# Digests already computed in this process, keyed by what identifies the bytes they cover (see
# `_signature`): an all-skip rerun of a 32B run would otherwise read every checkpoint several
# times (each stage's reuse check, each `output_of`), minutes of disk reads.
_DIGESTS: dict[tuple, str] = {}


_RACY_NS = 2_000_000_000


def _signature(path: Path, files: list[Path]) -> tuple:
    """(path, and per file: relative name, size, mtime_ns, ctime_ns, inode); any write changes it,
    an atomic replace changes the inode, so a cached digest is used only for unchanged files."""
    entries = []
    for file in files:
        stat = file.stat()
        name = "" if file == path else str(file.relative_to(path))
        entries.append((name, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino))
    return str(path), tuple(entries)


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a directory's relative file names and contents (sorted); computed
    once per process for unchanged files."""
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    key = _signature(path, files)
    if key in _DIGESTS:
        return _DIGESTS[key]
    digest = hashlib.sha256()
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\x00")
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    # A file modified within the clock's granularity of this moment could change again with the
    # same size and times (a "racy" entry); such digests are not kept.
    settled = time.time_ns() - _RACY_NS
    if all(entry[2] < settled for entry in key[1]):
        _DIGESTS[key] = digest.hexdigest()
    return digest.hexdigest()


def _scratch_name(path: Path) -> Path:
    remove_stale_scratch(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_stale_scratch(path: Path) -> None:
    """Remove `.NAME.tmp-PID` leftovers of `path` whose process is gone (killed mid-write; a
    merged model's scratch folder is model-sized). A live process's scratch is left alone."""
    for scratch in Path(path).parent.glob(f".{Path(path).name}.tmp-*"):
        pid = scratch.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            logger.info("removing %s, left by a process that was stopped while writing", scratch)
            if scratch.is_dir():
                shutil.rmtree(scratch, ignore_errors=True)
            else:
                scratch.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Write to a temporary name beside `path`, then rename over it; an error leaves `path` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = _scratch_name(path)
    try:
        with open(scratch, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(scratch, path)
    finally:
        if scratch.exists():
            scratch.unlink()


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Fill a temporary directory, then swap it in for `path` (e.g. a saved model)."""
    path = Path(path)
    scratch = _scratch_name(path)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        yield scratch
        shutil.rmtree(path, ignore_errors=True)
        os.replace(scratch, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    with atomic_write(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")


def write_jsonl(path: Path, rows) -> int:
    """Write rows (dicts or pydantic models) as JSONL atomically; returns the row count."""
    count = 0
    with atomic_write(path) as handle:
        for row in rows:
            data = row.model_dump(mode="json", exclude_none=True) if isinstance(row, BaseModel) else row
            handle.write(json.dumps(data, ensure_ascii=False) + "\n")
            count += 1
    return count
