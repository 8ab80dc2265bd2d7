"""One run folder (`Run`): where stages write, how they find their inputs, and the one preamble.

A stage finds its inputs through the upstream stage's manifest (`Run.output_of`), never by
looking for the newest file. `Run.begin` hashes what a stage declares, checks reuse and hands back
either the recorded output or the context that runs the stage (`Run.stage`), whose manifest is
written last, as failed on an exception.

Usage:
    def sample_stage(run: Run, cfg: PipelineConfig) -> Path:
        cfg = SAMPLE.view(cfg)
        prompts = run.output_of("prompts", "prompts")          # path recorded upstream, verified
        start = run.begin(SAMPLE, cfg, inputs={"prompts": prompts})
        if start.reused:                                       # complete, same config and inputs
            return start.reused
        with start as stage:
            write_jsonl(stage.dir / "samples.jsonl", rows)
            stage.add_output("samples", stage.dir / "samples.jsonl")
            stage.metrics["pass_rate"] = 0.61
        return stage.dir / "samples.jsonl"
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from selftune.config.loading import dump_config, load_config
from selftune.errors import LineageError, SelftuneError, StageRecordError
from selftune.run.files import atomic_write, sha256_path, write_json
from selftune.run.lock import RunLock
from selftune.run.manifest import (
    MANIFEST,
    FileRef,
    Manifest,
    StageState,
    config_hash,
    iso_time,
    package_versions,
    read_manifest,
    readable_manifest,
    resolve_recorded,
    round_seconds,
    stage_state,
)
from selftune.run.spec import StageSpec


@dataclass(frozen=True)
class StageEvent:
    """What `Run.up_to_date` decided for one stage: `skip` (up to date) or `run`, and why."""

    stage: str
    round_number: int
    action: Literal["skip", "run"]
    reason: str


def _within(value: Any, root: Path) -> Any:
    """`value` with every absolute path string inside `root` made relative to it."""
    if isinstance(value, (list, tuple)):
        return type(value)(_within(v, root) for v in value)
    if isinstance(value, dict):
        return {k: _within(v, root) for k, v in value.items()}
    if isinstance(value, str) and value.startswith(str(root) + os.sep):
        return value[len(str(root)) + 1 :]
    return value


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
        path = resolve_recorded(self.root, manifest.outputs[output].path)
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
                started_at=iso_time(started),
                finished_at=iso_time(finished),
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


def open_run(run_dir: Path, preset: str | None, files: list[Path], sets: list[str]):
    """The run and its config: the run's saved config.yaml unless options are given, in which
    case they are resolved over it. Nothing is written here: the config is saved under the run's
    lock (a refused second writer must not change it)."""

    run = Run(run_dir)
    saved = run.root / "config.yaml"
    if saved.is_file() and not (preset or files or sets):
        return run, run.saved_config()
    if saved.is_file() and not preset:
        cfg = load_config(files=[saved, *files], overrides=sets)
    else:
        cfg = load_config(preset, files, sets)
    return run, cfg
