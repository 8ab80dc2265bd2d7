"""IFEval-format benchmarks: loading, scoring with the reference checkers, the not-scored rule,
and the run inside the one-model-at-a-time evaluation."""

import json

import pytest

from selftune.data.benchmarks import load_benchmark, parse_benchmark, score_benchmark
from selftune.errors import RecordError

pytest.importorskip("if_verifiable")

# Written for this test, in IFEval's own format.
ROWS = [
    {
        "key": 1,
        "prompt": "Write in lowercase about the river.",
        "instruction_id_list": ["change_case:english_lowercase"],
        "kwargs": [{}],
    },
    {
        "key": 2,
        "prompt": "No commas, and give a title.",
        "instruction_id_list": ["punctuation:no_comma", "detectable_format:title"],
        "kwargs": [{}, {}],
    },
    {
        "key": 3,
        "prompt": "End with 'Is there anything else?'",
        "instruction_id_list": ["startend:end_checker"],
        "kwargs": [{"end_phrase": "Is there anything else?"}],
    },
    {
        "key": 4,
        "prompt": "Three sentences, no commas.",
        "instruction_id_list": ["length_constraints:number_sentences", "punctuation:no_comma"],
        "kwargs": [{"relation": "at least", "num_sentences": 3}, {}],
    },
]
ANSWERS = [
    "Sure:\nthe river runs past the mill and the children watch the boats go by all afternoon",  # loose only
    "<<River Days>>\nThe river is calm today and the boats are slow",  # both pass
    "The river is calm. Is there anything else?\n*note*",  # strict fails (last line), loose passes
    "One. Two. Three, four.",  # sentences: needs nltk data (not scored offline); no_comma fails
]


@pytest.fixture
def fixture_file(tmp_path):
    path = tmp_path / "input_data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


def test_known_answers_give_the_expected_strict_and_loose_accuracy(fixture_file, monkeypatch):
    import nltk

    def no_data(*args, **kwargs):
        raise LookupError("\n**********\n  Resource punkt not found.\n**********")

    monkeypatch.setattr(nltk.data, "load", no_data)  # the sentence checker's data is not installed
    prompts = load_benchmark("ifeval", fixture_file)
    scores = score_benchmark("ifeval", prompts, ANSWERS)
    # number_sentences is not scored: out of numerator and denominator; prompt 4 keeps no_comma.
    assert scores["not_scored"] == {"length_constraints:number_sentences": "needs nltk data 'punkt'"}
    assert scores["instructions"] == 5 and scores["prompts"] == 4
    assert scores["instruction_strict"] == pytest.approx(2 / 5)  # no_comma and title of prompt 2
    assert scores["instruction_loose"] == pytest.approx(4 / 5)  # + lowercase (prompt 1) and the end phrase (3)
    assert scores["prompt_strict"] == pytest.approx(1 / 4) and scores["prompt_loose"] == pytest.approx(3 / 4)
    assert scores["by_instruction"]["punctuation:no_comma"] == {"n": 2, "strict": 0.5, "loose": 0.5}
    assert scores["per_prompt"] == {"1": False, "2": True, "3": False, "4": False}


def test_a_prompt_whose_only_instruction_is_not_scored_leaves_the_denominators(fixture_file, monkeypatch):
    import nltk

    monkeypatch.setattr(
        nltk.data, "load", lambda *a, **k: (_ for _ in ()).throw(LookupError("Resource punkt not found."))
    )
    rows = [
        ROWS[3] | {"instruction_id_list": ["length_constraints:number_sentences"], "kwargs": [ROWS[3]["kwargs"][0]]}
    ]
    fixture_file.write_text(json.dumps(rows[0]) + "\n")
    scores = score_benchmark("ifeval", load_benchmark("ifeval", fixture_file), ["One. Two. Three."])
    assert (
        scores["prompts"] == 0
        and scores["instructions"] == 0
        and "length_constraints:number_sentences" in scores["not_scored"]
    )


def test_the_same_answers_score_the_same_whatever_the_random_state(tmp_path):
    # A letter the reference cannot use ("ab") makes its checker draw one at random; selftune
    # seeds each check by benchmark, prompt and instruction, so scores repeat, and restores the
    # caller's random state.
    import random

    rows = [
        {
            "key": k,
            "prompt": "Use the letter ab a lot.",
            "instruction_id_list": ["keywords:letter_frequency"],
            "kwargs": [{"letter": "ab", "let_frequency": 4, "let_relation": "at least"}],
        }
        for k in range(40)
    ]
    path = tmp_path / "input_data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    prompts = load_benchmark("ifeval", path)
    answers = ["the quick brown fox jumps over the lazy dog, twice: the quick brown fox"] * len(rows)
    verdicts = []
    for seed in range(4):
        random.seed(seed)
        before = random.getstate()
        verdicts.append(score_benchmark("ifeval", prompts, answers)["per_prompt"])
        assert random.getstate() == before
    assert all(v == verdicts[0] for v in verdicts)
    assert 0 < sum(verdicts[0].values()) < len(rows)  # the drawn letters differ between prompts


def test_bad_benchmark_rows_name_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"key": 1, "prompt": "", "instruction_id_list": ["x"]})
        + "\n"
        + json.dumps({"key": 2, "prompt": "p", "instruction_id_list": ["a", "b"], "kwargs": [{}]})
        + "\n"
    )
    with pytest.raises(RecordError) as caught:
        load_benchmark("ifeval", path)
    assert caught.value.problems == [
        f"{path}:1: prompt: expected non-empty text",
        f"{path}:2: kwargs: expected a list of 2 objects, one per instruction",
    ]
    with pytest.raises(ValueError, match="unknown benchmark"):
        parse_benchmark("mmlu=x.jsonl")
    assert parse_benchmark("IFBench") == ("ifbench", None)


def test_benchmark_runs_inside_the_one_at_a_time_evaluation(
    tiny_model_dir, smollm_tokenizer_dir, tmp_path, fixture_file, patch_everywhere
):
    """Each model answers the benchmark while it is the only model loaded, and is unloaded before
    the next one loads."""
    import selftune.models as models
    from selftune.config.loading import load_config
    from selftune.evaluation import runner as evaluate
    from tests.conftest import build_tiny_model

    other = build_tiny_model(tmp_path / "other", smollm_tokenizer_dir, seed=3)
    cfg = load_config(
        "tiny",
        overrides=[
            f"evaluate.benchmarks=['ifeval={fixture_file}']",
            "evaluate.benchmark_max_new_tokens=6",
            "evaluate.cache_answers=false",
        ],
    )
    events = []
    original_load, original_unload = models.load_model, models.unload
    patch_everywhere(
        models, "load_model", lambda spec, **kw: events.append(("load", spec)) or original_load(spec, **kw)
    )
    patch_everywhere(models, "unload", lambda model: events.append(("unload", None)) or original_unload(model))
    results = evaluate.evaluate_models([("base", str(tiny_model_dir)), ("other", str(other))], [], [], cfg)
    assert [e for e, _ in events] == ["load", "unload", "load", "unload"]
    for name in ("base", "other"):
        bench = results["models"][name]["benchmarks"]["ifeval"]
        assert bench["prompts"] == 4 and bench["max_new_tokens"] == 6 and 0 <= bench["prompt_loose"] <= 1
    assert "vs_base" in results["models"]["other"]["benchmarks"]["ifeval"]


def test_missing_checker_dependencies_fail_before_any_model_loads(
    tiny_model_dir, fixture_file, monkeypatch, patch_everywhere
):
    import sys

    import selftune.models as models
    from selftune.config.loading import load_config
    from selftune.errors import MissingExtraError
    from selftune.evaluation import runner as evaluate

    monkeypatch.setitem(sys.modules, "langdetect", None)  # installed without the checkers' own dependencies
    loaded = []
    patch_everywhere(models, "load_model", lambda spec, **kw: loaded.append(spec))
    cfg = load_config("tiny", overrides=[f"evaluate.benchmarks=['ifeval={fixture_file}']"])
    with pytest.raises(MissingExtraError, match=r"selftune\[benchmarks\].*langdetect"):
        evaluate.evaluate_models([("base", str(tiny_model_dir))], [], [], cfg)
    assert loaded == []


def test_evaluate_with_out_keeps_every_benchmark_answer_and_rescoring_them_gives_the_reported_figure(
    tiny_model_dir, tmp_path, fixture_file
):
    """`selftune evaluate --model ... --benchmark ifeval=FILE --out DIR` leaves the answers in DIR
    (not only in the answer cache), and the reference checkers give the same prompt-level strict
    from them."""
    from typer.testing import CliRunner

    from selftune.cli import app

    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--model",
            f"base={tiny_model_dir}",
            "--benchmark",
            f"ifeval={fixture_file}",
            "--out",
            str(out),
            "--benchmark-max-new-tokens",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "benchmark_answers.jsonl").read_text().splitlines()]
    assert [(r["benchmark"], r["key"], r["model"]) for r in rows] == [("ifeval", str(k), "base") for k in (1, 2, 3, 4)]
    assert all(r["finish_reason"] in ("stop", "length") and r["completion_tokens"] <= 8 for r in rows)
    reported = json.loads((out / "results.json").read_text())["models"]["base"]["benchmarks"]["ifeval"]
    rescored = score_benchmark("ifeval", load_benchmark("ifeval", fixture_file), [r["response"] for r in rows])
    assert rescored["prompt_strict"] == reported["prompt_strict"]
    assert [r["strict"] for r in rows] == [rescored["per_prompt"][str(k)] for k in (1, 2, 3, 4)]
