"""lm-evaluation-harness tasks inside the one-model-at-a-time evaluation (issue 17, part 4).

A task over a local JSONL file (the harness's `json` loader) keeps the tests offline; the harness
itself builds the requests, applies the chat template and computes the metrics.
"""

import json

import pytest
from typer.testing import CliRunner

from selftune.cli import app
from selftune.config.loading import load_config
from selftune.errors import ConfigError
from selftune.evaluation.runner import evaluate_models
from selftune.reporting.tables import checker_note, summary_table

QUESTIONS = [
    ("What color is the sky on a clear day?", ["blue", "green", "red"], 0),
    ("How many legs does a spider have?", ["six", "eight", "four"], 1),
    ("Which one is a fruit?", ["carrot", "potato", "apple"], 2),
    ("What is 2 + 2?", ["4", "5", "3"], 0),
    ("Which animal barks?", ["cat", "dog", "fish"], 1),
]


@pytest.fixture
def task_dir(tmp_path):
    """A multiple-choice task `tiny_mc` over five local questions."""
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "tiny_mc.yaml").write_text(
        f"""task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
fewshot_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1
"""
    )
    return folder


def _config(task_dir, **lm_eval):
    cfg = load_config("tiny")
    cfg.evaluate.lm_eval.tasks = ["tiny_mc"]
    cfg.evaluate.lm_eval.include_path = str(task_dir)
    for key, value in lm_eval.items():
        setattr(cfg.evaluate.lm_eval, key, value)
    return cfg


@pytest.fixture
def rendered(monkeypatch):
    """Every request the harness renders with the chat template."""
    from lm_eval.models.huggingface import HFLM

    seen: list[str] = []
    original = HFLM.apply_chat_template

    def spy(self, chat_history, *args, **kwargs):
        text = original(self, chat_history, *args, **kwargs)
        seen.append(text)
        return text

    monkeypatch.setattr(HFLM, "apply_chat_template", spy)
    return seen


def test_tasks_run_in_the_chat_template_with_num_fewshot_and_limit(tiny_model_dir, task_dir, rendered):
    cfg = _config(task_dir, num_fewshot=2, limit=3)
    results = evaluate_models([("base", str(tiny_model_dir))], [], [], cfg, reference=None)
    lm_eval = results["models"]["base"]["lm_eval"]
    row = lm_eval["tasks"]["tiny_mc"]
    assert row["n"] == 3 and row["num_fewshot"] == 2
    assert 0.0 <= row["acc"] <= 1.0 and row["acc_stderr"] >= 0.0
    assert row["higher_is_better"] == {"acc": True}
    assert lm_eval["settings"] == {"num_fewshot": 2, "limit": 3, "chat_template": True, "fewshot_as_multiturn": True}
    # One rendering per document; two few-shot examples as earlier turns, then the question.
    assert len(rendered) == 3
    assert all(text.count("<|im_start|>user") == 3 and text.count("<|im_start|>assistant") == 3 for text in rendered)


def test_without_the_chat_template_requests_are_plain_text(tiny_model_dir, task_dir, rendered):
    cfg = _config(task_dir, num_fewshot=0, limit=2, chat_template=False)
    results = evaluate_models([("base", str(tiny_model_dir))], [], [], cfg, reference=None)
    assert results["models"]["base"]["lm_eval"]["tasks"]["tiny_mc"]["n"] == 2
    assert rendered == []


def test_task_columns_reach_the_report_table_with_their_stderr(tiny_model_dir, task_dir):
    from tests.conftest import build_tiny_model

    other = build_tiny_model(task_dir.parent / "other", tiny_model_dir, seed=1)
    cfg = _config(task_dir, num_fewshot=0)
    results = evaluate_models([("base", str(tiny_model_dir)), ("other", str(other))], [], [], cfg, reference=None)
    header, rows = summary_table(results)
    column = header.index("tiny_mc acc")
    base = results["models"]["base"]["lm_eval"]["tasks"]["tiny_mc"]
    theirs = results["models"]["other"]["lm_eval"]["tasks"]["tiny_mc"]
    assert rows[0][column] == f"{base['acc']:.3f} ±{base['acc_stderr']:.3f}"
    assert rows[1][column] == f"{theirs['acc']:.3f} ±{theirs['acc_stderr']:.3f} ({theirs['acc'] - base['acc']:+.3f})"
    assert "few-shot: 0; documents per task: all; chat template: on" in checker_note(results)


def test_an_unknown_task_is_named_before_any_model_loads(task_dir, monkeypatch, patch_everywhere):
    import selftune.evaluation.lmeval
    import selftune.models

    patch_everywhere(selftune.models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    # The harness's own ~15k task files take ~15 s to index; the local folder stands for them here.
    local = selftune.evaluation.lmeval._task_manager.__wrapped__
    monkeypatch.setattr(selftune.evaluation.lmeval, "_task_manager", lambda include, defaults: local(include, False))
    cfg = _config(task_dir)
    cfg.evaluate.lm_eval.tasks = ["tiny_mc", "tiny_mcq"]
    with pytest.raises(ConfigError, match="tiny_mcq is not a task"):
        evaluate_models([("base", "nosuch-model")], [], [], cfg)


def test_a_task_whose_data_is_missing_is_named_before_any_model_loads(task_dir, monkeypatch, patch_everywhere):
    import selftune.models

    patch_everywhere(selftune.models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    (task_dir.parent / "questions.jsonl").unlink()
    with pytest.raises(ConfigError, match="tiny_mc: its data could not be loaded"):
        evaluate_models([("base", "nosuch-model")], [], [], _config(task_dir, limit=0.5))


@pytest.mark.parametrize("limit", [1.5, 0, -1])
def test_a_limit_is_a_count_or_a_share(limit):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="limit"):
        load_config("tiny").evaluate.lm_eval.limit = limit


def test_an_older_config_key_still_reads():
    from selftune.config.sections import EvaluateSection

    assert EvaluateSection.model_validate({"lm_eval_tasks": ["arc_easy"]}).lm_eval.tasks == ["arc_easy"]


def test_evaluate_command_runs_a_task_and_shows_its_column(tiny_model_dir, task_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--model",
            f"base={tiny_model_dir}",
            "--task",
            "tiny_mc",
            "--tasks-from",
            str(task_dir),
            "--num-fewshot",
            "1",
            "--task-limit",
            "2",
            "--out",
            str(tmp_path / "eval"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "tiny_mc acc" in result.output
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["models"]["base"]["lm_eval"]["tasks"]["tiny_mc"]["n"] == 2


def test_evaluate_command_names_a_bad_task_limit(tiny_model_dir, task_dir):
    result = CliRunner().invoke(
        app, ["evaluate", "--model", f"base={tiny_model_dir}", "--task", "tiny_mc", "--task-limit", "2.5"]
    )
    assert result.exit_code == 2 and "evaluate.lm_eval.limit" in result.output
