import json

import pytest

from selftune.config.loading import load_config
from selftune.data.records import PairRecord, PromptRecord
from selftune.evaluation.metrics import instruction_following
from selftune.evaluation.runner import ModelLeakError, evaluate_models
from tests.conftest import build_tiny_model

PROMPTS = [
    PromptRecord(
        id="a",
        messages=[{"role": "user", "content": "lowercase please"}],
        constraints=[{"type": "lowercase"}],
        split="eval",
    ),
    PromptRecord(
        id="b",
        messages=[{"role": "user", "content": "title and no commas"}],
        constraints=[{"type": "title"}, {"type": "no_commas"}],
        split="eval",
    ),
    PromptRecord(
        id="c",
        messages=[{"role": "user", "content": "end phrase"}],
        constraints=[{"type": "end_phrase", "kwargs": {"phrase": "That is all."}}],
        split="eval",
    ),
]


def test_strict_and_loose_accuracy_on_hand_written_answers():
    answers = [
        "Sure! Here it is:\nall lowercase words",  # strict fails (capital S), loose passes (first line dropped)
        "<<my title>>\nno commas here",  # both constraints pass
        "The end. That is all.\n*Note: thanks*",  # strict fails (trailing line); loose passes without last line
    ]
    metrics, details = instruction_following(PROMPTS, answers)
    assert metrics["prompt_strict"] == pytest.approx(1 / 3, abs=1e-4)
    assert metrics["prompt_loose"] == 1.0
    assert metrics["instruction_strict"] == pytest.approx(2 / 4)
    assert metrics["instruction_loose"] == 1.0
    assert metrics["by_type"]["lowercase"] == {"n": 1, "strict": 0.0, "loose": 1.0}
    assert details[1] == {"prompt_id": "b", "strict": [True, True], "loose": [True, True]}


def _pairs():
    return [
        PairRecord(
            id=f"p{i}",
            prompt=[{"role": "user", "content": f"q{i}"}],
            chosen=[{"role": "assistant", "content": "good answer"}],
            rejected=[{"role": "assistant", "content": f"bad {i}"}],
            negative_source="policy",
        )
        for i in range(3)
    ]


@pytest.fixture(scope="module")
def second_model(tmp_path_factory, smollm_tokenizer_dir):
    return build_tiny_model(tmp_path_factory.mktemp("second"), smollm_tokenizer_dir, seed=1)


def test_model_equal_to_reference_has_zero_margins(tiny_model_dir):
    cfg = load_config("tiny")
    heard = []  # progress: (label, done, total), per model and per prompt set
    results = evaluate_models(
        [("sft", str(tiny_model_dir)), ("dpo", str(tiny_model_dir))],
        PROMPTS,
        _pairs(),
        cfg,
        progress=lambda *call: heard.append(call),
    )
    finished = {label: total for label, done, total in heard if done == total}
    # dpo has sft's weights: its answers come from the answer cache, with no generation to follow
    assert finished == {"sft: eval": 3, "sft: held-out pairs": 3, "dpo: held-out pairs": 3}
    assert [label for label, _, _ in heard][0] == "sft: eval"
    for name in ("sft", "dpo"):
        assert results["models"][name]["pairs"]["reward_margin"]["all"] == 0.0
        assert results["models"][name]["pairs"]["reward_accuracy"]["all"] == 0.0
    assert results["models"]["sft"]["pairs"]["chosen_perplexity"] > 1


def test_base_answers_do_not_depend_on_evaluation_order(tiny_model_dir, second_model):
    cfg = load_config("tiny", overrides=["evaluate.cache_answers=false"])  # each order generates its own answers
    first = evaluate_models(
        [("base", str(tiny_model_dir)), ("other", str(second_model))], PROMPTS, _pairs(), cfg, reference="base"
    )
    last = evaluate_models(
        [("other", str(second_model)), ("base", str(tiny_model_dir))], PROMPTS, _pairs(), cfg, reference="base"
    )

    def answers(results, name):
        return [a["answer"] for a in results["answers"] if a["model"] == name]

    assert answers(first, "base") == answers(last, "base")
    assert first["models"]["other"]["vs_base"]["prompts"] == len(PROMPTS) and "vs_base" not in first["models"]["base"]
    assert answers(first, "base") != answers(first, "other")
    assert first["models"]["other"]["pairs"] == last["models"]["other"]["pairs"]


@pytest.mark.parametrize("backend", ["hf", "continuous"])
def test_a_surviving_model_reference_stops_the_loop(tiny_model_dir, monkeypatch, backend):
    from selftune.generation.engine import ContinuousGenerator
    from selftune.generation.hf import HFGenerator

    kept = []
    generator_class = HFGenerator if backend == "hf" else ContinuousGenerator
    original = generator_class.__init__

    def leaky_init(self, model, tokenizer, **kwargs):
        kept.append(model)  # a careless holder of the model
        original(self, model, tokenizer, **kwargs)

    monkeypatch.setattr(generator_class, "__init__", leaky_init)
    with pytest.raises(ModelLeakError, match="still referenced"):
        evaluate_models(
            [("base", str(tiny_model_dir)), ("sft", str(tiny_model_dir))],
            PROMPTS,
            [],
            load_config("tiny", overrides=[f"generation.backend={backend}"]),
        )


def test_cached_answers_are_reused_only_for_the_same_weights_prompts_and_settings(tiny_model_dir, second_model):
    cfg = load_config("tiny")
    first = evaluate_models([("base", str(tiny_model_dir))], PROMPTS, [], cfg)
    again = evaluate_models([("base", str(tiny_model_dir)), ("other", str(second_model))], PROMPTS, [], cfg)
    assert not first["models"]["base"]["answers_from_cache"] and again["models"]["base"]["answers_from_cache"]
    assert not again["models"]["other"]["answers_from_cache"]  # other weights: generated
    assert again["models"]["base"]["peak_memory_gib"] is None  # no pairs: the model was not even loaded
    assert [a["answer"] for a in again["answers"] if a["model"] == "base"] == [a["answer"] for a in first["answers"]]
    longer = load_config("tiny", overrides=["evaluate.max_new_tokens=9", "evaluate.max_new_tokens_cap=9"])
    assert not evaluate_models([("base", str(tiny_model_dir))], PROMPTS, [], longer)["models"]["base"][
        "answers_from_cache"
    ]
    assert not evaluate_models([("base", str(tiny_model_dir))], PROMPTS[:2], [], cfg)["models"]["base"][
        "answers_from_cache"
    ]


@pytest.fixture(scope="module")
def big_models(tmp_path_factory, smollm_tokenizer_dir):
    # Weights must dominate memory for the ratio to mean anything: ~110M parameters, ~440 MB fp32.
    return [
        build_tiny_model(tmp_path_factory.mktemp(f"big{i}"), smollm_tokenizer_dir, hidden=1024, layers=6, seed=i)
        for i in range(3)
    ]


_PEAK_SCRIPT = """
import gc, json, sys
from selftune.config import load_config
from selftune.data.records import PromptRecord
from selftune.evaluation.runner import evaluate_models
from selftune.models import peak_memory_bytes, reset_peak_memory

prompts = [PromptRecord.model_validate(json.loads(sys.argv[1]))]
models = json.loads(sys.argv[2])
cfg = load_config("tiny", overrides=["evaluate.max_new_tokens=4", "evaluate.cache_answers=false"])
gc.collect()
reset_peak_memory("cpu")
start = peak_memory_bytes("cpu")
results = evaluate_models([tuple(m) for m in models], prompts, [], cfg)
print(json.dumps({"delta": peak_memory_bytes("cpu") - start,
                  "reported": [m["peak_memory_gib"] for m in results["models"].values()]}))
"""


def test_three_models_peak_like_one(big_models):
    # Each measurement runs in a fresh process: within one long test process, memory freed by
    # earlier tests stays resident and is reused, which hides part of a load from the RSS peak.
    import subprocess
    import sys

    def peak_delta(models):
        done = subprocess.run(
            [sys.executable, "-c", _PEAK_SCRIPT, PROMPTS[0].model_dump_json(), json.dumps(models)],
            capture_output=True,
            text=True,
            check=True,
        )
        outcome = json.loads(done.stdout.strip().splitlines()[-1])
        return max(0, outcome["delta"]), outcome["reported"]

    one, _ = peak_delta([["base", str(big_models[0])]])
    three, reported = peak_delta([[f"m{i}", str(path)] for i, path in enumerate(big_models)])
    assert one > 300 * 2**20, "the model should dominate the measured memory"
    assert three < 1.5 * one, (three / 2**20, one / 2**20)
    assert len(reported) == 3 and all(peak > 0 for peak in reported)


def test_paired_comparison_gives_the_gain_its_noise():
    from selftune.evaluation.metrics import paired_comparison

    theirs = [False] * 40 + [True] * 10
    ours = [True] * 10 + [False] * 30 + [True] * 10  # 10 prompts won, none lost
    result = paired_comparison(ours, theirs)
    assert result["delta"] == pytest.approx(0.2) and (result["wins"], result["losses"]) == (10, 0)
    assert result["p_value"] == pytest.approx(2 * 0.5**10, abs=1e-4)  # McNemar exact, two-sided
    low, high = result["ci95"]
    assert 0 < low < 0.2 < high
    mixed = paired_comparison([True, False] * 25, [False, True] * 25)  # 25 won, 25 lost
    assert mixed["delta"] == 0 and mixed["p_value"] == 1.0 and mixed["ci95"][0] < 0 < mixed["ci95"][1]
    with pytest.raises(ValueError):
        paired_comparison([True], [True, False])


class _Judge:
    """A judge stub: names the response holding `prefer`, or always `fixed`."""

    def __init__(self, prefer=None, fixed=None):
        self.prefer, self.fixed = prefer, fixed

    def generate(self, prompts, params, progress=None):
        from selftune.generation.types import Completion

        out = []
        for i, prompt in enumerate(prompts):
            text = prompt[0]["content"]
            a = text.split("[Response A]")[1].split("[Response B]")[0]
            verdict = self.fixed or ("Winner: A" if self.prefer in a else "Winner: **B**")
            out.append([Completion(i, 0, verdict, "stop", 1, 1, None)])
        return out


@pytest.mark.parametrize(
    "text,verdict",
    [
        ("Winner: A", "A"),
        ("winner = b.", "B"),
        ("Winner: tie", "tie"),
        ("**Winner:** **A**", "A"),
        ("B", "B"),
        ("I like both", None),
    ],
)
def test_pairwise_verdict_parsing(text, verdict):
    from selftune.scoring.judge import parse_pairwise_verdict

    assert parse_pairwise_verdict(text) == verdict


def test_judge_win_rate_swaps_positions():
    from selftune.scoring.judge import judge_win_rate

    requests = ["q1", "q2", "q3"]
    ours, theirs = ["good one", "good two", "meh"], ["bad", "bad", "good three"]
    preferring = judge_win_rate(_Judge(prefer="good"), requests, ours, theirs)
    assert preferring["win_rate"] == pytest.approx(2 / 3, abs=1e-4) and preferring["comparisons"] == 6
    assert preferring["position_bias"] == 0.5
    biased = judge_win_rate(_Judge(fixed="Winner: A"), requests, ours, theirs)  # always the first position
    assert biased["win_rate"] == 0.5 and biased["position_bias"] == 1.0
    unreadable = judge_win_rate(_Judge(fixed="hmm"), requests, ours, theirs)
    assert unreadable["win_rate"] == 0.5 and unreadable["unreadable"] == 6


def test_judge_runs_after_the_models_with_a_tiny_judge(tiny_model_dir):
    cfg = load_config("tiny", overrides=["evaluate.judge=true", f"evaluate.judge_model={tiny_model_dir}"])
    results = evaluate_models([("base", str(tiny_model_dir)), ("sft", str(tiny_model_dir))], PROMPTS, [], cfg)
    outcome = results["judge"]["vs_base"]["sft"]
    assert outcome["comparisons"] == 2 * len(PROMPTS) and 0 <= outcome["win_rate"] <= 1
    assert results["models"]["sft"]["judge_win_rate"] == outcome["win_rate"]
    assert "judge_win_rate" not in results["models"]["base"]


def test_each_rounds_dpo_model_is_measured_against_its_own_rounds_sft_model(tmp_path, tiny_model_dir, second_model):
    """Bug: pair metrics used round 1's SFT model as the reference for every model, though round
    r's DPO model trained against round r's SFT model. Here round 2's DPO model equals round 2's
    SFT model, so against its own reference its margins are exactly zero."""
    from selftune.run.files import write_jsonl
    from selftune.run.folder import Run
    from selftune.stages.evaluate import evaluate_stage

    run = Run(tmp_path / "run")
    for stage, name, rows, round_number in (("prompts", "prompts", PROMPTS, 1), ("pairs", "eval_pairs", _pairs(), 2)):
        with run.stage(stage, config={}, round_number=round_number) as context:
            write_jsonl(context.dir / f"{name}.jsonl", rows)
            context.add_output(name, context.dir / f"{name}.jsonl")
    cfg = load_config("tiny", overrides=["evaluate.models=[sft, dpo]", "rounds=2"])
    models = [
        ("sft-r1", str(tiny_model_dir)),
        ("dpo-r1", str(tiny_model_dir)),
        ("sft-r2", str(second_model)),
        ("dpo-r2", str(second_model)),
    ]
    results = json.loads(evaluate_stage(run, cfg, round_number=2, models=models).read_text())
    for name in ("dpo-r1", "dpo-r2"):
        assert results["models"][name]["pairs"]["reward_margin"]["all"] == 0.0, name
    assert results["references"] == {"sft-r1": "sft-r1", "dpo-r1": "sft-r1", "sft-r2": "sft-r2", "dpo-r2": "sft-r2"}


def test_pair_metrics_truncate_and_mask_as_dpo_trained(tiny_model_dir):
    """Bug: evaluate scored pairs at a hard-coded max_length 4096 (and separator), not the
    dpo.max_length the DPO model trained with. A long chosen answer must be scored truncated to it,
    and a pair whose response is truncated away is left out instead of failing the evaluation."""
    import torch

    from selftune.models import load_model, load_tokenizer
    from selftune.train.logprobs import PairCollator, sequence_logps, tokenize_pair

    long_answer = " ".join(["the waves roll in slowly under a grey sky"] * 12)
    pairs = [
        PairRecord(
            id="long",
            prompt=[{"role": "user", "content": "q"}],
            chosen=[{"role": "assistant", "content": long_answer}],
            rejected=[{"role": "assistant", "content": "no"}],
            negative_source="policy",
        ),
        PairRecord(
            id="cut",
            prompt=[{"role": "user", "content": "q " * 80}],
            chosen=[{"role": "assistant", "content": "yes"}],
            rejected=[{"role": "assistant", "content": "no"}],
            negative_source="policy",
        ),
    ]
    cfg = load_config("tiny", overrides=["dpo.max_length=64"])
    results = evaluate_models([("sft", str(tiny_model_dir))], PROMPTS, pairs, cfg)
    metrics = results["models"]["sft"]["pairs"]
    tokenizer, model = load_tokenizer(str(tiny_model_dir)), load_model(str(tiny_model_dir), dtype="float32")
    row = tokenize_pair(tokenizer, pairs[0], max_length=64, response_separator=None)
    batch = PairCollator(tokenizer.pad_token_id)([row])
    with torch.no_grad():
        logps, counts = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert metrics["logp_chosen"] == pytest.approx(round(logps[0].item(), 3), abs=2e-3)
    assert metrics["pairs"] == 1  # the pair whose answer was cut away is left out
