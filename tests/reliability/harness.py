"""What the reliability tests share: the totals, the guard raised when a model loads, snapshots."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

# One row per case run: (case id, outcome, bytes of earlier files changed or removed).
OUTCOMES: list[tuple[str, str, int]] = []
IGNORED = {".lock"}  # the run lock's file is created by any command that takes the lock


class ModelLoaded(BaseException):
    """Raised by the guards when a command loads a model (BaseException: nothing may swallow it)."""


@dataclass
class Outcome:
    status: int | None  # the exit status; None when an exception escaped (a traceback)
    output: str
    error: BaseException | None


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256, size) of every file under root."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name not in IGNORED:
            data = path.read_bytes()
            files[str(path.relative_to(root))] = (hashlib.sha256(data).hexdigest(), len(data))
    return files


def bytes_lost(before: dict, after: dict) -> int:
    return sum(size for name, (digest, size) in before.items() if after.get(name, (None,))[0] != digest)
