"""Exceptions meant for people: each names what was wrong and, where it can, how to fix it; and the
sentence for a failure of the machine itself (disk full, permissions).
"""

from __future__ import annotations

import errno


class SelftuneError(Exception):
    """Base of every error the CLI prints as a message rather than a traceback."""


class ModelSpecError(SelftuneError):
    """A model spec that is not builtin:NAME, a .gguf file, a checkpoint directory or a hub id."""


class MissingExtraError(SelftuneError):
    """An optional dependency is needed; the message says which extra to install."""


class ConfigError(SelftuneError):
    """A config file or override that does not fit the schema (unknown key, bad value)."""


class RecordError(SelftuneError):
    """One or more bad records; `problems` holds `file:line: field: problem` lines."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = problems[:50]
        more = f"\n... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        super().__init__("\n".join(shown) + more)


class TooManyDroppedError(SelftuneError):
    """More training rows than allowed could not be masked."""


class RunLockedError(SelftuneError):
    """Another process holds the run directory's lock."""


class NoTrainingDataError(SelftuneError):
    """A stage has nothing to train on (no passing sample, no pair)."""


class StageRecordError(SelftuneError):
    """A stage built a record that its own schema rejects (a bug, named instead of a traceback)."""


class LineageError(SelftuneError):
    """A stage's upstream input is missing, incomplete or changed since it was recorded."""


# Failures of the machine rather than of selftune or its input, said in a sentence: a traceback
# would suggest a bug. Anything else still raises.
SYSTEM_PROBLEMS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENAMETOOLONG: "a file name is too long",
}


def system_problem(exc: BaseException) -> str | None:
    """A sentence for a failure of the machine (disk full, permissions) anywhere in `exc`'s
    chain, or None. Libraries written in Rust (tokenizers, safetensors) report an OS error as a
    plain exception holding the OS's text, so that text is recognised too."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in SYSTEM_PROBLEMS:
            where = f" ({exc.filename})" if exc.filename else ""
            return f"{SYSTEM_PROBLEMS[exc.errno]}{where}: {exc.strerror}"
        for code, sentence in SYSTEM_PROBLEMS.items():
            if f"(os error {code})" in str(exc):
                return f"{sentence}: {str(exc).strip().splitlines()[-1]}"
        exc = exc.__cause__ or exc.__context__
    return None
