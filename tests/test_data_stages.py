import json

import pytest

from selftune.config.loading import load_config
from selftune.data.constraints.registry import CONSTRAINTS
from selftune.data.prompts import FORMS, TOPICS, build_prompts, import_prompts
from selftune.data.records import read_records
from selftune.errors import ConfigError, LineageError, NoTrainingDataError, RecordError
from selftune.run.folder import Run
from selftune.scoring.constraint import ConstraintScorer
from selftune.scoring.judge import JudgeScorer, parse_judge_score
from selftune.scoring.reward_model import RewardModelScorer
from selftune.stages.prompts import prompts_stage
from selftune.stages.sample import sample_stage
from selftune.stages.sft_data import sft_data_stage
from tests.conftest import MockGenerator

# ---- prompts ------------------------------------------------------------------------------


def test_builtin_prompts_are_deterministic_and_sized():
    a, b = build_prompts(300, 100, seed=1), build_prompts(300, 100, seed=1)
    assert [r.model_dump() for r in a] == [r.model_dump() for r in b]
    assert sum(r.split == "train" for r in a) == 300 and sum(r.split == "eval" for r in a) == 100
    assert all(1 <= len(r.constraints) <= (5 if r.split == "train" else 3) for r in a)
    assert build_prompts(10, 5, seed=2)[0].model_dump() != a[0].model_dump()


def test_eval_tasks_and_constraint_values_never_occur_in_train():
    records = build_prompts(300, 100, seed=0)
    assert not set(TOPICS["train"]) & set(TOPICS["eval"]) and not set(FORMS["train"]) & set(FORMS["eval"])

    def task(r):
        return r.messages[0].content.split(". ")[0]

    train_tasks = {task(r) for r in records if r.split == "train"}
    assert not train_tasks & {task(r) for r in records if r.split == "eval"}
    train_values = {
        (c.type, json.dumps(c.kwargs, sort_keys=True))
        for r in records
        if r.split == "train"
        for c in r.constraints
        if c.kwargs
    }
    eval_values = {
        (c.type, json.dumps(c.kwargs, sort_keys=True))
        for r in records
        if r.split == "eval"
        for c in r.constraints
        if c.kwargs
    }
    assert eval_values and not train_values & eval_values
    # Every constraint type appears in the default train set.
    assert {c.type for r in records if r.split == "train" for c in r.constraints} == set(CONSTRAINTS)


def test_no_eval_prompt_or_eval_wording_leaks_into_train():
    import random

    from selftune.data.constraints.registry import describe

    records = build_prompts(600, 300, seed=0)
    train_text = "\n".join(r.messages[0].content for r in records if r.split == "train")
    for record in records:
        if record.split != "eval":
            continue
        assert record.messages[0].content not in train_text
        for c in record.constraints:
            assert c.wording.startswith("eval-")
            # The eval sentence, rendered with train values too, never appears in a train prompt.
            kind = CONSTRAINTS[c.type]
            for kwargs in [c.kwargs, kind.sample_kwargs(random.Random(0), "train", request="A request.")]:
                assert describe(c.type, kwargs, c.wording) not in train_text, (c.type, c.wording)
    assert all(c.wording.startswith("train-") for r in records if r.split == "train" for c in r.constraints)


def test_type_weights_shape_the_train_mix_only():
    def share(records, split, names):
        drawn = [c.type for r in records if r.split == split for c in r.constraints]
        return sum(t in names for t in drawn) / len(drawn)

    hard = {"lowercase", "uppercase", "quoted"}
    even = build_prompts(600, 300, seed=0)
    tilted = build_prompts(600, 300, seed=0, type_weights=dict.fromkeys(hard, 0.1))
    assert share(tilted, "train", hard) < 0.5 * share(even, "train", hard)
    assert share(tilted, "eval", hard) == pytest.approx(share(even, "eval", hard), abs=0.03)
    never = build_prompts(300, 50, seed=0, type_weights={"lowercase": 0})
    assert share(never, "train", {"lowercase"}) == 0 and share(never, "eval", {"lowercase"}) > 0
    with pytest.raises(ValueError, match="unknown constraint type"):
        build_prompts(3, 1, type_weights={"lowercse": 0.5})


def test_eval_prompts_do_not_depend_on_the_train_mix_or_size():
    def eval_split(records):
        return [r.model_dump() for r in records if r.split == "eval"]

    reference = eval_split(build_prompts(300, 100, seed=3))
    assert eval_split(build_prompts(40, 100, seed=3, type_weights={"lowercase": 0, "title": 5.0})) == reference
    assert eval_split(build_prompts(300, 100, seed=4)) != reference


def test_default_config_downweights_types_the_base_rarely_passes():
    weights = load_config().prompts.type_weights
    assert weights and all(0 < w < 1 for w in weights.values())
    with pytest.raises(ConfigError, match="prompts.type_weights"):
        load_config(overrides=["prompts.type_weights={lowercse: 0.5}"])


def test_import_user_prompts_from_jsonl_and_csv(tmp_path):
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"instruction": "Say hi"}) + "\n" + json.dumps({"prompt": "Say bye", "id": "b"}) + "\n")
    records = import_prompts(plain)
    assert [r.id for r in records] == ["train-00001", "b"] and records[0].messages[0].content == "Say hi"
    table = tmp_path / "p.csv"
    table.write_text("id,prompt\nx,Hello there\n")
    assert import_prompts(table)[0].messages[0].content == "Hello there"


def test_prompt_file_with_bad_line_fails_and_leaves_run_untouched(tmp_path):
    run = Run(tmp_path / "run")
    cfg = load_config("tiny")
    prompts_stage(run, cfg)
    before = {p: p.read_bytes() for p in run.root.rglob("*") if p.is_file()}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"id": "a", "messages": [{"role": "user", "content": "x"}], "constraints": [{"type": "lowercase"}]})
        + "\n"
        + json.dumps({"id": "b", "messages": [{"role": "user"}]})
        + "\n"
    )
    with pytest.raises(RecordError) as caught:
        sample_stage(run, cfg, prompts_path=bad, generator=MockGenerator(["x"]))
    assert str(caught.value) == f"{bad}:2: messages[0].content: missing"
    after = {p: p.read_bytes() for p in run.root.rglob("*") if p.is_file()}
    assert after == before and not run.stage_dir("sample").exists()


# ---- scorers ------------------------------------------------------------------------------


def _prompt(constraints):
    from selftune.data.records import PromptRecord

    return PromptRecord(id="p", messages=[{"role": "user", "content": "Write."}], constraints=constraints)


def test_constraint_scorer_fraction_and_pass():
    prompt = _prompt([{"type": "lowercase"}, {"type": "no_commas"}])
    full, half, none = ConstraintScorer(quality_checks=False).score(
        prompt,
        [
            "all good here and the weather is fine today so we walk home",  # lowercase English (IFEval's rule)
            "all good here, the weather is fine today so we walk home",
            "Bad, bad",
        ],
    )
    assert (full.score, full.passed) == (1.0, True)
    assert (half.score, half.passed) == (0.5, False) and half.checks == {"lowercase#0": True, "no_commas#1": False}
    assert (none.score, none.passed) == (0.0, False)
    with pytest.raises(ValueError, match="has no constraints"):
        ConstraintScorer().score(_prompt([]), ["x"])


def test_quality_checks_fail_truncated_and_looping_answers():
    prompt = _prompt([{"type": "lowercase"}])
    done, cut, looping, listed = ConstraintScorer().score(
        prompt,
        ["a finished answer.", "an answer cut off in the", "we go round and " * 10 + "done.", "items:\n* one\n* two"],
    )
    assert done.passed and done.checks == {"lowercase#0": True, "complete": True, "no_repetition": True}
    assert not cut.checks["complete"] and cut.score == pytest.approx(2 / 3)
    assert not looping.checks["no_repetition"] and not looping.passed
    assert listed.passed


@pytest.mark.parametrize(
    "text,loops",
    [
        # Loops inside one word, as round 1's model sampled them in round 2; the word 4-grams passed them.
        ("<<" + "<" * 40 + ">>\n\nin a world where the land is a tapestry.", True),
        ("the garden was quiet. " + "\U0001f333" * 14, True),
        ("a list of things;;;;;;;;;;;;;;;;;;;;;;;;", True),
        ("haha" * 12 + " that was funny.", True),
        ("so it ends.\n" + "1" * 15, True),
        # Eleven repeats are still text; rules, underlines and table borders are markup.
        ("<" * 11 + "almost a loop.", False),
        ("A title\n" + "=" * 40 + "\n\nfirst part.\n\n***\n\nsecond part.", False),
        ("| a | b |\n" + "|---" * 14 + "|\n| 1 | 2 |", False),
        ("a line.\n\n" + "-" * 60 + "\n\nanother line.", False),
    ],
)
def test_a_short_unit_of_characters_repeated_twelve_times_is_a_loop(text, loops):
    from selftune.data.repair import repair_answer
    from selftune.scoring.base import has_character_loop

    assert has_character_loop(text) is loops
    prompt = _prompt([{"type": "lowercase"}])
    (result,) = ConstraintScorer().score(prompt, [text])
    assert result.checks["no_repetition"] is not loops
    if loops:  # a looping answer is no material for a repair either
        assert repair_answer(prompt, text) is None


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Score: 7", 0.7),
        ("score = 10/10", 1.0),
        ("I'd say 4/10.", 0.4),
        ("8", 0.8),
        ("Score: 3/5", 0.6),
        ("no idea", None),
        ("Score: 12", None),
    ],
)
def test_judge_score_parsing(text, expected):
    assert parse_judge_score(text) == expected


def test_judge_scorer_averages_samples_and_ignores_unreadable():
    judge = MockGenerator(["Score: 8", "Score: 6", "cannot tell"])
    [result] = JudgeScorer(judge, samples=3, pass_threshold=0.7).score(_prompt([]), ["an answer"])
    assert result.score == pytest.approx(0.7) and result.passed and result.checks["unreadable"] == 1
    rubric_prompt = judge.calls[0][0][0][0]["content"]
    assert "Write." in rubric_prompt and "an answer" in rubric_prompt


def test_judge_scorer_with_a_tiny_model(tiny_model_dir):
    from selftune.generation.hf import HFGenerator
    from selftune.models import load_model, load_tokenizer

    generator = HFGenerator(load_model(str(tiny_model_dir), dtype="float32"), load_tokenizer(str(tiny_model_dir)))
    results = JudgeScorer(generator, samples=2).score(_prompt([]), ["one", "two"])
    assert len(results) == 2 and all(0 <= r.score <= 1 for r in results)
    assert all(len(r.checks["judge_scores"]) + r.checks["unreadable"] == 2 for r in results)


def test_reward_model_scorer_with_a_tiny_model(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from selftune.models import load_tokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).eval()
    scorer = RewardModelScorer(model, load_tokenizer(str(tiny_model_dir)))
    results = scorer.score(_prompt([]), ["short", "a much longer answer than the first one"])
    assert len(results) == 2 and all(0 < r.score < 1 for r in results)
    assert results[0].score != results[1].score


def test_the_configured_reward_model_scorer_can_pass_an_answer(tmp_path, tiny_model_dir):
    """Bug: pass_threshold defaulted to 1.0 for every scorer, and a reward model's score is a
    sigmoid, so it never passed an answer. Each scorer now has its own default threshold."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from selftune.scoring.registry import make_scorer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    with torch.no_grad():
        model.score.weight.zero_()  # a neutral reward model: logit 0, score sigmoid(0) = 0.5 for every answer
    model.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "rm")
    defaults = {
        kind: load_config(
            "demo", overrides=[f"sample.scorer.kind={kind}", f"sample.scorer.reward_model={tmp_path / 'rm'}"]
        ).sample.scorer.pass_threshold
        for kind in ("constraints", "judge", "reward-model")
    }
    assert defaults == {"constraints": 1.0, "judge": 0.7, "reward-model": 0.5}
    cfg = load_config(
        "demo", overrides=["sample.scorer.kind=reward-model", f"sample.scorer.reward_model={tmp_path / 'rm'}"]
    )
    with make_scorer(cfg, None) as scorer:
        results = scorer.score(_prompt([]), ["short", "The sea is calm today."])
    assert [r.score for r in results] == [0.5, 0.5] and all(r.passed for r in results)
    explicit = load_config(
        "demo",
        overrides=[
            "sample.scorer.kind=reward-model",
            "sample.scorer.reward_model=rm",
            "sample.scorer.pass_threshold=0.9",
        ],
    )
    assert explicit.sample.scorer.pass_threshold == 0.9


# ---- sample and sft-data stages -----------------------------------------------------------


def test_sample_on_tiny_model_is_reproducible(tmp_path, tiny_model_dir):
    cfg = load_config("tiny", overrides=[f"model.spec={tiny_model_dir}", "sample.k=3"])
    runs = []
    for name in ("a", "b"):
        run = Run(tmp_path / name)
        prompts_stage(run, cfg)
        runs.append(read_records(sample_stage(run, cfg), "samples"))
    first, second = runs
    assert len(first) == 3 * cfg.prompts.n_train
    assert sorted({s.sample_index for s in first}) == [0, 1, 2]
    assert [(s.completion, s.score, s.seed) for s in first] == [(s.completion, s.score, s.seed) for s in second]
    assert all(0 <= s.score <= 1 and s.checks for s in first)


def test_yield_statistics(tmp_path):
    cfg = load_config("tiny", overrides=["sample.k=2"])
    run = Run(tmp_path / "run")
    prompts_stage(run, cfg)
    # Lowercase answers without commas pass some constraints but not e.g. word_count floors.
    sample_stage(run, cfg, generator=MockGenerator(["yes", "No, Sir"]))
    metrics = run.manifest("sample").metrics
    assert metrics["samples"] == 2 * cfg.prompts.n_train
    assert sum(metrics["best_score_distribution"].values()) == cfg.prompts.n_train
    assert 0 <= metrics["yield"] <= 1
    assert set(metrics["pass_rate_by_type"]) <= set(CONSTRAINTS) | {"complete", "no_repetition"}


def test_sft_data_keeps_only_sampled_passing_answers(tmp_path):
    cfg = load_config(
        "tiny",
        overrides=["sample.k=4", "prompts.n_train=40", "sample.scorer.pass_threshold=1.0", "sft_data.repair=false"],
    )
    run = Run(tmp_path / "run")
    prompts_stage(run, cfg)
    pool = [
        "all lowercase, short",
        "ALL CAPS",
        "<<Title>>\n* a\n* b",
        "Sure thing. Fine. That is all.",
        '"quoted"',
        "SECTION 1\nx\nSECTION 2\ny",
        '{"a": 1}',
        "word " * 60,
    ]
    sample_stage(run, cfg, generator=MockGenerator(lambda i: [pool[(i + s) % len(pool)] for s in range(4)]))
    out = sft_data_stage(run, cfg)
    samples = read_records(run.output_of("sample", "samples"), "samples")
    examples = read_records(out, "sft")
    sampled = {(s.prompt_id, s.completion) for s in samples if s.score == 1.0}
    assert examples, "some prompt should have a passing sample"
    for example in examples:
        assert (example.id, example.completion[0].content) in sampled
    metrics = run.manifest("sft-data").metrics
    assert metrics["examples"] + metrics["no_passing"] + metrics["duplicates_dropped"] == 40
    assert metrics["no_passing"] == 40 - len({s.prompt_id for s in samples if s.score == 1.0})


def test_sft_data_repairs_prompts_without_a_passing_answer(tmp_path):
    from selftune.scoring.constraint import ConstraintScorer

    cfg = load_config("tiny", overrides=["sample.k=2", "prompts.n_train=40", "sample.scorer.pass_threshold=1.0"])
    run = Run(tmp_path / "run")
    prompts_stage(run, cfg)
    pool = [
        "The Sea Is Calm. Boats Drift Slowly, And Gulls Cry. Nights Are Cold. The Shore Is Quiet. Stars Rise.",
        "Waves come in. They go out again, all day long. Children play near the water. The sun sets late. Then",
    ]
    sample_stage(run, cfg, generator=MockGenerator(pool))
    examples = read_records(sft_data_stage(run, cfg), "sft")
    samples = read_records(run.output_of("sample", "samples"), "samples")
    prompts = {p.id: p for p in read_records(run.output_of("prompts", "prompts"), "prompts")}
    failing = {(s.prompt_id, s.completion) for s in samples if s.score < 1.0}
    repaired = [e for e in examples if e.chosen_source.startswith("repair:")]
    assert len(repaired) >= 10, "most prompts should get a repaired example"
    for example in repaired:
        assert (example.id, example.original) in failing
        assert ConstraintScorer().score(prompts[example.id], [example.completion[0].content])[0].passed
    assert all(e.chosen_source in ("sample",) or e.chosen_source.startswith("repair:") for e in examples)
    metrics = run.manifest("sft-data").metrics
    assert metrics["by_source"]["repair"] == len(repaired)
    assert metrics["examples"] + metrics["no_passing"] + metrics["duplicates_dropped"] == 40


def _two_rounds_of_sft_data(tmp_path, replay, fresh=True):
    cfg = load_config(
        "tiny",
        overrides=[
            "sample.k=2",
            "prompts.n_train=30",
            "sft_data.repair=false",
            f"sft_data.replay={replay}",
            f"prompts.fresh_each_round={str(fresh).lower()}",
        ],
    )
    run = Run(tmp_path / f"run-{replay}-{fresh}")
    pool = ["all lowercase, short", "ALL CAPS", "<<Title>>\n* a\n* b", "Sure thing. Fine. That is all."]
    for r in (1, 2):
        if fresh or r == 1:
            prompts_stage(run, cfg, round_number=r)
        sample_stage(run, cfg, round_number=r, generator=MockGenerator(lambda i: [pool[i % 4], pool[(i + 1) % 4]]))
        sft_data_stage(run, cfg, round_number=r)
    return run


def test_replay_adds_a_share_of_earlier_rounds_examples_tagged_with_their_round(tmp_path):
    run = _two_rounds_of_sft_data(tmp_path, 0.5)
    first = read_records(run.output_of("sft-data", "sft", round_number=1), "sft")
    second = read_records(run.output_of("sft-data", "sft", round_number=2), "sft")
    own = [e for e in second if getattr(e, "replay_round", None) is None]
    replayed = [e for e in second if getattr(e, "replay_round", None) is not None]
    assert own and all(e.id.startswith("train-r2-") for e in own)
    assert len(replayed) == round(0.5 * len(own)) > 0
    by_id = {f"{e.id}@r1": e for e in first}
    for example in replayed:  # round 1's own examples, word for word, tagged with round 1
        assert example.replay_round == 1
        assert example.prompt == by_id[example.id].prompt
        assert example.completion == by_id[example.id].completion
        assert example.chosen_source == by_id[example.id].chosen_source
    assert run.manifest("sft-data", 2).metrics["replayed"] == len(replayed)
    assert "sft-round-1" in run.manifest("sft-data", 2).inputs  # found through lineage, and recorded
    assert not any(hasattr(e, "replay_round") for e in first)  # round 1 has no earlier round
    # Without replay, round 2's data is its own examples only.
    plain = _two_rounds_of_sft_data(tmp_path, 0)
    assert read_records(plain.output_of("sft-data", "sft", round_number=2), "sft") == own


def test_the_type_table_of_a_later_round_counts_that_rounds_fresh_prompts(tmp_path):
    """Round 2's SFT examples carry round 2's prompt ids; the table read round 1's prompts only
    and so counted none of them."""
    from selftune.reporting.by_type import type_table

    run = _two_rounds_of_sft_data(tmp_path, 0)
    own = read_records(run.output_of("sft-data", "sft", round_number=2), "sft")
    header, rows = type_table(run, round_number=2)
    assert header[1] == "samples pass (round 1's model)"  # round 2 samples with round 1's final model
    column = header.index("SFT examples (sampled + repaired)")
    counted = sum(sum(int(n) for n in row[column].split(" + ")) for row in rows)
    prompts = {p.id: p for p in read_records(run.output_of("prompts", "prompts", round_number=2), "prompts")}
    assert counted == sum(len(prompts[e.id].constraints) for e in own) > 0


def test_replay_where_rounds_share_their_prompts_keeps_ids_unique(tmp_path):
    """Without fresh prompts each round answers the same prompts: a replayed example's prompt id
    is in the round's own examples already, and the SFT stage reads ids as unique."""
    run = _two_rounds_of_sft_data(tmp_path, 1.0, fresh=False)
    second = read_records(run.output_of("sft-data", "sft", round_number=2), "sft")  # would raise on a duplicate
    replayed = {e.id.removesuffix("@r1") for e in second if getattr(e, "replay_round", None) is not None}
    own_ids = {e.id for e in second if getattr(e, "replay_round", None) is None}
    first_ids = {e.id for e in read_records(run.output_of("sft-data", "sft", round_number=1), "sft")}
    assert replayed and replayed <= first_ids
    assert replayed & own_ids  # the clash this test is about: the same prompt in both rounds' examples


def test_replay_without_an_earlier_rounds_sft_data_names_the_missing_stage(tmp_path):
    cfg = load_config("tiny", overrides=["sample.k=2", "prompts.n_train=12", "sft_data.replay=0.5"])
    run = Run(tmp_path / "run")
    prompts_stage(run, cfg, round_number=2)
    sample_stage(run, cfg, round_number=2, generator=MockGenerator(["yes, a short answer.", "No"]))
    with pytest.raises(LineageError, match="round-1/sft-data has not completed"):
        sft_data_stage(run, cfg, round_number=2)
    assert run.manifest("sft-data", 2) is None  # nothing was begun


def test_a_changed_pass_threshold_reruns_sft_data(tmp_path):
    """The stage read sample.scorer.pass_threshold without hashing it, so a changed threshold left
    stale SFT data marked up to date."""
    cfg = load_config("tiny", overrides=["sample.k=2", "prompts.n_train=12", "sft_data.repair=false"])
    run = Run(tmp_path / "run", reuse=True)
    prompts_stage(run, cfg)
    sample_stage(run, cfg, generator=MockGenerator(["yes, a short answer.", "No"]))
    loose_cfg = load_config(
        "tiny",
        overrides=["sample.k=2", "prompts.n_train=12", "sft_data.repair=false", "sample.scorer.pass_threshold=0.1"],
    )
    strict_cfg = load_config(
        "tiny",
        overrides=["sample.k=2", "prompts.n_train=12", "sft_data.repair=false", "sample.scorer.pass_threshold=1.0"],
    )
    loose = len(read_records(sft_data_stage(run, loose_cfg), "sft"))
    try:
        strict = len(read_records(sft_data_stage(run, strict_cfg), "sft"))
    except NoTrainingDataError:  # no sample passes every check: nothing to train on, said by name
        strict = 0
    assert strict < loose


def test_tie_break_and_dedupe():
    from selftune.data.records import PromptRecord, SampleRecord
    from selftune.stages.sft_data import select_examples

    prompt = PromptRecord(id="p", messages=[{"role": "user", "content": "Hi"}], constraints=[{"type": "lowercase"}])
    twin = PromptRecord(id="q", messages=[{"role": "user", "content": "Hi"}], constraints=[{"type": "lowercase"}])
    samples = [
        SampleRecord(prompt_id=pid, model="m", completion=text, score=score, sample_index=i)
        for pid in ("p", "q")
        for i, (text, score) in enumerate([("a longer one", 1.0), ("short", 1.0), ("No", 0.0)])
    ]
    shortest, stats = select_examples([prompt, twin], samples, tie_break="shortest")
    assert [e.completion[0].content for e in shortest] == ["short"] and stats["duplicates_dropped"] == 1
    longest, _ = select_examples([prompt, twin], samples, tie_break="longest")
    assert longest[0].completion[0].content == "a longer one"
    kept, stats = select_examples([prompt, twin], samples, dedupe=False)
    assert len(kept) == 2 and stats["duplicates_dropped"] == 0
    # The pairs stage's best passing policy sample follows the same rule.
    from selftune.stages.pairs import group_samples

    for rule, text in (("shortest", "short"), ("longest", "a longer one"), ("first", "a longer one")):
        best, failed = group_samples(samples, 1.0, rule)
        assert best["p"].completion == text and [s.completion for s in failed["p"]] == ["No"]


def test_retry_rounds_sample_again_only_the_prompts_without_a_passing_answer(tmp_path):
    from selftune.data.repair import repair_answer
    from selftune.generation.types import Completion

    cfg = load_config(
        "tiny", overrides=["sample.k=2", "sample.retry_rounds=2", "sample.retry_k=3", "sample.early_rejection=false"]
    )
    run = Run(tmp_path / "run")
    prompts_stage(run, cfg)
    records = {r.messages[0].content: r for r in read_records(run.output_of("prompts", "prompts"), "prompts")}
    base = "The sea is wide and calm today. Boats drift slowly home. Everyone waits on the shore."

    class Stubborn:
        """Fails everything in the first pass; in each retry, passes the even-numbered prompts it is given."""

        name = "stubborn"
        calls: list = []

        def generate(self, prompts, params, progress=None, stop_when=None):
            self.calls.append(([m[0]["content"] for m in prompts], params))
            first = params.seed == cfg.sample.seed  # the first pass (retries draw with other seeds)
            out = []
            for i, messages in enumerate(prompts):
                fixed = None if first or i % 2 else repair_answer(records[messages[0]["content"]], base)
                text = fixed.text if fixed else ""
                out.append([Completion(i, s, text, "stop", 5, 3, params.seed * 100 + s) for s in range(params.n)])
            return out

    gen = Stubborn()
    sample_stage(run, cfg, generator=gen)
    rows = read_records(run.output_of("sample", "samples"), "samples")
    passed = lambda rs: {r.prompt_id for r in rs if r.score >= 1.0}  # noqa: E731
    # A pass asks once per answer budget (prompts asking for a length get more tokens): its calls
    # share the pass's seed.
    passes: dict[int, tuple[list, object]] = {}
    for texts, params in gen.calls:
        passes.setdefault(params.seed, ([], params))[0].extend(texts)
    first, second, third = (passes[seed] for seed in sorted(passes))
    assert len(first[0]) == cfg.prompts.n_train and first[1].n == 2
    ids = {r.messages[0].content: r.id for r in records.values()}
    # Round 2 asks only what round 1 left unsolved (all), round 3 only what round 2 left unsolved.
    assert len(second[0]) == cfg.prompts.n_train and second[1].n == 3
    solved_in_second = passed(r for r in rows if 2 <= r.sample_index < 5)
    assert solved_in_second and {ids[t] for t in third[0]} == {ids[t] for t in second[0]} - solved_in_second
    assert {r.sample_index for r in rows} == set(range(8))  # 2 + 3 + 3, numbered after each other
    assert len({(r.prompt_id, r.seed) for r in rows}) == len(rows)  # every retry answer has its own seed
    retries = run.manifest("sample").metrics["retry_rounds"]
    assert [r["prompts"] for r in retries] == [len(second[0]), len(third[0])]
    assert retries[0]["newly_solved"] == len(solved_in_second)
