"""Limits checked before the work: the context window (prompts and answer budgets, training
lengths) before any weights load, and memory (generation lowers its sequences in flight, training
refuses with its estimate), with the estimates recorded beside the measured peaks."""

import json

import pytest
from typer.testing import CliRunner

import selftune.models as models
from selftune.cli import app
from selftune.models.limits import LimitError, model_shape

TINY_CONTEXT = 1024  # tests/conftest.py builds the tiny model with this many positions


def _prompts(tmp_path, words: int):
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"id": "short", "messages": [{"role": "user", "content": "Name three colors."}]},
        {"id": "long-one", "messages": [{"role": "user", "content": "Summarize: " + "word " * words}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def no_weights(patch_everywhere):
    """Records every model load; a test asserts none happened before its error."""
    loaded = []
    original = models.load_model
    patch_everywhere(models, "load_model", lambda spec, **kw: loaded.append(spec) or original(spec, **kw))
    return loaded


def test_the_shape_comes_from_the_config_and_the_safetensors_headers(tiny_model_dir):
    shape = model_shape(str(tiny_model_dir))
    assert shape.context == TINY_CONTEXT and shape.layers == 2 and shape.kv_heads == 2 and shape.head_dim == 16
    from safetensors.torch import load_file

    assert shape.parameters == sum(t.numel() for t in load_file(tiny_model_dir / "model.safetensors").values())


def test_an_answer_budget_beyond_the_context_is_an_error_before_any_weights_load(tiny_model_dir, tmp_path, no_weights):
    out = tmp_path / "answers.jsonl"
    result = CliRunner().invoke(
        app,
        ["generate", "--model", str(tiny_model_dir), "--prompts", str(_prompts(tmp_path, 5)), "--out", str(out)]
        + ["--max-new-tokens", "100000"],
    )
    assert result.exit_code == 1
    assert isinstance(result.exception, LimitError)
    assert "--max-new-tokens allows answers of 100000 tokens" in str(result.exception)
    assert f"{TINY_CONTEXT}-token context window" in str(result.exception)
    assert no_weights == [] and not out.exists()


def test_a_prompt_over_the_context_is_named_with_its_tokens_or_skipped_and_counted(
    tiny_model_dir, tmp_path, no_weights
):
    prompts, out = _prompts(tmp_path, 1500), tmp_path / "answers.jsonl"
    command = ["generate", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--out", str(out)]
    command += ["--max-new-tokens", "4"]
    result = CliRunner().invoke(app, command)
    assert isinstance(result.exception, LimitError)
    message = str(result.exception)
    assert f"{prompts}: prompt long-one has " in message and "4-token answer budget" in message
    assert "(1 of 2 prompts do)" in message and "--over-context skip" in message
    tokens = int(message.split("long-one has ")[1].split()[0])
    assert tokens > TINY_CONTEXT
    assert no_weights == [] and not out.exists()

    result = CliRunner().invoke(app, command + ["--over-context", "skip"])
    assert result.exit_code == 0, result.output
    assert (
        f"skipped 1 prompts over the model's context window with their answer budget: long-one ({tokens} tokens)"
        in (result.output)
    )
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["short"]


def test_the_engine_lowers_its_sequences_in_flight_to_the_memory_available_and_answers_the_same(
    tiny_model_dir, monkeypatch, caplog
):
    import selftune.models.limits as limits
    from selftune.generation.engine import ContinuousGenerator
    from selftune.generation.types import SamplingParams

    model = models.load_model(str(tiny_model_dir), dtype="float32")
    tokenizer = models.load_tokenizer(str(tiny_model_dir))
    engine = ContinuousGenerator(model, tokenizer, batch_size=16)
    prompts = [f"Count to {k}:" for k in range(12)]
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=3)
    free = [c.text for row in engine.generate(prompts, params) for c in row]
    assert engine.stats["slots"] == 16
    shape = model_shape(str(tiny_model_dir))
    capacity = max(len(tokenizer(p)["input_ids"]) for p in prompts) + params.max_new_tokens + 1
    one_slot = shape.kv_bytes(1, capacity, 4) * limits.KV_OVERHEAD
    # Room for 5 sequences: the engine runs 5 at a time, says so, and answers as with 16.
    monkeypatch.setattr(limits, "available_bytes", lambda device: int(5.5 * one_slot / limits.USABLE_SHARE))
    with caplog.at_level("WARNING", logger="selftune.generation"):
        squeezed = [c.text for row in engine.generate(prompts, params) for c in row]
    assert engine.stats["slots"] == 5
    assert "16 sequences of up to" in caplog.text and "5 in flight at a time instead" in caplog.text
    assert squeezed == free
    # Not even one prompt's two samples fit: a named error, not an allocation that kills the machine.
    monkeypatch.setattr(limits, "available_bytes", lambda device: int(1.5 * one_slot / limits.USABLE_SHARE))
    with pytest.raises(LimitError, match=r"generation: 2 sequences of up to \d+ tokens .* need"):
        engine.generate(prompts, params)
    models.unload(model)


def test_training_that_would_not_fit_is_refused_with_its_estimate_and_the_stage_keeps_its_outputs(
    tmp_path, tiny_model_dir, no_weights
):
    from selftune.run.folder import Run
    from selftune.stages.sft import sft_stage
    from tests.test_sft import tiny_cfg, write_sft

    data, run = write_sft(tmp_path / "sft.jsonl"), Run(tmp_path / "run")
    sft_stage(run, tiny_cfg(tiny_model_dir, "sft.merge=false"), data_path=data)
    manifest = run.stage_dir("sft") / "manifest.json"
    before, loads = manifest.read_bytes(), len(no_weights)
    recorded = json.loads(before)["metrics"]["memory"]
    assert recorded["estimate_gib"] > 0 and recorded["peak_gib"] > 0

    # 256 examples of ~930 tokens in one batch: some 70 GiB on the tiny model, its logits alone.
    long = tmp_path / "long.jsonl"
    row = json.loads(data.read_text().splitlines()[0])
    long.write_text(
        "".join(
            json.dumps(row | {"id": f"l{i}", "completion": [{"role": "assistant", "content": "sea " * 900}]}) + "\n"
            for i in range(256)
        )
    )
    huge = tiny_cfg(tiny_model_dir, "sft.merge=false", "sft.per_device_batch_size=256", "sft.max_length=1024")
    with pytest.raises(LimitError) as caught:
        sft_stage(run, huge, data_path=long)
    message = str(caught.value)
    assert message.startswith("sft: a step of 256 sequences of up to ") and " GiB (runtime " in message
    assert "activations" in message and "logits" in message
    assert "lower sft.per_device_batch_size (raise sft.gradient_accumulation" in message
    assert "sft.gradient_checkpointing: true" in message
    assert len(no_weights) == loads and manifest.read_bytes() == before  # nothing loaded, nothing lost

    with pytest.raises(LimitError, match=r"sft.max_length is 4096 tokens, beyond what the 1024-token context window"):
        sft_stage(run, tiny_cfg(tiny_model_dir, "sft.merge=false", "sft.max_length=4096"), data_path=data)
    assert len(no_weights) == loads and manifest.read_bytes() == before


def test_a_run_whose_budgets_exceed_the_context_stops_before_it_writes_anything(tmp_path, tiny_model_dir, no_weights):
    from selftune.config import load_config
    from selftune.pipeline import run_pipeline

    for setting, value in (("generation.max_new_tokens", 100000), ("dpo.max_length", 2048)):
        cfg = load_config("tiny", overrides=[f"model.spec={tiny_model_dir}", f"{setting}={value}"])
        with pytest.raises(LimitError, match=rf"{setting} is {value} tokens, beyond what the 1024-token context"):
            run_pipeline(tmp_path / "run", cfg)
        assert not (tmp_path / "run").exists() and no_weights == []


def _estimates_against_peaks(run_dir, model: str | None, until: str, stages: tuple[str, ...]) -> dict:
    """Run the tiny preset up to `until` in a process of its own, as a user runs it (a test
    process's memory would inflate the peaks); each stage's recorded estimate and measured peak."""
    import subprocess
    import sys
    from pathlib import Path

    command = [str(Path(sys.executable).parent / "selftune"), "run", "--preset", "tiny", "--run-dir", str(run_dir)]
    command += ["--until", until] + (["--set", f"model.spec={model}"] if model else [])
    completed = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {
        stage: json.loads((run_dir / "round-1" / stage / "manifest.json").read_text())["metrics"]["memory"]
        for stage in stages
    }


@pytest.mark.long
def test_the_estimates_stay_within_a_factor_of_two_of_the_measured_peaks_on_the_tiny_model(tmp_path, tiny_model_dir):
    for stage, memory in _estimates_against_peaks(
        tmp_path / "run", str(tiny_model_dir), "sft", ("sample", "sft")
    ).items():
        assert 0.5 <= memory["estimate_gib"] / memory["peak_gib"] <= 2.0, (stage, memory)


@pytest.mark.slow
def test_the_estimates_stay_within_a_factor_of_two_of_the_measured_peaks_on_the_embedded_model(
    tmp_path, builtin_home, monkeypatch
):
    monkeypatch.setenv("SELFTUNE_HOME", str(builtin_home))  # the converted model, for the child process
    measured = _estimates_against_peaks(tmp_path / "run", None, "dpo", ("sample", "sft", "dpo"))
    for stage, memory in measured.items():
        assert 0.5 <= memory["estimate_gib"] / memory["peak_gib"] <= 2.0, (stage, memory)


def test_with_over_context_skip_a_stage_leaves_the_long_prompt_out_and_counts_it(tmp_path, tiny_model_dir):
    from selftune.config import load_config
    from selftune.data.records import read_records
    from selftune.run.folder import Run
    from selftune.stages.sample import sample_stage

    prompt = {"messages": [{"role": "user", "content": "Write about tea."}], "split": "train"}
    prompt["constraints"] = [{"type": "lowercase", "kwargs": {}}]
    rows = [prompt | {"id": "short"}, prompt | {"id": "long", "messages": [{"role": "user", "content": "tea " * 1500}]}]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = Run(tmp_path / "run")
    cfg = load_config("tiny", overrides=[f"model.spec={tiny_model_dir}", "sample.k=2"])
    with pytest.raises(LimitError, match="sample: prompt long has"):
        sample_stage(run, cfg, prompts_path=prompts)
    assert run.manifest("sample") is None
    skipping = load_config(
        "tiny", overrides=[f"model.spec={tiny_model_dir}", "sample.k=2", "generation.over_context=skip"]
    )
    samples = read_records(sample_stage(run, skipping, prompts_path=prompts), "samples")
    assert {s.prompt_id for s in samples} == {"short"}
    metrics = run.manifest("sample").metrics
    assert metrics["over_context_skipped"] == 1 and metrics["over_context_ids"] == ["long"]
    assert metrics["prompts"] == 1
