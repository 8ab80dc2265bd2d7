"""Faults on the tiny pipeline: a process killed in each stage, Ctrl-C, damaged outputs, manifests
and checkpoints, a second writer, a full disk, a diverging or collapsing run. Each run is compared
with an uninterrupted run of the same config: the rerun must finish and give the same data.

Run with `make test-faults` (marker `faults`, a few minutes); CI runs it after `make test`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from harness import OUTCOMES, snapshot

from selftune.run.manifest import read_manifest
from selftune.run.plan import STAGES

pytestmark = pytest.mark.faults
DRIVER = Path(__file__).with_name("kill_driver.py")
# More optimizer steps than the tiny preset, a checkpoint after each: a kill lands mid-training.
FAULT_SETTINGS = [
    "pairs.k=1",
    "sft.epochs=3",
    "sft.per_device_batch_size=2",
    "sft.save_steps=1",
    "dpo.epochs=2",
    "dpo.per_device_batch_size=2",
    "dpo.save_steps=1",
]
DATA = {  # the data files a rerun must reproduce byte for byte
    "prompts": "round-1/prompts/prompts.jsonl",
    "sample": "round-1/sample/samples.jsonl",
    "sft-data": "round-1/sft-data/sft.jsonl",
    "pairs": "round-1/pairs/pairs.jsonl",
}
TRAINED = ("sft", "dpo")


def command(run_dir: Path, model: Path, *extra: str) -> list[str]:
    settings = [item for s in (f"model.spec={model}", *FAULT_SETTINGS) for item in ("--set", s)]
    return ["run", "--preset", "tiny", "--run-dir", str(run_dir), *settings, *extra]


def selftune(args: list[str], *, driver: list[str] | None = None, timeout: int = 400) -> subprocess.CompletedProcess:
    script = [str(DRIVER), *driver] if driver else ["-m", "selftune.cli"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "4000"}
    return subprocess.run([sys.executable, *script, *args], env=env, capture_output=True, text=True, timeout=timeout)


def console(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir) -> Path:
    """The uninterrupted run every faulty run is compared with."""
    root = tmp_path_factory.mktemp("reference") / "run"
    result = selftune(command(root, tiny_model_dir))
    assert result.returncode == 0, console(result)[-3000:]
    return root


def metrics(run_dir: Path, stage: str) -> dict:
    return read_manifest(run_dir / "round-1" / stage).metrics


def assert_same_as(reference: Path, run_dir: Path, note: str) -> None:
    """Same data files byte for byte, same training losses and the same evaluation."""
    for name, path in DATA.items():
        assert (run_dir / path).read_bytes() == (reference / path).read_bytes(), f"{note}: {name} differs"
    for stage in TRAINED:
        ours, theirs = metrics(run_dir, stage), metrics(reference, stage)
        assert ours["steps"] == theirs["steps"], f"{note}: {stage} steps"
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4), f"{note}: {stage} train_loss"
    ours = json.loads((run_dir / "round-1/evaluate/results.json").read_text())["models"]
    theirs = json.loads((reference / "round-1/evaluate/results.json").read_text())["models"]
    assert list(ours) == list(theirs)
    for model in theirs:  # the answers, their scores, and the trained weights' log-probs
        assert ours[model]["instruction_following"] == theirs[model]["instruction_following"], f"{note}: {model}"
        for logp in ("logp_chosen", "logp_rejected"):
            assert ours[model]["pairs"][logp] == pytest.approx(theirs[model]["pairs"][logp], rel=1e-4), note
    answers = "round-1/evaluate/answers.jsonl"
    assert (run_dir / answers).read_bytes() == (reference / answers).read_bytes(), f"{note}: eval answers differ"


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_in_each_stage_then_rerun_equals_an_uninterrupted_run(stage, reference, tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    point = "checkpoint-2" if stage in TRAINED else "output"
    killed = selftune(command(run_dir, tiny_model_dir), driver=[stage, point, "SIGKILL"])
    assert killed.returncode == -signal.SIGKILL, console(killed)[-2000:]
    assert read_manifest(run_dir / "round-1" / stage) is None  # killed before its manifest
    if stage in TRAINED:
        assert list((run_dir / "round-1" / stage / "checkpoints").glob("checkpoint-*"))
    rerun = selftune(command(run_dir, tiny_model_dir))
    assert rerun.returncode == 0, console(rerun)[-3000:]
    log = console(rerun)
    earlier = STAGES[: STAGES.index(stage)]
    assert all(f"round-1/{s}: up to date, skipped" in log for s in earlier), log[-2000:]
    if stage in TRAINED:
        assert f"{stage}: resuming from" in log and metrics(run_dir, stage)["resumed"] is True
    assert_same_as(reference, run_dir, f"killed in {stage}")
    OUTCOMES.append((f"sigkill-{stage}", "recovered", 0))


GRPO_SETTINGS = [
    item for s in ("grpo.enabled=true", "grpo.epochs=2", "grpo.learning_rate=1e-2") for item in ("--set", s)
]


@pytest.fixture(scope="module")
def grpo_reference(tmp_path_factory, tiny_model_dir) -> Path:
    """The uninterrupted run with the grpo stage on."""
    root = tmp_path_factory.mktemp("grpo-reference") / "run"
    result = selftune(command(root, tiny_model_dir, *GRPO_SETTINGS))
    assert result.returncode == 0, console(result)[-3000:]
    return root


def test_sigkill_in_grpo_then_rerun_equals_an_uninterrupted_run(grpo_reference, tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    killed = selftune(command(run_dir, tiny_model_dir, *GRPO_SETTINGS), driver=["grpo", "checkpoint-2", "SIGKILL"])
    assert killed.returncode == -signal.SIGKILL, console(killed)[-2000:]
    assert read_manifest(run_dir / "round-1" / "grpo") is None
    assert list((run_dir / "round-1" / "grpo" / "checkpoints").glob("checkpoint-*"))
    rerun = selftune(command(run_dir, tiny_model_dir, *GRPO_SETTINGS))
    assert rerun.returncode == 0, console(rerun)[-3000:]
    log = console(rerun)
    assert all(f"round-1/{s}: up to date, skipped" in log for s in ("sample", "sft", "dpo")), log[-2000:]
    assert "grpo: resuming from" in log and metrics(run_dir, "grpo")["resumed"] is True
    ours, theirs = metrics(run_dir, "grpo"), metrics(grpo_reference, "grpo")
    assert ours["steps"] == theirs["steps"] == 4
    for key in ("train_loss", "reward_mean", "reward_last"):  # the same rollouts and updates after the resume
        assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key
    answers = "round-1/evaluate/answers.jsonl"
    assert (run_dir / answers).read_bytes() == (grpo_reference / answers).read_bytes(), "eval answers differ"
    OUTCOMES.append(("sigkill-grpo", "recovered", 0))


def test_ctrl_c_in_training_leaves_a_resumable_run(reference, tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    stopped = selftune(command(run_dir, tiny_model_dir), driver=["sft", "checkpoint-1", "SIGINT"])
    assert stopped.returncode == 130, console(stopped)[-2000:]
    assert "interrupted; run the same command again" in console(stopped)
    assert "Traceback" not in console(stopped)
    assert read_manifest(run_dir / "round-1" / "sft").status == "failed"  # says why it stopped
    rerun = selftune(command(run_dir, tiny_model_dir))
    assert rerun.returncode == 0 and "sft: resuming from" in console(rerun), console(rerun)[-3000:]
    assert_same_as(reference, run_dir, "Ctrl-C in sft")
    OUTCOMES.append(("ctrl-c-sft", "recovered", 0))


def test_a_damaged_checkpoint_is_dropped_and_training_resumes_from_the_one_before(reference, tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    killed = selftune(command(run_dir, tiny_model_dir), driver=["sft", "checkpoint-2", "SIGKILL"])
    assert killed.returncode == -signal.SIGKILL
    checkpoints = sorted((run_dir / "round-1/sft/checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name[11:]))
    assert len(checkpoints) == 2
    optimizer = checkpoints[-1] / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])  # a truncated write
    rerun = selftune(command(run_dir, tiny_model_dir))
    assert rerun.returncode == 0, console(rerun)[-3000:]
    log = console(rerun)
    assert f"dropping checkpoint {checkpoints[-1].name}" in log and "optimizer.pt is damaged" in log
    assert f"resuming from {checkpoints[0]}" in log
    assert_same_as(reference, run_dir, "truncated optimizer.pt")
    OUTCOMES.append(("damaged-checkpoint", "recovered", 0))


def _finished_copy(reference: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir, symlinks=True)
    return run_dir


@pytest.mark.parametrize(
    "damage",
    ["edited-output", "deleted-output", "deleted-manifest", "empty-manifest", "invalid-manifest", "deleted-model"],
)
def test_damaged_outputs_and_manifests_are_detected_and_rebuilt(damage, reference, tmp_path, tiny_model_dir):
    run_dir = _finished_copy(reference, tmp_path)
    samples, manifest = run_dir / DATA["sample"], run_dir / "round-1/sample/manifest.json"
    {
        "edited-output": lambda: samples.write_text(
            samples.read_text().replace('"completion": "', '"completion": "x', 1)
        ),
        "deleted-output": samples.unlink,
        "deleted-manifest": manifest.unlink,
        "empty-manifest": lambda: manifest.write_text(""),
        "invalid-manifest": lambda: manifest.write_text('{"stage": "sample", "status": "done?"}'),
        "deleted-model": lambda: shutil.rmtree(run_dir / "round-1/sft/merged"),
    }[damage]()
    rerun = selftune(command(run_dir, tiny_model_dir))
    assert rerun.returncode == 0, console(rerun)[-3000:]
    rebuilt = "sft" if damage == "deleted-model" else "sample"
    assert f"round-1/{rebuilt}: runs (" in console(rerun)
    assert_same_as(reference, run_dir, damage)
    OUTCOMES.append((f"damaged-{damage}", "recovered", 0))


def test_a_second_writer_is_refused_and_changes_nothing(reference, tmp_path, tiny_model_dir):
    from selftune.run.lock import RunLock

    run_dir = _finished_copy(reference, tmp_path)
    before = snapshot(run_dir)
    with RunLock(run_dir):  # the first writer, still running
        second = selftune(command(run_dir, tiny_model_dir, "--set", "dpo.beta=0.3"))
    assert second.returncode == 1 and "is in use by another selftune process" in console(second)
    assert "Traceback" not in console(second)
    assert snapshot(run_dir) == before  # config.yaml included
    OUTCOMES.append(("second-writer", "clear error", 0))


def test_a_moved_run_is_still_up_to_date(reference, tmp_path, tiny_model_dir):
    run_dir = _finished_copy(reference, tmp_path / "elsewhere")
    rerun = selftune(command(run_dir, tiny_model_dir))
    assert rerun.returncode == 0, console(rerun)[-3000:]
    assert all(f"round-1/{stage}: up to date, skipped" in console(rerun) for stage in STAGES), console(rerun)
    OUTCOMES.append(("moved-run", "recovered", 0))


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs (a run of the tiny model needs ~50 MiB): skipped where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_a_clear_error_and_the_run_completes_after_space_is_freed(small_disk, reference, tiny_model_dir):
    run_dir = small_disk / "run"
    full = selftune(command(run_dir, tiny_model_dir))
    assert full.returncode == 1, console(full)[-3000:]
    said = re.search(r"error: the disk (holding \S+ )?is full", console(full))
    assert said and "Traceback" not in console(full), console(full)[-3000:]
    finished = [s for s in STAGES if (m := _manifest_or_none(run_dir, s)) and m.status == "complete"]
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    rerun = selftune(command(run_dir, tiny_model_dir))
    assert rerun.returncode == 0, console(rerun)[-3000:]
    assert all(f"round-1/{s}: up to date, skipped" in console(rerun) for s in finished)
    assert_same_as(reference, run_dir, "disk full")
    OUTCOMES.append(("disk-full", "recovered", 0))


def _manifest_or_none(run_dir: Path, stage: str):
    try:
        return read_manifest(run_dir / "round-1" / stage)
    except Exception:  # noqa: BLE001 - a manifest cut off by the full disk counts as none
        return None


@pytest.mark.parametrize(
    "setting,expected",
    [("sft.learning_rate=1e6", "training collapsed at step"), ("sft.learning_rate=1e30", "loss became")],
)
def test_a_diverging_or_collapsing_run_is_stopped_by_name(setting, expected, reference, tmp_path, tiny_model_dir):
    run_dir = _finished_copy(reference, tmp_path)
    before = (run_dir / "round-1/sft/manifest.json").read_bytes()
    result = selftune(command(run_dir, tiny_model_dir, "--set", setting, "--until", "sft"))
    assert result.returncode == 1 and expected in console(result), console(result)[-3000:]
    assert "Traceback" not in console(result)
    manifest = read_manifest(run_dir / "round-1" / "sft")
    assert manifest.status == "failed" and expected in manifest.error
    assert (run_dir / "round-1/sft/manifest.json").read_bytes() != before  # recorded as failed, not complete
    OUTCOMES.append((f"diverging-{setting}", "clear error", 0))
