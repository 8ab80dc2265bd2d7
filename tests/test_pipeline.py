"""`selftune run` end to end on the tiny preset: every stage, reuse, targeted reruns, SIGKILL resume."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from selftune.cli import app
from selftune.run.manifest import read_manifest
from selftune.run.plan import STAGES, plan
from selftune.train.toolkit import prepare_checkpoints

runner = CliRunner()


def test_plan_orders_rounds_and_applies_from_and_until():
    steps = plan(2)
    labels = [step.label for step, _ in steps]
    assert labels[:3] == ["round-1/prompts", "round-1/sample", "round-1/sft-data"]
    assert labels[6:8] == ["round-2/sample", "round-2/sft-data"]
    assert labels[-2:] == ["round-2/evaluate", "round-2/report"]
    assert not any(forced for _, forced in steps)
    forced = [step.label for step, f in plan(2, from_stage="dpo") if f]
    assert forced[0] == "round-1/dpo" and forced[-1] == "round-2/report" and "round-1/pairs" not in forced
    assert [step.label for step, _ in plan(2, until_stage="sft")][-1] == "round-2/sft"
    with pytest.raises(Exception, match="unknown stage 'sfft'"):
        plan(1, from_stage="sfft")


def _run(run_dir, model_dir, *extra):
    result = runner.invoke(
        app, ["run", "--preset", "tiny", "--run-dir", str(run_dir), "--set", f"model.spec={model_dir}", *extra]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def _ran(output: str) -> list[str]:
    return [line.split(":")[0] for line in output.splitlines() if ": runs (" in line]


def test_run_end_to_end_then_reuse_then_rerun_only_what_beta_affects(
    tmp_path, tiny_model_dir, finished_run, finished_run_settings
):
    # The first run is the shared finished run (every stage ran); this test works on a copy of it.
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir, symlinks=True)
    settings = [item for setting in finished_run_settings for item in ("--set", setting)]
    for stage in STAGES:
        manifest = read_manifest(run_dir / "round-1" / stage)
        assert manifest is not None and manifest.status == "complete", stage
    assert (run_dir / "report" / "report.html").is_file()
    # The report lives in its stage folder (RUN/report links there) and reads the training curves
    # through the sft and dpo manifests.
    report_manifest = read_manifest(run_dir / "round-1" / "report")
    assert report_manifest.outputs["html"].path == "round-1/report/report.html"
    assert {"log_history_sft_r1", "log_history_dpo_r1"} <= set(report_manifest.inputs)

    second = _run(run_dir, tiny_model_dir, *settings)
    assert _ran(second) == []
    assert all(f"round-1/{stage}: up to date, skipped" in second for stage in STAGES)
    assert "prompt strict" in second  # the summary table is printed at the end
    assert "round 1 data: SFT" in second and "negatives:" in second  # with where the data came from
    assert "report.html" in second
    types = CliRunner().invoke(app, ["inspect", "types", str(run_dir)])
    assert types.exit_code == 0, types.output
    header = types.output.splitlines()[0]
    assert "SFT examples (sampled + repaired)" in header and "eval base" in header and "eval dpo" in header
    assert len(types.output.splitlines()) > 2  # a row per constraint type of the run's prompts

    sft_manifest = (run_dir / "round-1" / "sft" / "manifest.json").read_text()
    third = _run(run_dir, tiny_model_dir, *settings, "--set", "dpo.beta=0.2")
    assert _ran(third) == ["round-1/dpo", "round-1/evaluate", "round-1/report"]
    assert "round-1/dpo: runs (config changed)" in third
    assert (run_dir / "round-1" / "sft" / "manifest.json").read_text() == sft_manifest  # untouched
    results = json.loads((run_dir / "round-1" / "evaluate" / "results.json").read_text())
    assert list(results["models"]) == ["base", "sft", "dpo"]
    assert {"delta", "ci95", "p_value"} <= set(results["models"]["dpo"]["vs_base"])

    compared = runner.invoke(app, ["compare", str(run_dir), str(run_dir)])
    assert compared.exit_code == 0, compared.output
    assert f"{run_dir.name}/dpo" in compared.output and "prompt strict" in compared.output
    (run_dir / "report" / "report.html").unlink()
    reported = runner.invoke(app, ["report", str(run_dir)])
    assert reported.exit_code == 0 and (run_dir / "report" / "report.html").is_file()


@pytest.mark.long
def test_two_rounds_start_round_two_from_round_one_dpo_and_evaluate_every_model(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    output = _run(run_dir, tiny_model_dir, "--rounds", "2")
    assert "round-2/dpo: done" in output
    round_one_dpo = (run_dir / "round-1" / "dpo" / "merged").resolve()
    for stage in ("sample", "sft"):
        inputs = read_manifest(run_dir / "round-2" / stage).inputs
        recorded = inputs["policy" if stage == "sample" else "base"].path
        assert (run_dir / recorded).resolve() == round_one_dpo, stage
    results = json.loads((run_dir / "round-2" / "evaluate" / "results.json").read_text())
    assert list(results["models"]) == ["base", "sft-r1", "dpo-r1", "sft-r2", "dpo-r2"]
    assert (run_dir / "report" / "plots" / "trend.png").is_file()
    # Round 2 sampled fresh train prompts of its own, read through its manifest.
    round_two_prompts = read_manifest(run_dir / "round-2" / "sample").inputs["prompts"].path
    assert (run_dir / round_two_prompts).resolve() == (run_dir / "round-2" / "prompts" / "prompts.jsonl").resolve()
    ids = {json.loads(line)["id"] for line in (run_dir / "round-2" / "prompts" / "prompts.jsonl").open()}
    assert ids and all(i.startswith("train-r2-") for i in ids)
    # Each round's final model is compared with the round before's, and the report shows it.
    compared = results["models"]["dpo-r2"]["vs_previous"]
    assert compared["prompts"] == results["models"]["dpo-r2"]["vs_base"]["prompts"]
    assert "vs_previous" not in results["models"]["dpo-r1"]
    report = (run_dir / "report" / "report.md").read_text()
    assert "2 (dpo-r2)" in report and f"{compared['delta']:+.3f}" in report


@pytest.mark.faults  # one of the fault suite's kills (tests/reliability/test_faults.py kills every stage)
def test_sigkill_during_sft_then_rerun_resumes_from_the_checkpoint(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    # Many small steps, a checkpoint after each: the kill lands mid-training.
    command = [
        sys.executable,
        "-m",
        "selftune.cli",
        "run",
        "--preset",
        "tiny",
        "--run-dir",
        str(run_dir),
        "--set",
        f"model.spec={tiny_model_dir}",
        "--set",
        "sft.epochs=10",
        "--set",
        "sft.save_steps=1",
        "--set",
        "sft.per_device_batch_size=1",
        "--until",
        "sft",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = run_dir / "round-1" / "sft" / "checkpoints"
    deadline = time.time() + 150
    try:
        while not any(checkpoints.glob("checkpoint-*/trainer_state.json")):
            assert process.poll() is None, "the run ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint within the time limit"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert read_manifest(run_dir / "round-1" / "sft") is None  # killed: nothing looks complete

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    log = rerun.stdout + rerun.stderr
    assert "round-1/sample: up to date, skipped" in log
    assert "sft: resuming from" in log
    manifest = read_manifest(run_dir / "round-1" / "sft")
    assert manifest.status == "complete" and manifest.metrics["resumed"] is True


def test_a_checkpoint_cut_off_while_saving_is_dropped(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "checkpoint-1").mkdir(parents=True)
    (checkpoints / "checkpoint-1" / "trainer_state.json").write_text('{"global_step": 1}')
    (checkpoints / "checkpoint-2").mkdir()
    (checkpoints / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"partial")
    (checkpoints / "selftune-fingerprint").write_text("abc")
    assert prepare_checkpoints(tmp_path, "abc", stage="sft") is True
    assert (checkpoints / "checkpoint-1").is_dir() and not (checkpoints / "checkpoint-2").exists()
    # Another fingerprint (other config or inputs): no checkpoint survives.
    assert prepare_checkpoints(tmp_path, "def", stage="sft") is False
    assert not (checkpoints / "checkpoint-1").exists()


@pytest.mark.long
def test_trust_remote_code_reaches_every_model_and_tokenizer_load(tmp_path, tiny_model_dir, monkeypatch):
    """Bug: model.trust_remote_code reached the sample and SFT stages only; pairs, dpo (and its
    merge) and evaluate loaded their models without it. Every load in a run must carry it."""
    import transformers

    calls = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, _name=cls.__name__, **kwargs):
            calls.append((_name, str(args[0]) if args else "", kwargs.get("trust_remote_code")))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    # Through the Python API, as from a notebook: no CLI, no config.yaml beforehand.
    import selftune

    cfg = selftune.load_config(
        "tiny", overrides=[f"model.spec={tiny_model_dir}", "model.trust_remote_code=true", "pairs.k=1"]
    )
    steps = selftune.run_pipeline(tmp_path / "run", cfg, on_event=lambda line: None)
    assert [step.action for step in steps] == ["ran"] * len(STAGES)
    assert selftune.Run(tmp_path / "run").saved_config() == cfg  # the run wrote its config.yaml
    assert len(calls) >= 8
    untrusted = [call for call in calls if call[2] is not True]
    assert not untrusted, untrusted


@pytest.mark.slow
def test_the_tiny_preset_on_the_embedded_model_runs_end_to_end(tmp_path, builtin_home, monkeypatch):
    """What a new user tries first: `selftune run --preset tiny` on the embedded model. It died in
    pairs with a pydantic traceback when an empty answer passed its checks."""
    monkeypatch.setenv("SELFTUNE_HOME", str(builtin_home))
    run_dir = tmp_path / "run"
    result = runner.invoke(
        app, ["run", "--preset", "tiny", "--run-dir", str(run_dir), "--set", "model.spec=builtin:smollm2-135m-instruct"]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    pairs = [json.loads(line) for line in (run_dir / "round-1" / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["chosen"][0]["content"].strip() for p in pairs)
    assert read_manifest(run_dir / "round-1" / "report").status == "complete"
