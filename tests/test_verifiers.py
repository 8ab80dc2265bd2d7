"""Bring your own verifier: the `function` scorer (TRL's reward-function convention), the built-in
reference-answer verifiers, the arithmetic task family, and the loop run with a verifier file."""

from __future__ import annotations

import json
import re

import pytest

from selftune import load_config, run_pipeline
from selftune.data.arithmetic import NAMES, TEMPLATES, TOPICS, build_arithmetic_prompts
from selftune.data.pairs import CORRUPTIONS
from selftune.data.records import PromptRecord, read_records
from selftune.errors import ConfigError
from selftune.run.manifest import read_manifest
from selftune.scoring.function import FunctionScorer, VerifierError, check_verifier, prompt_columns
from selftune.scoring.references import final_number_of, normalize


def _prompt(pid="q1", **extra) -> PromptRecord:
    return PromptRecord(id=pid, messages=[{"role": "user", "content": "What is 6 times 7?"}], **extra)


def _verifier(tmp_path, body: str, name: str = "verify.py") -> str:
    path = tmp_path / name
    path.write_text(body)
    return f"{path}:verify"


# ---------------------------------------------------------------------------------------------
# Built-in reference verifiers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("6 * 7 = 42\n#### 42", 42),
        ("so 40 + 2 = \\boxed{42}. Check: 42 - 2 = 40", 42),  # the box wins over a later number
        ("First 3 and 4, then the total is 1,234.", 1234),
        ("It costs $5.50 in all.", 5.5),
        ("The share is 3/4", 0.75),
        ("#### -17", -17),
        ("no number here", None),
    ],
)
def test_final_number_reads_hashes_then_box_then_the_last_number(text, number):
    assert final_number_of(text) == number


def test_reference_verifiers_score_one_or_zero():
    def score(ref, text, **extra):
        return FunctionScorer(ref).score(_prompt(**extra), [text])[0]

    assert score("builtin:final_number", "it is 42.", answer="42").passed
    assert score("builtin:final_number", "it is 42.0000001", answer=42).passed  # within 1e-6 relative
    assert not score("builtin:final_number", "it is 43", answer="42").passed
    assert score("builtin:exact_match", "  Paris \n", answer="Paris").passed
    assert not score("builtin:exact_match", "paris", answer="Paris").passed
    assert score("builtin:normalized_match", "The Paris!", answer="paris").passed
    assert normalize("An  Apple, the end.") == "apple end"
    assert score("builtin:regex_match", "ID-0042", pattern=r"ID-\d{4}").passed
    assert not score("builtin:regex_match", "ID-0042 and more", pattern=r"ID-\d{4}").passed  # the whole answer
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert score("builtin:json_schema", '```json\n{"n": 3}\n```', schema=schema).passed
    wrong = score("builtin:json_schema", '{"n": "three"}', schema=schema)
    assert not wrong.passed and "n: 'three' is not of type 'integer'" in wrong.checks["json"]
    assert "not JSON" in score("builtin:json_schema", "{n: 3", schema=schema).checks["json"]


@pytest.mark.parametrize(
    ("ref", "extra", "message"),
    [
        ("builtin:final_number", {}, "prompt q1: answer: missing"),
        ("builtin:final_number", {"answer": "forty-two"}, "prompt q1: answer: 'forty-two' is not a number"),
        ("builtin:exact_match", {"answer": "  "}, "prompt q1: answer: '  ' is not a non-empty text"),
        ("builtin:regex_match", {"pattern": "(unclosed"}, "prompt q1: pattern: '(unclosed' is not a valid regular"),
        ("builtin:json_schema", {"schema": {"type": "nonsense"}}, "prompt q1: schema: not a valid JSON Schema"),
        ("builtin:json_schema", {}, "prompt q1: schema: missing"),
    ],
)
def test_a_bad_reference_is_named_by_file_prompt_and_field(ref, extra, message):
    with pytest.raises(ConfigError, match=re.escape(f"data/p.jsonl: {message}")):
        check_verifier(ref, [_prompt(**extra)], "data/p.jsonl")


# ---------------------------------------------------------------------------------------------
# User verifiers: loaded by reference, checked before any model loads
# ---------------------------------------------------------------------------------------------

GOOD = """
def verify(prompts, completions, answer, **kwargs):
    return [float(c[0]["content"].strip().endswith(str(a))) for c, a in zip(completions, answer)]
"""


def test_a_verifier_file_is_called_as_trl_calls_a_reward_function(tmp_path):
    seen = tmp_path / "seen.json"
    ref = _verifier(
        tmp_path,
        f"""
import json
def verify(prompts, completions, **columns):
    json.dump({{"prompts": prompts, "completions": completions, "columns": columns}}, open({str(seen)!r}, "w"))
    return [{{"score": 0.5, "why": "half"}}, None]
""",
    )
    results = FunctionScorer(ref, pass_threshold=0.5).score(_prompt(answer="42", level=2), ["a", "b"])
    call = json.loads(seen.read_text())
    assert call["prompts"] == [[{"role": "user", "content": "What is 6 times 7?"}]] * 2
    assert call["completions"] == [[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]]
    assert call["columns"] == {"answer": ["42", "42"], "level": [2, 2]}
    assert results[0].passed and results[0].score == 0.5 and results[0].checks == {"why": "half", "verifier": True}
    assert not results[1].passed and results[1].score == 0 and results[1].checks["no_verdict"]


def test_columns_missing_from_some_records_are_none():
    columns = prompt_columns([_prompt("a", answer="1"), _prompt("b", topic="x")])
    assert columns == {"answer": ["1", None], "topic": [None, "x"]}


@pytest.mark.parametrize(
    ("body", "ref_suffix", "message"),
    [
        (GOOD, "", None),
        (None, "", "no module named 'nowhere_at_all'"),
        (GOOD.replace("def verify", "def other"), "", "defines no 'verify'"),
        ("import nowhere_at_all_either\n", "", "importing .* failed: ModuleNotFoundError"),
        (
            "def verify(completions):\n    return [1.0]\n",
            "",
            "cannot take the call fn\\(prompts, completions, answer\\)",
        ),
        ("def verify(prompts, completions, **kw):\n    return [1.0, 1.0]\n", "", "returned 2 scores for 1 completions"),
        ("def verify(prompts, completions, **kw):\n    return [float('nan')]\n", "", "non-finite score \\(nan\\)"),
        ("def verify(prompts, completions, **kw):\n    return [3.0]\n", "", "returned 3.0, outside \\[0, 1\\]"),
        ("def verify(prompts, completions, **kw):\n    return ['yes']\n", "", "returned 'yes' \\(str\\), not a number"),
        ("def verify(prompts, completions, **kw):\n    return 1.0\n", "", "returned a float, not a list"),
        ("def verify(prompts, completions, **kw):\n    raise KeyError('x')\n", "", "raised KeyError"),
        ("verify = 3\n", "", "is a int, not a function"),
    ],
)
def test_each_bad_verifier_is_one_sentence_naming_it(tmp_path, body, ref_suffix, message):
    ref = "nowhere_at_all:verify" if body is None else _verifier(tmp_path, body)
    prompts = [_prompt(answer="42")]
    if message is None:
        assert check_verifier(ref, prompts, "p.jsonl") == tmp_path / "verify.py"
        return
    with pytest.raises(ConfigError, match=message) as caught:
        check_verifier(ref, prompts, "p.jsonl")
    text = str(caught.value)
    assert "\n" not in text and repr(ref) in text


def test_a_verifier_that_breaks_while_scoring_names_the_prompt(tmp_path):
    ref = _verifier(tmp_path, "def verify(prompts, completions, **kw):\n    return [1 / 0]\n")
    with pytest.raises(VerifierError, match="raised ZeroDivisionError: division by zero \\(scoring prompt q7\\)"):
        FunctionScorer(ref).score(_prompt("q7"), ["x"])


def test_a_module_reference_and_its_source_file(tmp_path, monkeypatch):
    (tmp_path / "myverifiers").mkdir()
    (tmp_path / "myverifiers" / "__init__.py").write_text("")
    (tmp_path / "myverifiers" / "checks.py").write_text(GOOD.replace("def verify", "def ends_with"))
    monkeypatch.syspath_prepend(str(tmp_path))
    ref = "myverifiers.checks:ends_with"
    assert check_verifier(ref, [_prompt(answer="7")], "p") == tmp_path / "myverifiers" / "checks.py"
    assert FunctionScorer(ref).score(_prompt(answer="7"), ["it is 7", "it is 8"])[0].passed


def test_an_edited_verifier_file_is_read_afresh(tmp_path):
    ref = _verifier(tmp_path, "def verify(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    assert not FunctionScorer(ref).score(_prompt(), ["x"])[0].passed
    _verifier(tmp_path, "def verify(prompts, completions, **kw):\n    return [1.0] * len(completions)\n")
    assert FunctionScorer(ref).score(_prompt(), ["x"])[0].passed


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("sample.scorer.kind=function", "kind function needs function"),
        ("sample.scorer.function=no_colon_here", "expected 'package.module:function'"),
    ],
)
def test_function_settings_are_checked_with_the_config(setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides=[setting])


# ---------------------------------------------------------------------------------------------
# The arithmetic family
# ---------------------------------------------------------------------------------------------


def _operands(record) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", record.messages[0].content)]


def test_arithmetic_train_and_eval_differ_in_template_topic_name_and_numbers():
    records = build_arithmetic_prompts(n_train=240, n_eval=120, seed=3)
    assert records == build_arithmetic_prompts(n_train=240, n_eval=120, seed=3)  # deterministic
    train = [r for r in records if r.split == "train"]
    held_out = [r for r in records if r.split == "eval"]
    assert len(train) == 240 and len(held_out) == 120
    assert len({r.messages[0].content for r in train}) == 240
    for split, rows in (("train", train), ("eval", held_out)):
        other = "eval" if split == "train" else "train"
        for record in rows:
            text = record.messages[0].content
            assert not any(t in text for t in TOPICS[other]) and not any(n in text.split() for n in NAMES[other])
            # Operands: never a multiple of 4 in train, always one in eval (a product shown for a
            # division is a multiple of 16 in eval and never of 8 in train).
            numbers = _operands(record)
            if split == "eval":
                assert all(n % 4 == 0 for n in numbers), text
            else:
                assert all(n % 8 for n in numbers), text

    # No wording shared: no four consecutive words of a train template appear in an eval template.
    def grams(split):
        words = [re.sub(r"\{\w+\}", "#", t.text).lower().split() for t in TEMPLATES[split]]
        return {tuple(w[k : k + 4]) for w in words for k in range(len(w) - 3)}

    assert not grams("train") & grams("eval")


def test_arithmetic_answers_are_right():
    for record in build_arithmetic_prompts(n_train=60, n_eval=60):
        numbers = _operands(record)
        answer = int(record.answer)
        expected = {
            "add": lambda n: n[0] + n[1],
            "subtract": lambda n: n[0] - n[1],
            "multiply": lambda n: n[0] * n[1],
            "divide": lambda n: n[0] // n[1],
            "add-subtract": lambda n: n[0] + n[1] - n[2],
            "multiply-add": lambda n: n[0] * n[1] + n[2],
            "add-add": lambda n: sum(n[:3]),
            "multiply-subtract": lambda n: n[0] * n[1] - n[2],
        }[record.operation](numbers)
        assert answer == expected > 0, record.messages[0].content


def test_arithmetic_rounds_get_fresh_problems():
    first = build_arithmetic_prompts(n_train=30, n_eval=10)
    second = build_arithmetic_prompts(n_train=30, n_eval=10, round_number=2)
    assert all(r.split == "train" and r.id.startswith("arith-r2-") for r in second) and len(second) == 30
    assert not {r.messages[0].content for r in first} & {r.messages[0].content for r in second}


def test_change_number_corrupts_only_the_final_number():
    import random

    text = "3 boxes of 4 make 12.\nThe answer is 12."
    changed = CORRUPTIONS["change-number"](text, None, random.Random(0), {})
    assert changed.startswith("3 boxes of 4 make 12.\nThe answer is ") and changed.endswith(".")
    assert final_number_of(changed) != 12
    assert CORRUPTIONS["change-number"]("no digits", None, random.Random(0), {}) is None


# ---------------------------------------------------------------------------------------------
# The loop with a verifier file
# ---------------------------------------------------------------------------------------------

# Deterministic and about half passing on the tiny random model's answers: an even character count.
EVEN = (
    "def verify(prompts, completions, answer, **kw):\n"
    "    return [float(len(c[0]['content']) % 2 == 0) for c in completions]\n"
)
ODD = EVEN.replace("== 0", "== 1")


@pytest.mark.long
def test_the_loop_runs_with_a_verifier_file_and_an_edit_reruns_what_it_scored(tmp_path, tiny_model_dir):
    ref = _verifier(tmp_path, EVEN)
    overrides = [
        f"model.spec={tiny_model_dir}",
        "prompts.source=builtin:arithmetic",
        "sample.scorer.kind=function",
        f"sample.scorer.function={ref}",
        "sample.scorer.pass_threshold=1.0",
    ]
    events: list[str] = []
    run_dir = tmp_path / "run"
    steps = run_pipeline(run_dir, load_config("tiny", overrides=overrides), on_event=events.append)
    assert all(step.action == "ran" for step in steps)
    samples = read_records(run_dir / "round-1" / "sample" / "samples.jsonl", "samples")
    assert {s.score for s in samples} == {0.0, 1.0}
    assert all(s.checks["verifier"] == (len(s.completion) % 2 == 0) for s in samples)
    for stage in ("sample", "pairs", "evaluate"):
        assert read_manifest(run_dir / "round-1" / stage).inputs["verifier"].path.endswith("verify.py"), stage
    results = json.loads((run_dir / "round-1" / "evaluate" / "results.json").read_text())
    base = results["models"]["base"]["instruction_following"]
    assert base["verifier"] == ref and set(base["by_type"]) == {"verifier"}
    rows = [json.loads(line) for line in (run_dir / "round-1" / "evaluate" / "answers.jsonl").read_text().splitlines()]
    answers = [a for a in rows if a["model"] == "base"]
    assert all(a["strict"] == [len(a["answer"]) % 2 == 0] for a in answers)
    assert base["prompt_strict"] == pytest.approx(sum(a["strict"][0] for a in answers) / len(answers), abs=1e-4)

    _verifier(tmp_path, ODD)  # the edit flips every verdict
    events.clear()
    # Up to sft-data here (every stage after a changed input reruns: tests/test_pipeline.py); pairs
    # and evaluate record the verifier as their input too (above), so they rerun on the edit as well.
    again = run_pipeline(run_dir, None, until_stage="sft-data", on_event=events.append)
    assert [s.step.label for s in again if s.action == "ran"] == ["round-1/sample", "round-1/sft-data"]
    assert any(line.startswith("round-1/sample: runs (input verifier changed:") for line in events), events
    samples = read_records(run_dir / "round-1" / "sample" / "samples.jsonl", "samples")
    assert all(s.checks["verifier"] == (len(s.completion) % 2 == 1) for s in samples)


def test_a_bad_verifier_stops_the_run_before_any_stage_writes(tmp_path, tiny_model_dir):
    ref = _verifier(
        tmp_path, "def verify(prompts, completions, **kw):\n    return [math.nan] * len(completions)\nimport math\n"
    )
    cfg = load_config(
        "tiny",
        overrides=[
            f"model.spec={tiny_model_dir}",
            "prompts.source=builtin:arithmetic",
            "sample.scorer.kind=function",
            f"sample.scorer.function={ref}",
        ],
    )
    with pytest.raises(ConfigError, match="non-finite score"):
        run_pipeline(tmp_path / "run", cfg, on_event=lambda line: None)
    assert not (tmp_path / "run" / "round-1" / "sample").exists()  # the prompts stage alone ran


def test_evaluate_models_with_a_verifier_from_the_command_line(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from selftune.cli import app
    from selftune.run.files import write_jsonl

    prompts = tmp_path / "problems.jsonl"
    write_jsonl(prompts, [r for r in build_arithmetic_prompts(n_train=2, n_eval=4) if r.split == "eval"])
    ref = _verifier(tmp_path, EVEN)
    args = ["evaluate", "--model", f"base={tiny_model_dir}", "--prompts", str(prompts), "--out", str(tmp_path / "ev")]
    result = CliRunner().invoke(app, [*args, "--verifier", ref])
    assert result.exit_code == 0, result.output
    assert "eval (verifier) prompt strict" in " ".join(result.output.split())
    following = json.loads((tmp_path / "ev" / "results.json").read_text())["models"]["base"]["instruction_following"]
    assert following["verifier"] == ref and following["prompts"] == 4
    # Without a verifier these prompts (no constraints) have nothing to be measured by.
    bare = CliRunner().invoke(app, args)  # (the console script prints a SelftuneError as one line)
    assert "no eval prompts with constraints" in str(bare.exception)
    bad = CliRunner().invoke(app, [*args, "--verifier", "nocolon"], env={"COLUMNS": "400"})
    assert bad.exit_code != 0 and "expected 'package.module:function'" in " ".join(bad.output.split())


def test_a_changed_number_is_a_minimal_contrast_kept_however_similar():
    from selftune.data.pairs import Chosen, build_pairs

    prompt = _prompt("m1", answer="42")
    good = "Six sevens are " + "counted one by one, " * 10 + "so the answer is 42."
    pairs, counts = build_pairs(
        [prompt],
        chosen={"m1": Chosen(good, "sft-data")},
        policy_failures={},
        base_failures={},
        scorer=FunctionScorer("builtin:final_number"),
        weights={"corrupt:change-number": 1.0, "corrupt:repeat": 1.0},
        pairs_per_prompt=2,
        max_similarity=0.9,
        seed=0,
    )
    [pair] = [p for p in pairs if p.negative_source == "corrupt:change-number"]
    rejected = pair.rejected[0].content
    assert rejected[:-4] == good[:-4] and final_number_of(rejected) != 42  # 0.99 similar, kept
    assert pair.chosen_score == 1.0 and pair.rejected_score == 0.0
