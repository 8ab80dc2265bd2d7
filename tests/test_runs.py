import os
import subprocess
import sys
import textwrap

import pytest

from selftune.errors import LineageError
from selftune.run.files import atomic_dir, atomic_write
from selftune.run.folder import Run
from selftune.run.manifest import config_hash, read_manifest


def complete_stage(run, tmp_path, cfg=None):
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text('{"id": "a"}\n')
    with run.stage("sample", config=cfg or {"k": 4}, inputs={"prompts": prompts}) as stage:
        out = stage.dir / "samples.jsonl"
        with atomic_write(out) as handle:
            handle.write('{"prompt_id": "a"}\n')
        stage.add_output("samples", out)
        stage.metrics["rows"] = 1
    return prompts


def test_complete_stage_is_valid_until_an_input_changes(tmp_path):
    run = Run(tmp_path / "run")
    prompts = complete_stage(run, tmp_path)
    state = run.state("sample", config_hash=config_hash({"k": 4}), inputs={"prompts": prompts})
    assert state.valid, state.reason
    manifest = run.manifest("sample")
    assert manifest.outputs["samples"].path == "round-1/sample/samples.jsonl"
    assert manifest.metrics == {"rows": 1} and "torch" in manifest.versions

    prompts.write_text('{"id": "b"}\n')
    state = run.state("sample", config_hash=config_hash({"k": 4}), inputs={"prompts": prompts})
    assert not state.valid and state.reason.startswith("input prompts changed")


def test_config_change_and_modified_output_make_stage_stale(tmp_path):
    run = Run(tmp_path / "run")
    prompts = complete_stage(run, tmp_path)
    state = run.state("sample", config_hash=config_hash({"k": 8}), inputs={"prompts": prompts})
    assert (state.valid, state.reason) == (False, "config changed")
    (run.stage_dir("sample") / "samples.jsonl").write_text("tampered\n")
    state = run.state("sample", config_hash=config_hash({"k": 4}), inputs={"prompts": prompts})
    assert not state.valid and "modified" in state.reason
    with pytest.raises(LineageError, match="changed after it was recorded"):
        run.output_of("sample", "samples")


def test_rerun_after_changed_input_hashes_it_once_and_records_the_new_sha(tmp_path, patch_everywhere):
    import selftune.run.files as runs

    run = Run(tmp_path / "run", reuse=True)
    prompts = complete_stage(run, tmp_path)
    prompts.write_text('{"id": "b"}\n')
    hashed = []
    real = runs.sha256_path
    patch_everywhere(runs, "sha256_path", lambda path: hashed.append(path.resolve()) or real(path))
    assert not run.up_to_date("sample", config={"k": 4}, inputs={"prompts": prompts})
    complete_stage(run, tmp_path)
    assert hashed.count(prompts.resolve()) == 1
    assert run.manifest("sample").inputs["prompts"].sha256 == real(prompts)
    assert run.up_to_date("sample", config={"k": 4}, inputs={"prompts": prompts})


def test_exception_after_outputs_leaves_stage_incomplete(tmp_path):
    run = Run(tmp_path / "run")
    prompts = complete_stage(run, tmp_path)
    with pytest.raises(RuntimeError):
        with run.stage("sample", config={"k": 4}, inputs={"prompts": prompts}) as stage:
            out = stage.dir / "samples.jsonl"
            with atomic_write(out) as handle:
                handle.write("new\n")
            stage.add_output("samples", out)
            raise RuntimeError("crash before the manifest")
    assert read_manifest(run.stage_dir("sample")).status == "failed"
    assert not run.state("sample", config_hash=config_hash({"k": 4}), inputs={"prompts": prompts}).valid
    with pytest.raises(LineageError, match="has not completed"):
        run.output_of("sample", "samples")


def test_sigkill_between_outputs_and_manifest_leaves_no_complete_stage(tmp_path):
    run = Run(tmp_path / "run")
    prompts = complete_stage(run, tmp_path)  # an earlier complete result exists
    script = textwrap.dedent(
        f"""
        import os, signal
        from selftune.run.files import atomic_write
        from selftune.run.folder import Run
        run = Run({str(tmp_path / "run")!r})
        with run.stage("sample", config={{"k": 4}}, inputs={{"prompts": {str(prompts)!r}}}) as stage:
            with atomic_write(stage.dir / "samples.jsonl") as handle:
                handle.write("half\\n")
            stage.add_output("samples", stage.dir / "samples.jsonl")
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script])
    assert result.returncode == -9
    assert read_manifest(run.stage_dir("sample")) is None
    state = run.state("sample", config_hash=config_hash({"k": 4}), inputs={"prompts": prompts})
    assert (state.valid, state.reason) == (False, "never completed (no manifest)")


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")
    with pytest.raises(ValueError):
        with atomic_write(path) as handle:
            handle.write("partial")
            raise ValueError("boom")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_second_process_cannot_take_the_lock(tmp_path):
    run = Run(tmp_path / "run")
    script = textwrap.dedent(
        f"""
        import sys
        from selftune.errors import RunLockedError
        from selftune.run.folder import Run
        try:
            with Run({str(tmp_path / "run")!r}).lock():
                sys.exit(0)
        except RunLockedError as exc:
            print(exc)
            sys.exit(3)
        """
    )
    with run.lock():
        held = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert held.returncode == 3 and "in use by another selftune process" in held.stdout
    free = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert free.returncode == 0


def test_output_of_names_missing_output(tmp_path):
    run = Run(tmp_path / "run")
    complete_stage(run, tmp_path)
    with pytest.raises(LineageError, match="recorded no output 'pairs'"):
        run.output_of("sample", "pairs")
    assert run.output_of("sample", "samples") == run.stage_dir("sample") / "samples.jsonl"


def _settle(folder, seconds_ago=60):
    """Date every file back, as for a checkpoint written earlier (fresh files are never cached)."""
    import os
    import time

    for file in folder.rglob("*"):
        os.utime(file, ns=(time.time_ns() - seconds_ago * 10**9,) * 2)


def test_an_all_skip_rerun_reads_each_model_file_once(tmp_path, monkeypatch):
    """Bug: `output_of` and the reuse check each hashed a model folder in full, so an all-skip rerun
    read a 32B checkpoint several times. Within one process an unchanged file is read once; a
    changed size, mtime, ctime or inode makes it read again."""
    import builtins
    import os
    from collections import Counter

    import selftune.run.files as runs

    run = Run(tmp_path / "run", reuse=True)
    with run.stage("sft", config={}) as stage:
        merged = stage.dir / "merged"
        merged.mkdir()
        for name in ("model.safetensors", "config.json"):
            (merged / name).write_text(name * 100)
        stage.add_output("merged", merged)
    _settle(merged)
    with run.stage("dpo", config={}, inputs={"sft": merged}) as stage:
        (stage.dir / "out.txt").write_text("x")
        stage.add_output("out", stage.dir / "out.txt")
    _settle(run.stage_dir("dpo"))
    reads = []
    real_open = builtins.open

    def counting_open(file, mode="r", *args, **kwargs):
        if "b" in mode and "r" in mode:
            reads.append(os.path.basename(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(runs, "open", counting_open, raising=False)
    for _ in range(3):  # three reruns in one process: reuse checks and lineage lookups
        path = run.output_of("sft", "merged")
        assert run.up_to_date("dpo", config={}, inputs={"sft": path})
    assert reads and all(count == 1 for count in Counter(reads).values()), Counter(reads)

    (merged / "config.json").write_text("changed!" * 10)  # a changed file is read again
    _settle(merged, seconds_ago=30)
    reads.clear()
    assert not run.up_to_date("dpo", config={}, inputs={"sft": merged})
    assert "config.json" in reads


def test_a_record_a_stage_builds_against_its_own_schema_is_a_named_error(tmp_path):
    """Bug: an empty answer reached `pairs`, which built a PairRecord its schema rejects, and the
    user saw a pydantic traceback. Any such record now fails its stage with a named error."""
    from selftune.data.records import PairRecord
    from selftune.errors import SelftuneError, StageRecordError

    run = Run(tmp_path / "run")
    with pytest.raises(
        StageRecordError, match=r"round-1/pairs built a PairRecord record .*chosen\.0\.content"
    ) as caught:
        with run.stage("pairs", config={}):
            PairRecord(
                id="p",
                prompt=[{"role": "user", "content": "q"}],
                chosen=[{"role": "assistant", "content": " "}],
                rejected=[{"role": "assistant", "content": "no"}],
                negative_source="policy",
            )
    assert isinstance(caught.value, SelftuneError)
    manifest = run.manifest("pairs")
    assert manifest.status == "failed" and "chosen.0.content" in manifest.error


def test_a_stage_reads_only_what_it_declares_and_its_hash_covers_every_declared_read():
    from selftune.config.loading import load_config
    from selftune.run.spec import StageSpec, UndeclaredConfigRead

    spec = StageSpec(
        "sft-data",
        output="sft",
        reads=("sft_data", "sample.scorer.pass_threshold"),
        unhashed=("generation.batch_size",),
    )
    cfg = load_config("tiny")
    view = spec.view(cfg)
    assert view.sample.scorer.pass_threshold == 0.5 and view.sft_data.dedupe == cfg.sft_data.dedupe
    assert view.generation.batch_size == cfg.generation.batch_size
    with pytest.raises(UndeclaredConfigRead, match="sample.scorer.kind"):
        _ = view.sample.scorer.kind
    with pytest.raises(UndeclaredConfigRead, match="dpo"):
        _ = view.dpo
    changed = load_config("tiny", overrides=["sample.scorer.pass_threshold=0.9"])
    assert spec.config(changed) != spec.config(cfg)
    assert spec.config(load_config("tiny", overrides=["generation.batch_size=3"])) == spec.config(cfg)


def test_every_stage_declares_paths_that_exist():
    from selftune.config.loading import load_config
    from selftune.run.plan import OPTIONAL_STAGES, STAGES
    from selftune.run.spec import StageSpec
    from selftune.stages import dpo, evaluate, grpo, pairs, prompts, report, sample, sft, sft_data

    specs = [
        value
        for module in (dpo, evaluate, grpo, pairs, prompts, report, sample, sft, sft_data)
        for value in vars(module).values()
        if isinstance(value, StageSpec)
    ]
    assert sorted(spec.name for spec in specs) == sorted(STAGES + OPTIONAL_STAGES)
    cfg = load_config("demo")
    for spec in specs:
        spec.config(cfg)  # every declared read resolves
        for path in spec.unhashed:
            obj = cfg
            for part in path.split("."):
                obj = getattr(obj, part)


def test_scratch_left_by_a_killed_process_is_removed_and_a_live_ones_kept(tmp_path):
    """Bug: a merge killed mid-write left `.merged.tmp-<pid>` (model-sized) forever."""
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead = tmp_path / f".merged.tmp-{finished.pid}"
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"x" * 1000)
    live = tmp_path / f".merged.tmp-{os.getppid()}"  # a process that is still running
    live.mkdir()
    with atomic_dir(tmp_path / "merged") as scratch:
        (scratch / "config.json").write_text("{}")
    assert not dead.exists() and live.is_dir()
    assert (tmp_path / "merged" / "config.json").read_text() == "{}"


def test_mean_train_loss_covers_every_logged_interval():
    from selftune.train.toolkit import mean_train_loss

    history = [{"loss": 4.0, "step": 2}, {"eval_loss": 9.0, "step": 2}, {"loss": 1.0, "step": 3}]
    assert mean_train_loss(history) == pytest.approx((4.0 * 2 + 1.0) / 3)
    assert mean_train_loss([{"eval_loss": 1.0, "step": 1}]) is None
