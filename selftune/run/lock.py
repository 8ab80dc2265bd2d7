"""One writer per run: an OS file lock on the run folder, freed if the process dies."""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock, Timeout

from selftune.errors import RunLockedError


class RunLock:
    """An exclusive, non-blocking lock on a run directory (an OS file lock: freed if we die)."""

    def __init__(self, root: Path):

        self.path = Path(root) / ".lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path), timeout=0)

    def __enter__(self) -> RunLock:

        try:
            self._lock.acquire()
        except Timeout:
            raise RunLockedError(
                f"run {self.path.parent} is in use by another selftune process "
                f"(lock {self.path}); wait for it to finish"
            ) from None
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()
