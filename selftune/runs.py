"""Run directory, stage manifests, lineage, atomic writes and the run lock.

    runs/<name>/
      config.yaml              resolved config of the whole run
      .lock                    held by the one process writing this run
      round-1/<stage>/         each stage writes only inside its own folder
          manifest.json        written last: status, config hash, inputs and outputs with sha256,
                               package versions, timings, metrics

A stage finds its inputs through the upstream stage's manifest (`Run.output_of`), never by
looking for the newest file. Outputs go to a temporary name and are renamed when complete, and the
manifest is written after them, so a crash leaves no stage that looks complete.

A stage declares the config fields it reads (`StageSpec`); it reads the config only through the
spec's view, which refuses any other field, and its config hash covers exactly those fields, so
a field that decides a stage's outputs cannot go unhashed. `Run.begin` is the one preamble.

Usage:
    SAMPLE = StageSpec("sample", output="samples", reads=("sample", "model.dtype"))

    def sample_stage(run, cfg):
        cfg = SAMPLE.view(cfg)
        prompts = run.output_of("prompts", "prompts")          # path recorded upstream, verified
        start = run.begin(SAMPLE, cfg, inputs={"prompts": prompts})
        if start.reused:                                       # complete, same config and inputs
            return start.reused
        with start as stage:
            with atomic_write(stage.dir / "samples.jsonl") as handle:
                ...
            stage.add_output("samples", stage.dir / "samples.jsonl")
            stage.metrics["pass_rate"] = 0.61
        return stage.dir / "samples.jsonl"
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from selftune.errors import LineageError, RunLockedError, SelftuneError, StageRecordError

logger = logging.getLogger("selftune.runs")

MANIFEST = "manifest.json"
_TRACKED_PACKAGES = ("selftune", "torch", "transformers", "peft", "accelerate", "datasets")


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


def config_hash(config: BaseModel | dict | None) -> str:
    """Stable hash of a stage's config (canonical JSON of its fields)."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else (config or {})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


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


@dataclass(frozen=True)
class StageEvent:
    """What `Run.up_to_date` decided for one stage: `skip` (up to date) or `run`, and why."""

    stage: str
    round_number: int
    action: Literal["skip", "run"]
    reason: str


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
        path = _resolve(base, ref.path)
        if not path.exists():
            return StageState(False, f"output {name} missing: {path}")
        if sha256_path(path) != ref.sha256:
            return StageState(False, f"output {name} modified since it was written: {path}")
    return StageState(True, "up to date")


def _within(value: Any, root: Path) -> Any:
    """`value` with every absolute path string inside `root` made relative to it."""
    if isinstance(value, (list, tuple)):
        return type(value)(_within(v, root) for v in value)
    if isinstance(value, dict):
        return {k: _within(v, root) for k, v in value.items()}
    if isinstance(value, str) and value.startswith(str(root) + os.sep):
        return value[len(str(root)) + 1 :]
    return value


def _resolve(root: Path, recorded: str) -> Path:
    path = Path(recorded)
    return path if path.is_absolute() else root / path


# ---------------------------------------------------------------------------------------------
# Runs and stages
# ---------------------------------------------------------------------------------------------


class StageContext:
    """Handed to a stage's body: where to write, and what to record in the manifest."""

    def __init__(
        self, run: Run, name: str, round_number: int, config_hash: str, inputs: dict[str, Path], fingerprint: str
    ):
        self.run = run
        self.name = name
        self.round = round_number
        self.dir = run.stage_dir(name, round_number)
        self.config_hash = config_hash
        self.inputs = inputs
        self.outputs: dict[str, Path] = {}
        self.metrics: dict[str, Any] = {}
        self.finished_before = False  # set by Run.stage: the stage had completed before this run
        # Config hash plus the inputs' sha256: training checkpoints are reused only under the same
        # fingerprint, so a resume never continues from a run on other data.
        self.fingerprint = fingerprint

    def add_output(self, name: str, path: Path) -> Path:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"stage {self.name}: output {name} was not written: {path}")
        self.outputs[name] = path
        return path


class Run:
    """One run directory. All paths recorded in manifests are relative to `root` when inside it."""

    def __init__(self, root: Path | str, *, reuse: bool = False, on_event=None):
        self.root = Path(root).resolve()
        # `selftune run` reuses every stage that is complete and still valid (`up_to_date`); a
        # stage command run on its own always runs.
        self.reuse = reuse
        self.on_event = on_event or (lambda event: None)
        # (stage, round) -> {input name: (path, sha256)} computed by `up_to_date`, taken by the
        # `stage()` call that follows, so a rerun hashes a large input (a 32B checkpoint) once.
        self._input_hashes: dict[tuple[str, int], dict[str, tuple[Path, str]]] = {}
        self._config_on_start = None

    def up_to_date(
        self, stage: str, *, config: BaseModel | dict | None, inputs: dict[str, Path], round_number: int = 1
    ) -> bool:
        """With `reuse` on: is `stage` complete and valid for this config and these inputs?

        The decision goes to `on_event` either way, so a caller can say what it skipped and why
        it reran the rest. Stage functions call this with the same config and inputs that they
        hand to `stage()`, and return their recorded output when it says True.
        """
        if not self.reuse:
            return False
        inputs = {k: Path(v) for k, v in inputs.items()}
        hashed: dict[str, str] = {}
        state = self.state(
            stage, config_hash=config_hash(config), inputs=inputs, round_number=round_number, hashed=hashed
        )
        self._input_hashes[(stage, round_number)] = {k: (inputs[k], digest) for k, digest in hashed.items()}
        self.on_event(StageEvent(stage, round_number, "skip" if state.valid else "run", state.reason))
        return state.valid

    def save_config(self, cfg) -> Path:
        """Write the run's resolved config (`config.yaml`), which later stages and commands read
        (the rounds to evaluate, the base model)."""
        from selftune.config import dump_config

        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.root / "config.yaml") as handle:
            handle.write(dump_config(cfg))
        return self.root / "config.yaml"

    def save_config_on_start(self, cfg) -> None:
        """Save `cfg` as the run's config when a stage starts writing, not before: a command
        that refuses its input leaves config.yaml as it was."""
        self._config_on_start = cfg

    def saved_config(self):
        """The config this run was last started with."""
        from selftune.config import load_config

        if not self.root.is_dir():
            raise LineageError(f"{self.root}: no such run folder")
        if not (self.root / "config.yaml").is_file():
            raise LineageError(
                f"{self.root} has no config.yaml: start it with `selftune run` or run_pipeline(run_dir, cfg)"
            )
        return load_config(files=[self.root / "config.yaml"])

    def begin(
        self,
        spec: StageSpec,
        cfg,
        *,
        inputs: dict[str, Path],
        round_number: int = 1,
        facts: dict[str, Any] | None = None,
    ) -> StageStart:
        """The one stage preamble: hash what `spec` declares (and `facts`), check reuse, and hand
        back either the recorded output or the context that runs the stage:

            start = run.begin(SPEC, cfg, inputs=inputs, round_number=r, facts={"policy": policy})
            if start.reused:
                return start.reused
            with start as stage:
                ...
        """
        # A model inside the run (round 1's merged SFT model) enters the hash by its place in the
        # run, not its absolute path: a run folder moved or copied elsewhere is still up to date.
        config = spec.config(cfg, {k: _within(v, self.root) for k, v in (facts or {}).items()})
        reused = None
        if self.up_to_date(spec.name, config=config, inputs=inputs, round_number=round_number):
            reused = self.output_of(spec.name, spec.output_name(cfg), round_number=round_number)
        return StageStart(self, spec, config, {k: Path(v) for k, v in inputs.items()}, round_number, reused)

    def stage_dir(self, stage: str, round_number: int = 1) -> Path:
        return self.root / f"round-{round_number}" / stage

    def lock(self):
        return RunLock(self.root)

    def manifest(self, stage: str, round_number: int = 1) -> Manifest | None:
        return read_manifest(self.stage_dir(stage, round_number))

    def state(
        self,
        stage: str,
        *,
        config_hash: str,
        inputs: dict[str, Path],
        round_number: int = 1,
        hashed: dict[str, str] | None = None,
    ) -> StageState:
        return stage_state(
            self.stage_dir(stage, round_number), config_hash=config_hash, inputs=inputs, root=self.root, hashed=hashed
        )

    def output_of(self, stage: str, output: str, round_number: int = 1) -> Path:
        """The path an upstream stage recorded for one of its outputs, checked against its sha256."""
        manifest = self.manifest(stage, round_number)
        where = f"{self.root.name}/round-{round_number}/{stage}"
        if manifest is None or manifest.status != "complete":
            raise LineageError(f"stage {where} has not completed: run it first")
        if output not in manifest.outputs:
            raise LineageError(f"stage {where} recorded no output {output!r} (it has: {', '.join(manifest.outputs)})")
        path = _resolve(self.root, manifest.outputs[output].path)
        if not path.exists():
            raise LineageError(f"output {output!r} of {where} is missing: {path}")
        if sha256_path(path) != manifest.outputs[output].sha256:
            raise LineageError(f"output {output!r} of {where} changed after it was recorded: {path}")
        return path

    def optional_output(self, stage: str, output: str, round_number: int = 1) -> Path | None:
        """Like `output_of` for an output a completed stage may leave out (held-out pairs when
        no eval prompt got a passing answer): None when the stage has not run or did not record it."""
        manifest = self.manifest(stage, round_number)
        if manifest is None or manifest.status != "complete" or output not in manifest.outputs:
            return None
        return self.output_of(stage, output, round_number)

    def _record(self, path: Path, sha256: str | None = None) -> FileRef:
        path = Path(path).resolve()
        try:
            shown = str(path.relative_to(self.root))
        except ValueError:
            shown = str(path)
        return FileRef(path=shown, sha256=sha256 or sha256_path(path))

    @contextlib.contextmanager
    def stage(
        self,
        name: str,
        *,
        config: BaseModel | dict | None,
        inputs: dict[str, Path] | None = None,
        round_number: int = 1,
    ) -> Iterator[StageContext]:
        """Run a stage's body; write its manifest last (complete), or as failed on an exception.

        The old manifest is removed first, so a crash (even SIGKILL) mid-stage leaves the stage
        incomplete rather than looking like the previous, now overwritten, result.
        """
        inputs = {k: Path(v) for k, v in (inputs or {}).items()}
        known = self._input_hashes.pop((name, round_number), {})
        input_refs = {
            k: self._record(v, known[k][1] if k in known and known[k][0] == v else None) for k, v in inputs.items()
        }
        stage_hash = config_hash(config)
        digest = hashlib.sha256(stage_hash.encode())
        for key in sorted(input_refs):
            digest.update(f"{key}={input_refs[key].sha256}".encode())
        context = StageContext(self, name, round_number, stage_hash, inputs, fingerprint=digest.hexdigest()[:16])
        if self._config_on_start is not None:
            self.save_config(self._config_on_start)
            self._config_on_start = None
        context.dir.mkdir(parents=True, exist_ok=True)
        previous = readable_manifest(context.dir)
        # A stage run again after it finished (a stage command, --from) starts over; only an
        # attempt that did not finish is resumed from its checkpoints.
        context.finished_before = previous is not None and previous.status == "complete"
        (context.dir / MANIFEST).unlink(missing_ok=True)
        started = time.time()
        status, error = "complete", None
        try:
            yield context
        except ValidationError as exc:  # a record the stage built that its own schema rejects
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or exc.title}: {e['msg']}" for e in exc.errors()[:3])
            status, error = "failed", f"{exc.title}: {problems}"
            raise StageRecordError(
                f"stage round-{round_number}/{name} built a {exc.title} record that its own schema "
                f"rejects ({problems}); this is a selftune bug: please report it with "
                f"{context.dir / MANIFEST}"
            ) from exc
        except BaseException as exc:  # KeyboardInterrupt too: the manifest says why it stopped
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            free = shutil.disk_usage(context.dir).free if isinstance(exc, Exception) else DISK_FULL_BYTES
            if free < DISK_FULL_BYTES:
                # Libraries report a full disk in their own words ("file write failed"); say it once.
                raise DiskFullError(
                    f"the disk holding {self.root} is full ({free} bytes free) while stage "
                    f"round-{round_number}/{name} was writing ({type(exc).__name__}: {exc}); free space "
                    "and run the same command again: finished stages are kept"
                ) from exc
            raise
        finally:
            finished = time.time()
            manifest = Manifest(
                stage=name,
                round_number=round_number,
                status=status,  # type: ignore[arg-type]
                config_hash=context.config_hash,
                inputs=input_refs,
                outputs={k: self._record(v) for k, v in context.outputs.items()} if not error else {},
                versions=package_versions(),
                started_at=_iso(started),
                finished_at=_iso(finished),
                seconds=round_seconds(finished - started),
                metrics=context.metrics,
                error=error,
            )
            write_json(context.dir / MANIFEST, manifest.model_dump(mode="json", by_alias=True))


# ---------------------------------------------------------------------------------------------
# Stage declarations: what a stage reads, so its reuse check cannot miss a field
# ---------------------------------------------------------------------------------------------


DISK_FULL_BYTES = 4 << 20


class DiskFullError(SelftuneError):
    """A stage failed while the disk it writes to had (next to) no space left."""


class UndeclaredConfigRead(SelftuneError):
    """A stage read a config field its `StageSpec` does not declare (a selftune bug)."""


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

    def view(self, cfg) -> ConfigView:
        return cfg if isinstance(cfg, ConfigView) else ConfigView(cfg, self, "")

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


class StageStart:
    """`Run.begin`'s answer: `reused` (the recorded main output) when the stage is up to date,
    else a context manager that runs it (`Run.stage`)."""

    def __init__(
        self, run: Run, spec: StageSpec, config: dict, inputs: dict[str, Path], round_number: int, reused: Path | None
    ):
        self.run, self.spec, self.config, self.inputs, self.round_number = run, spec, config, inputs, round_number
        self.reused = reused
        self._context = None

    def __enter__(self) -> StageContext:
        self._context = self.run.stage(
            self.spec.name, config=self.config, inputs=self.inputs, round_number=self.round_number
        )
        return self._context.__enter__()

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)


def round_seconds(seconds: float) -> float:
    return float(f"{seconds:.3f}")


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))


class RunLock:
    """An exclusive, non-blocking lock on a run directory (an OS file lock: freed if we die)."""

    def __init__(self, root: Path):
        from filelock import FileLock

        self.path = Path(root) / ".lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path), timeout=0)

    def __enter__(self) -> RunLock:
        from filelock import Timeout

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
