"""A stage's manifest (`manifest.json`, written last) and the check that decides reuse.

A stage is reused only when its manifest says complete, its config hash matches and every
recorded input and output still has its sha256 (`stage_state`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from selftune.errors import LineageError
from selftune.run.files import sha256_path

logger = logging.getLogger("selftune.runs")


MANIFEST = "manifest.json"


_TRACKED_PACKAGES = ("selftune", "torch", "transformers", "peft", "accelerate", "datasets")


def config_hash(config: BaseModel | dict | None) -> str:
    """Stable hash of a stage's config (canonical JSON of its fields)."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else (config or {})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------


class FileRef(BaseModel):
    path: str = Field(description="Path as recorded: relative to the run root when inside it.")
    sha256: str


class Manifest(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    stage: str
    round_number: int = Field(alias="round")  # "round" in manifest.json
    status: Literal["complete", "failed"]
    config_hash: str
    inputs: dict[str, FileRef] = Field(default_factory=dict)
    outputs: dict[str, FileRef] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    started_at: str
    finished_at: str
    seconds: float
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def read_manifest(stage_dir: Path) -> Manifest | None:
    """The stage's manifest, None when it has none; a ManifestError when it cannot be read (an
    empty or hand-edited file): a stage with such a manifest counts as not completed."""
    path = Path(stage_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except (ValidationError, OSError) as exc:
        problem = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise ManifestError(f"{path}: unreadable manifest ({problem}); rerun the stage to rewrite it") from None


class ManifestError(LineageError):
    """A manifest.json that is empty, truncated or not a manifest."""


def readable_manifest(stage_dir: Path) -> Manifest | None:
    """Like `read_manifest`, but an unreadable manifest is logged and treated as absent: the stage
    reruns and writes a new one."""
    try:
        return read_manifest(stage_dir)
    except ManifestError as exc:
        logger.warning("%s", exc)
        return None


@dataclass(frozen=True)
class StageState:
    valid: bool
    reason: str  # why the stage must run again, or "up to date"


def stage_state(
    stage_dir: Path,
    *,
    config_hash: str,
    inputs: dict[str, Path],
    root: Path | None = None,
    hashed: dict[str, str] | None = None,
) -> StageState:
    """Is this stage complete and still valid for these inputs and this config?

    Valid means: a manifest with status complete, the same config hash, the same set of inputs
    with unchanged sha256, and every recorded output still present with its recorded sha256.
    Each input sha256 computed on the way is put in `hashed` (name -> sha256) when given.
    """
    try:
        manifest = read_manifest(stage_dir)
    except ManifestError as exc:
        return StageState(False, str(exc))
    if manifest is None:
        return StageState(False, "never completed (no manifest)")
    if manifest.status != "complete":
        return StageState(False, f"last attempt {manifest.status}: {manifest.error or 'unknown'}")
    if manifest.config_hash != config_hash:
        return StageState(False, "config changed")
    if set(manifest.inputs) != set(inputs):
        return StageState(False, f"inputs changed: {sorted(manifest.inputs)} -> {sorted(inputs)}")
    for name, path in inputs.items():
        if not Path(path).exists():
            return StageState(False, f"input {name} missing: {path}")
        digest = sha256_path(Path(path))
        if hashed is not None:
            hashed[name] = digest
        if digest != manifest.inputs[name].sha256:
            return StageState(False, f"input {name} changed: {path}")
    base = Path(root) if root else Path(stage_dir)
    for name, ref in manifest.outputs.items():
        path = resolve_recorded(base, ref.path)
        if not path.exists():
            return StageState(False, f"output {name} missing: {path}")
        if sha256_path(path) != ref.sha256:
            return StageState(False, f"output {name} modified since it was written: {path}")
    return StageState(True, "up to date")


def resolve_recorded(root: Path, recorded: str) -> Path:
    path = Path(recorded)
    return path if path.is_absolute() else root / path


def round_seconds(seconds: float) -> float:
    return float(f"{seconds:.3f}")


def iso_time(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))
