import json
import re

import pytest
from typer.testing import CliRunner

from selftune.cli import app

runner = CliRunner()
COMMANDS = [
    "generate",
    "validate",
    "doctor",
    "config",
    "prompts",
    "sample",
    "sft-data",
    "sft",
    "merge",
    "inspect",
    "pairs",
    "dpo",
    "evaluate",
    "report",
    "compare",
    "export",
    "run",
]


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize(
    "command",
    [
        ["generate"],
        ["validate"],
        ["doctor"],
        ["config", "show"],
        ["config", "presets"],
        ["prompts", "build"],
        ["sample"],
        ["sft-data"],
        ["sft"],
        ["merge"],
        ["inspect", "masks"],
        ["pairs"],
        ["dpo"],
        ["evaluate"],
        ["report"],
        ["compare"],
        ["export"],
        ["run"],
    ],
)
def test_each_command_help_ends_with_an_example(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    marker = "Example: selftune " + command[0]
    assert marker in result.output
    tail = result.output[result.output.rindex(marker) :]
    assert "Show this message" not in tail and "─" not in tail  # nothing follows the example


def test_generate_writes_one_row_per_answer(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"id": "chat", "messages": [{"role": "user", "content": "Hi there"}]})
        + "\n"
        + json.dumps({"id": "raw", "prompt": "Instruction: add 2 and 2\nResponse:"})
        + "\n"
    )
    out = tmp_path / "out" / "answers.jsonl"
    result = runner.invoke(
        app,
        [
            "generate",
            "--model",
            str(tiny_model_dir),
            "--prompts",
            str(prompts),
            "--out",
            str(out),
            "-n",
            "2",
            "--temperature",
            "0.9",
            "--max-new-tokens",
            "6",
            "--dtype",
            "float32",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["sample_index"]) for r in rows] == [("chat", 0), ("chat", 1), ("raw", 0), ("raw", 1)]
    for row in rows:
        assert set(row) >= {"id", "response", "model", "finish_reason", "prompt_tokens", "completion_tokens"}
        assert row["finish_reason"] in ("stop", "length") and row["completion_tokens"] <= 6
        assert row["model"] == str(tiny_model_dir)


def test_generate_rejects_bad_prompt_file_before_loading(tmp_path):
    from selftune.errors import RecordError

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "x", "messages": [{"role": "robot", "content": "hi"}]}\n')
    out = tmp_path / "answers.jsonl"
    result = runner.invoke(
        app, ["generate", "--model", "no-such-dir/x/y", "--prompts", str(prompts), "--out", str(out)]
    )
    assert isinstance(result.exception, RecordError)
    assert f"{prompts}:1: messages[0].role: unknown value 'robot'" in str(result.exception)
    assert not out.exists()


def test_validate_and_config_show(tmp_path):
    good = tmp_path / "sft.jsonl"
    good.write_text(
        json.dumps(
            {
                "id": "a",
                "prompt": [{"role": "user", "content": "q"}],
                "completion": [{"role": "assistant", "content": "a"}],
            }
        )
        + "\n"
    )
    result = runner.invoke(app, ["validate", str(good), "--kind", "sft"])
    assert result.exit_code == 0 and "1 valid sft records" in result.output
    result = runner.invoke(app, ["config", "show", "--preset", "recipe-32b"])
    assert result.exit_code == 0 and "beta: 0.1" in result.output and "learning_rate: 5.0e-06" in result.output
    # Keys such as the negative source `corrupt:repeat` print as written, never as an emoji.
    result = runner.invoke(app, ["config", "show", "--preset", "demo"])
    assert result.exit_code == 0 and "corrupt:repeat: 0.05" in result.output


def test_main_prints_errors_for_people(tmp_path, capsys, monkeypatch):
    import sys

    from selftune import cli

    bad = tmp_path / "pairs.jsonl"
    bad.write_text("{}\n")
    monkeypatch.setattr(sys, "argv", ["selftune", "validate", str(bad), "--kind", "pairs"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    assert f"{bad}:1: id: missing" in capsys.readouterr().err


def test_doctor_reports_measured_dtype_speed_and_cache():
    result = runner.invoke(app, ["doctor"], terminal_width=200)
    assert result.exit_code == 0
    for item in ("torch", "matmul 512x512", "GFLOP/s", "SELFTUNE_HOME", "GiB free", "vllm"):
        assert item in result.output


def test_vllm_backend_without_vllm_names_the_extra(tiny_model_dir, monkeypatch):
    import importlib.util

    from selftune.errors import MissingExtraError
    from selftune.generation.factory import open_generator

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"pip install 'selftune\[vllm\]'"):
        with open_generator(str(tiny_model_dir), backend="vllm"):
            pass


def test_data_commands_through_the_run_lineage(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    result = runner.invoke(
        app, ["prompts", "build", "--run", str(run_dir), "--preset", "tiny", "--set", f"model.spec={tiny_model_dir}"]
    )
    assert result.exit_code == 0, result.output
    assert (run_dir / "config.yaml").is_file()
    result = runner.invoke(app, ["sample", "--run", str(run_dir)])  # config comes from the run
    assert result.exit_code == 0, result.output
    assert "sample pass rate per constraint type" in result.output
    samples = run_dir / "round-1" / "sample" / "samples.jsonl"
    from selftune.config.loading import load_config

    tiny = load_config("tiny")
    assert len(samples.read_text().splitlines()) == tiny.prompts.n_train * tiny.sample.k
    result = runner.invoke(app, ["sft-data", "--run", str(run_dir)])
    # A random tiny model rarely passes; either outcome must be reported, not crash silently.
    if result.exit_code == 0:
        assert (run_dir / "round-1" / "sft-data" / "sft.jsonl").is_file()
    else:
        assert "nothing to train on" in str(result.exception)


def test_inspect_masks_shows_trained_tokens(tmp_path, tiny_model_dir):
    data = tmp_path / "sft.jsonl"
    data.write_text(
        json.dumps(
            {
                "id": "a",
                "prompt": [{"role": "user", "content": "Say hi"}],
                "completion": [{"role": "assistant", "content": "hello there"}],
            }
        )
        + "\n"
    )
    result = runner.invoke(app, ["inspect", "masks", "--data", str(data), "--model", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    assert "a: 3 of" in result.output and "hello there" in result.output


def test_a_refused_second_writer_leaves_the_runs_config_untouched(tmp_path, tiny_model_dir):
    """Bug: config.yaml was written before the run's lock was taken, so a refused second process
    still rewrote it, and a later plain `selftune run` used the refused process's settings."""
    from selftune.config.loading import load_config
    from selftune.run.folder import Run

    run = Run(tmp_path / "run")
    # The tiny model: the embedded one would be converted first (the context check reads its
    # shape), half a minute of this test spent before the lock is even asked for.
    run.save_config(load_config("tiny", overrides=[f"model.spec={tiny_model_dir}"]))
    before = (run.root / "config.yaml").read_bytes()
    with run.lock():
        for args in (
            ["run", "--run-dir", str(run.root), "--set", "dpo.beta=0.5"],
            ["dpo", "--run", str(run.root), "--set", "dpo.beta=0.5"],
        ):
            result = CliRunner().invoke(app, args)
            assert result.exit_code != 0 and "in use by another selftune process" in str(result.exception), args
    assert (run.root / "config.yaml").read_bytes() == before


def test_an_unknown_model_name_is_refused_before_a_finished_evaluation_is_touched(tmp_path):
    """Bug: `evaluate RUN --models nosuch` exited 0 and rewrote results.json as no models."""
    from selftune.config.loading import load_config
    from selftune.data.records import PromptRecord
    from selftune.run.files import write_jsonl
    from selftune.run.folder import Run

    run = Run(tmp_path / "run")
    run.save_config(load_config("tiny"))
    prompt = PromptRecord(
        id="e1", messages=[{"role": "user", "content": "hi"}], constraints=[{"type": "lowercase"}], split="eval"
    )
    with run.stage("prompts", config={}) as stage:
        write_jsonl(stage.dir / "prompts.jsonl", [prompt])
        stage.add_output("prompts", stage.dir / "prompts.jsonl")
    with run.stage("evaluate", config={}) as stage:
        (stage.dir / "results.json").write_text('{"models": {"base": {}}}')
        (stage.dir / "answers.jsonl").write_text('{"model": "base"}\n')
        stage.add_output("results", stage.dir / "results.json")
        stage.add_output("answers", stage.dir / "answers.jsonl")
    saved = {p.name: p.read_bytes() for p in run.stage_dir("evaluate").iterdir()}
    for models in ("nosuch", "base,sfft"):
        result = CliRunner().invoke(app, ["evaluate", str(run.root), "--models", models])
        assert result.exit_code == 2 and "unknown model name" in result.output, result.output
    assert {p.name: p.read_bytes() for p in run.stage_dir("evaluate").iterdir()} == saved
    with pytest.raises(Exception, match="unknown model name"):
        load_config("tiny", overrides=["evaluate.models=[nosuch]"])


@pytest.mark.parametrize(
    "args,named",
    [
        (["-n", "0"], "-n"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--temperature", "-1"], "--temperature"),
        (["--top-p", "0"], "--top-p"),
        (["--batch-size", "0"], "--batch-size"),
        (["--backend", "bogus"], "backend must be one of"),
        (["--dtype", "float64"], "dtype must be"),
    ],
)
def test_generate_refuses_bad_options_by_name_before_loading_a_model(tmp_path, patch_everywhere, args, named):
    """Issue 16 defect 6: these were tracebacks (some after the model had loaded)."""
    import selftune.generation.factory

    def no_model(*a, **k):
        raise AssertionError("a model was loaded")

    patch_everywhere(selftune.generation.factory, "open_generator", no_model)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "hi"}\n')
    command = ["generate", "--model", "builtin:smollm2-135m-instruct", "--prompts", str(prompts)]
    result = CliRunner().invoke(app, [*command, "--out", str(tmp_path / "o.jsonl"), *args])
    assert result.exit_code != 0 and "Traceback" not in result.output
    message = result.output + str(result.exception)
    assert named in message, message
    assert not (tmp_path / "o.jsonl").exists()


def test_generate_refuses_an_output_folder_before_loading_a_model(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "hi"}\n')
    result = CliRunner().invoke(
        app, ["generate", "--model", "nosuch", "--prompts", str(prompts), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "is a folder" in result.output


def test_training_progress_draws_steps_and_loss_on_a_terminal_and_nothing_elsewhere():
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from selftune.progress import TrainingProgress

    for terminal in (True, False):
        out = io.StringIO()
        bar = TrainingProgress("SFT", console=Console(file=out, force_terminal=terminal, width=120))
        state = SimpleNamespace(max_steps=4, global_step=1)  # resumed at step 1
        bar.on_train_begin(None, state, None)
        for step in (2, 3, 4):
            state.global_step = step
            bar.on_step_end(None, state, None)
            bar.on_log(None, state, None, logs={"loss": 1.0 / step})
        bar.on_save(None, state, None)  # any other Trainer event is accepted and ignored
        bar.on_train_end(None, state, None)
        text = out.getvalue()
        if terminal:
            assert "SFT" in text and "4/4" in text and "loss 0.2500" in text
        else:
            assert text == ""


def test_phase_progress_draws_a_bar_per_label_on_a_terminal_and_nothing_elsewhere():
    import io

    from rich.console import Console

    from selftune.progress import PhaseProgress

    for terminal in (True, False):
        out = io.StringIO()
        bars = PhaseProgress(Console(file=out, force_terminal=terminal, width=120))
        for done in range(4):
            bars("base: eval", done, 3)
        assert not bars.progress.live.is_started  # every bar finished: a training bar may follow
        bars("base: held-out pairs", 1, 8)
        assert bars.progress.live.is_started == terminal
        bars("base: held-out pairs", 8, 8)
        text = out.getvalue()
        if terminal:
            assert "base: eval" in text and "3/3" in text and "8/8" in text
        else:
            assert text == ""


def test_help_off_a_terminal_shows_every_option_of_every_command_whole(monkeypatch):
    """Piped into a log, `--help` used to cut long option names ("--benchmark-max-…") and squeeze
    descriptions into a column a word wide."""
    import typer.main
    import typer.rich_utils

    from selftune.cli import widen_help_off_a_terminal

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("TERMINAL_WIDTH", raising=False)
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", None)
    widen_help_off_a_terminal()

    def commands(group, path):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from commands(command, [*path, name])
            else:
                yield [*path, name], command

    checked = 0
    for path, command in commands(typer.main.get_command(app), []):
        result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": None, "TERMINAL_WIDTH": None})
        assert result.exit_code == 0, result.output
        assert "…" not in result.output, (path, result.output)
        shown = " ".join(re.findall(r"[A-Za-z0-9]+", result.output))
        for param in command.params:
            for option in param.opts + param.secondary_opts:
                if option.startswith("--"):
                    assert option in result.output, (path, option)
            # The whole help, word for word: markdown help used to drop `<config name>` as a tag.
            words = " ".join(re.findall(r"[A-Za-z0-9]+", getattr(param, "help", None) or ""))
            assert f" {words} " in f" {shown} ", (path, param.name, words)
        checked += 1
    assert checked >= 20


def test_off_a_terminal_generation_and_training_progress_print_plain_lines(monkeypatch):
    """In a CI log no bar is drawn; a long job still says where it is."""
    from types import SimpleNamespace

    import selftune.progress as progress

    monkeypatch.setattr(progress, "LOG_LINE_SECONDS", 0.0)
    assert not progress.err_console.is_terminal
    with progress.err_console.capture() as captured:
        with progress.GenerationProgress(4, label="sampling") as bar:
            bar(1, 10)
            bar(2, 10)
        training = progress.TrainingProgress("round 1: SFT")
        state = SimpleNamespace(global_step=3, max_steps=9)
        training.on_train_begin(None, state, None)
        training.on_log(None, state, None, logs={"loss": 1.5})
        training.on_step_end(None, state, None)
        training.on_train_end(None, state, None)
    text = captured.get()
    assert "sampling: 2/4 prompts, 20 tokens" in text
    assert "round 1: SFT: step 3/9 loss 1.5000" in text
