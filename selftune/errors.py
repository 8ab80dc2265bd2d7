"""Exceptions meant for people: each names what was wrong and, where it can, how to fix it."""


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
