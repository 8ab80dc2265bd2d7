"""What a stage declares it reads (`StageSpec`), and the view that holds it to that.

A stage reads the config only through `spec.view(cfg)`, which refuses any field the spec does not
declare; its config hash covers exactly the declared `reads`, so a field that decides a stage's
outputs cannot go unhashed.

Usage:
    SAMPLE = StageSpec("sample", output="samples", reads=("sample", "model.dtype"))
    cfg = SAMPLE.view(cfg)          # typed as the config it wraps; cfg.prompts raises
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from pydantic import BaseModel

from selftune.errors import SelftuneError


class UndeclaredConfigRead(SelftuneError):
    """A stage read a config field its `StageSpec` does not declare (a selftune bug)."""


Config = TypeVar("Config")


@dataclass(frozen=True)
class StageSpec:
    """A stage's declaration: its name, its main output, and every config field it reads.

    `reads` are dotted config paths that decide the stage's outputs; they, and nothing else of
    the config, make its config hash. `unhashed` are fields it reads that cannot change its
    outputs (batch sizes, trust flags); each says why where it is declared. The stage reads the
    config only through `view(cfg)`, which refuses any other field, so a field that decides the
    outputs cannot be read without being hashed.
    """

    name: str
    output: str | Callable[[Any], str]
    reads: tuple[str, ...]
    unhashed: tuple[str, ...] = ()

    def view(self, cfg: Config) -> Config:
        """`cfg` as this stage may read it: a `ConfigView` that refuses undeclared fields, typed as
        the config it wraps so that readers and type checkers follow `cfg.sample.k` to its field."""
        return cfg if isinstance(cfg, ConfigView) else cast(Config, ConfigView(cfg, self, ""))

    def config(self, cfg, facts: dict[str, Any] | None = None) -> dict[str, Any]:
        """What the config hash covers: each declared read's value, plus `facts` the stage
        decided from its arguments (the policy model it samples, the models it evaluates)."""
        real = cfg._target if isinstance(cfg, ConfigView) else cfg
        values = {path: _dumped(_lookup(real, path)) for path in self.reads}
        return {**values, **{f"fact:{k}": _dumped(v) for k, v in (facts or {}).items()}}

    def output_name(self, cfg) -> str:
        return self.output(cfg) if callable(self.output) else self.output


class ConfigView:
    """Read-only view of a config that allows only the paths its stage declares."""

    __slots__ = ("_target", "_spec", "_prefix")

    def __init__(self, target, spec: StageSpec, prefix: str):
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name: str):
        path = self._prefix + name
        declared = self._spec.reads + self._spec.unhashed
        if any(path == d or path.startswith(d + ".") for d in declared):
            return getattr(self._target, name)
        if any(d.startswith(path + ".") for d in declared):
            return ConfigView(getattr(self._target, name), self._spec, path + ".")
        raise UndeclaredConfigRead(
            f"stage {self._spec.name} read config field {path}, which its StageSpec does "
            "not declare: add it to reads (it decides the outputs) or unhashed"
        )

    def __setattr__(self, name, value):
        raise AttributeError("a stage's config view is read-only")

    def whole(self):
        """The config behind the view, for a child process that views it again through the same spec."""
        return object.__getattribute__(self, "_target")


def _lookup(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _dumped(value):
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_dumped(v) for v in value]
    return value
