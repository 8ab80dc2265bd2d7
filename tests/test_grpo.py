"""The optional grpo stage: TRL's GRPOTrainer on answers written by selftune's engine, rewarded by
the run's scorer; its config checks, rollouts, resume, and its place in the loop."""

import json
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from selftune.cli import app
from selftune.config.loading import load_config
from selftune.data.records import PromptRecord
from selftune.errors import ConfigError
from selftune.generation.types import Completion
from selftune.run.folder import Run
from selftune.run.manifest import read_manifest
from selftune.run.plan import plan
from selftune.scoring.constraint import ConstraintScorer

PROMPTS = [
    PromptRecord(
        id=f"p{k}",
        split="train",
        messages=[{"role": "user", "content": text}],
        constraints=constraints,
    )
    for k, (text, constraints) in enumerate(
        [
            ("Write about the sea in lowercase letters.", [{"type": "lowercase"}]),
            ("Name a fruit, no commas please.", [{"type": "no_commas"}]),
            ("Describe a cat in all capital letters.", [{"type": "uppercase"}]),
            ("Say something kind, in lowercase, without commas.", [{"type": "lowercase"}, {"type": "no_commas"}]),
        ]
    )
]


def write_prompts(path):
    path.write_text("".join(p.model_dump_json() + "\n" for p in PROMPTS))
    return path


# ---------------------------------------------------------------------------------------------
# Config: bad GRPO settings are errors before anything loads
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("grpo.num_generations=1", "num_generations"),
        ("grpo.num_generations=3", "must be a multiple of num_generations (3)"),
        ("grpo.beta=inf", "grpo.beta"),
        ("grpo.beta=-0.1", "grpo.beta"),
        ("grpo.temperature=0", "grpo.temperature"),
        ("grpo.epsilon=1.5", "grpo.epsilon"),
        ("evaluate.models=[base,grpo]", "grpo.enabled is false"),
    ],
)
def test_bad_grpo_settings_are_config_errors(setting, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_config("tiny", overrides=["grpo.enabled=true" if "evaluate" not in setting else "rounds=1", setting])


def test_grpo_with_a_judge_that_is_the_policy_is_refused():
    with pytest.raises(ConfigError, match="needs sample.scorer.judge_model"):
        load_config("tiny", overrides=["grpo.enabled=true", "sample.scorer.kind=judge"])
    load_config("tiny", overrides=["grpo.enabled=true", "sample.scorer.kind=judge", "sample.scorer.judge_model=x"])


def test_plan_ends_each_round_with_grpo_only_when_enabled():
    assert "round-1/grpo" not in [step.label for step, _ in plan(2)]
    labels = [step.label for step, _ in plan(2, grpo=True)]
    assert labels[labels.index("round-1/dpo") + 1] == "round-1/grpo"
    assert labels[labels.index("round-2/dpo") + 1] == "round-2/grpo"
    assert [step.label for step, f in plan(1, grpo=True, from_stage="grpo") if f][0] == "round-1/grpo"
    with pytest.raises(ConfigError, match="runs only with grpo.enabled"):
        plan(1, from_stage="grpo")


def test_grpo_stage_refuses_prompts_the_scorer_cannot_reward_before_loading(tmp_path):
    from selftune.errors import RecordError
    from selftune.stages.grpo import grpo_stage

    bare = PROMPTS[0].model_copy(update={"constraints": []})
    path = tmp_path / "prompts.jsonl"
    path.write_text(bare.model_dump_json() + "\n" + PROMPTS[1].model_dump_json() + "\n")
    run = Run(tmp_path / "run")
    cfg = load_config("tiny", overrides=["grpo.enabled=true"])
    with pytest.raises(RecordError, match="prompt p0: constraints: empty"):
        grpo_stage(run, cfg, prompts_path=path, dpo_model=str(tmp_path / "no-model"))
    assert not (tmp_path / "run" / "round-1" / "grpo").exists()


# ---------------------------------------------------------------------------------------------
# Reward functions and rollouts
# ---------------------------------------------------------------------------------------------


def test_scorer_reward_is_the_share_of_checks_met_and_pass_rate_follows_it():
    from selftune.train.grpo import PassRate, ScorerReward

    reward = ScorerReward(ConstraintScorer(), {p.id: p for p in PROMPTS})
    prompt = PROMPTS[3]
    answers = [
        "we walked home together along the quiet river and smiled at everyone we met.",  # all four pass
        "We walked home together along the quiet river, and smiled at everyone we met.",  # both constraints fail
        # conversational; the comma fails
        [{"role": "assistant", "content": "we walked home together along the quiet river, and smiled at everyone."}],
    ]
    rewards = reward([prompt.messages] * 3, answers, prompt_id=[prompt.id] * 3)
    # 4 checks each: lowercase, no_commas, complete, no_repetition
    assert rewards == [1.0, 0.5, 0.75]
    assert PassRate(reward)([prompt.messages] * 3, answers, prompt_id=[prompt.id] * 3) == [1.0, 0.0, 0.0]


class RecordingGenerator:
    """Returns distinct token ids per (seed, prompt, sample) and records each call."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, params, progress=None, stop_when=None):
        self.calls.append((len(prompts), params.n, params.seed, params.max_new_tokens))
        return [
            [
                Completion(i, s, "x", "stop", 3, 2, params.seed, token_ids=(params.seed % 1000, s, i))
                for s in range(params.n)
            ]
            for i in range(len(prompts))
        ]


class FakeModel:
    training = True

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode


def fake_trainer(process_index: int, step: int):
    accelerator = SimpleNamespace(process_index=process_index, unwrap_model=lambda model: model)
    return SimpleNamespace(accelerator=accelerator, model=FakeModel(), state=SimpleNamespace(global_step=step))


def test_engine_rollouts_give_every_answer_of_a_group_its_own_sample_index(tiny_model_dir):
    from selftune.models import load_tokenizer
    from selftune.train.grpo import EngineRollouts

    cfg = load_config("tiny", overrides=["grpo.enabled=true"])  # groups of 4
    tokenizer = load_tokenizer(str(tiny_model_dir))
    rollouts = EngineRollouts(cfg, tokenizer, PROMPTS, [24, 24, 16, 24])
    rollouts.generator = RecordingGenerator()
    a, b, c = (p.model_dump()["messages"] for p in PROMPTS[:3])
    # One process: two whole groups, one call (same copies, same first sample), its own budget each.
    out = rollouts([a] * 4 + [b] * 4, fake_trainer(0, step=5))
    assert len(out["completion_ids"]) == len(out["prompt_ids"]) == 8
    assert {tuple(ids)[1] for ids in out["completion_ids"][:4]} == {0, 1, 2, 3}
    rendered = tokenizer.apply_chat_template(a, add_generation_prompt=True, tokenize=False)
    assert out["prompt_ids"][0] == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    seed_step5 = rollouts.generator.calls[0][2]
    # The second of two processes holds the second half of a's group: sample indices go on from 2,
    # so its answers differ from the first process's (another seed); then a whole group of c.
    rollouts.generator = RecordingGenerator()
    rollouts([a] * 2 + [c] * 4, fake_trainer(1, step=5))
    by_copies = {(n, seed) for _, n, seed, _ in rollouts.generator.calls}
    assert (2, seed_step5 + 7919 * 2) in by_copies and (4, seed_step5) in by_copies
    assert 16 in {budget for *_, budget in rollouts.generator.calls}  # c's own answer budget
    # Another step, other seeds; the same step again, the same seeds (a resumed run replays it).
    rollouts.generator = RecordingGenerator()
    rollouts([a] * 4, fake_trainer(0, step=6))
    assert rollouts.generator.calls[0][2] != seed_step5


def test_engine_rollouts_follow_the_weights_as_they_train(tiny_model_dir):
    # The engine keeps its prepacked weights between calls; the adapter being trained must not be
    # among them, or every rollout would come from the weights of the first step.
    import torch

    from selftune.models import load_tokenizer
    from selftune.train.grpo import EngineRollouts
    from selftune.train.toolkit import lora_model

    cfg = load_config("tiny", overrides=["grpo.enabled=true", "grpo.rollouts=engine"])
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = lora_model(str(tiny_model_dir), cfg, cfg.grpo, "cpu")
    rollouts = EngineRollouts(cfg, tokenizer, PROMPTS, [24] * 4)
    trainer = fake_trainer(0, step=0)
    trainer.model = model
    group = [PROMPTS[0].model_dump()["messages"]] * 4
    first = rollouts(group, trainer)["completion_ids"]
    assert rollouts(group, trainer)["completion_ids"] == first  # same step, same weights: same answers
    with torch.no_grad():  # a training step's worth of change to the adapter
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    assert rollouts(group, trainer)["completion_ids"] != first


def test_engine_and_hf_completions_carry_the_sampled_token_ids(tiny_model_dir):
    from selftune.generation.local import make_generator
    from selftune.generation.types import SamplingParams
    from selftune.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), dtype="float32")
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=3)
    prompts = [[{"role": "user", "content": "Hi there"}], [{"role": "user", "content": "Name a color."}]]
    for backend in ("continuous", "hf"):
        for row in make_generator(model, tokenizer, backend=backend).generate(prompts, params):
            for c in row:
                assert len(c.token_ids) == c.completion_tokens > 0
                kept = c.token_ids[:-1] if c.finish_reason == "stop" else c.token_ids
                assert tokenizer.decode(kept, skip_special_tokens=True) == c.text, backend


# ---------------------------------------------------------------------------------------------
# Training: weights change, the merge is recorded, a resumed run equals an uninterrupted one
# ---------------------------------------------------------------------------------------------

SETTINGS = ["grpo.enabled=true", "grpo.learning_rate=1e-2", "grpo.epochs=2"]


def history(run):
    return json.loads((run.stage_dir("grpo") / "log_history.json").read_text())


def test_grpo_stage_trains_a_fresh_adapter_on_the_dpo_model_and_merges_it(tmp_path, tiny_model_dir):
    from selftune.stages.grpo import grpo_stage

    run = Run(tmp_path / "run")
    cfg = load_config("tiny", overrides=SETTINGS)
    merged = grpo_stage(run, cfg, prompts_path=write_prompts(tmp_path / "p.jsonl"), dpo_model=str(tiny_model_dir))
    manifest = read_manifest(run.stage_dir("grpo"))
    assert manifest.status == "complete" and merged == run.stage_dir("grpo") / "merged"
    m = manifest.metrics
    assert m["rollouts"] == "engine" and m["steps"] == 4 and m["prompts"] == 4
    assert m["rollout_seconds"] > 0 and 0 <= m["reward_mean"] <= 1 and "zero_std_groups" in m
    steps = [e for e in history(run) if "reward" in e]
    assert len(steps) == 4 and all("rewards/passed/mean" in e and "frac_reward_zero_std" in e for e in steps)
    # The adapter learned (LoRA B starts at zero) and the merged weights differ from the DPO model's.
    adapter = load_file(str(run.stage_dir("grpo") / "adapter" / "adapter_model.safetensors"))
    assert any(t.abs().sum() > 0 for name, t in adapter.items() if "lora_B" in name)
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(merged / "model.safetensors"))
    assert any(not before[k].equal(after[k]) for k in before if "q_proj" in k)
    assert "merge_max_logit_diff" in m and manifest.outputs["merged"].sha256


def test_grpo_with_trls_own_generation_trains_too(tmp_path, tiny_model_dir):
    from selftune.stages.grpo import grpo_stage

    run = Run(tmp_path / "run")
    cfg = load_config("tiny", overrides=["grpo.enabled=true", "grpo.rollouts=trl", "grpo.prompts=2"])
    grpo_stage(run, cfg, prompts_path=write_prompts(tmp_path / "p.jsonl"), dpo_model=str(tiny_model_dir))
    m = read_manifest(run.stage_dir("grpo")).metrics
    assert m["rollouts"] == "trl" and m["rollout_seconds"] is None and m["steps"] == 1
    assert 0 <= m["reward_first"] <= 1


def test_grpo_resumed_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path, tiny_model_dir):
    from transformers import TrainerCallback

    from selftune.stages.grpo import grpo_stage

    class StopAt(TrainerCallback):
        # After step 2's checkpoint: the end of the first of two epochs (2 steps of 2 prompts each).
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise KeyboardInterrupt("simulated interruption")

    prompts = write_prompts(tmp_path / "p.jsonl")
    cfg = load_config("tiny", overrides=SETTINGS)
    straight, interrupted = Run(tmp_path / "straight"), Run(tmp_path / "interrupted")
    grpo_stage(straight, cfg, prompts_path=prompts, dpo_model=str(tiny_model_dir))
    with pytest.raises(KeyboardInterrupt):
        grpo_stage(interrupted, cfg, prompts_path=prompts, dpo_model=str(tiny_model_dir), progress=StopAt())
    grpo_stage(interrupted, cfg, prompts_path=prompts, dpo_model=str(tiny_model_dir))

    def per_step(run):
        return {e["step"]: (e["reward"], e["loss"]) for e in history(run) if "reward" in e}

    expected, resumed = per_step(straight), per_step(interrupted)
    assert set(resumed) == set(expected) == {1, 2, 3, 4}
    for step in expected:  # the same rollouts (seeded by step) and the same updates after the resume
        assert resumed[step] == pytest.approx(expected[step], rel=1e-4, abs=1e-6), step
    a = load_file(str(straight.stage_dir("grpo") / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(interrupted.stage_dir("grpo") / "adapter" / "adapter_model.safetensors"))
    assert all((a[k] - b[k]).abs().max() < 1e-5 for k in a)


# ---------------------------------------------------------------------------------------------
# In the loop: `selftune run --preset tiny --set grpo.enabled=true`
# ---------------------------------------------------------------------------------------------


@pytest.mark.long
def test_run_with_grpo_trains_it_each_round_evaluates_it_and_starts_the_next_round_from_it(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["run", "--preset", "tiny", "--run-dir", str(run_dir), "--rounds", "2"]
        + ["--set", f"model.spec={tiny_model_dir}", "--set", "grpo.enabled=true"],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "round-1/grpo: done" in result.output and "round-2/grpo: done" in result.output
    round_one_grpo = (run_dir / "round-1" / "grpo" / "merged").resolve()
    for stage, key in (("sample", "policy"), ("sft", "base")):
        assert (run_dir / read_manifest(run_dir / "round-2" / stage).inputs[key].path).resolve() == round_one_grpo
    results = json.loads((run_dir / "round-2" / "evaluate" / "results.json").read_text())
    assert list(results["models"]) == ["base", "sft-r1", "dpo-r1", "grpo-r1", "sft-r2", "dpo-r2", "grpo-r2"]
    grpo = results["models"]["grpo-r2"]
    assert grpo["vs_dpo"]["prompts"] == grpo["vs_base"]["prompts"] > 0
    assert "vs_previous" in grpo and "vs_previous" in results["models"]["dpo-r2"]
    report = (run_dir / "report" / "report.md").read_text()
    assert "2 (grpo-r2, vs dpo)" in report and f"{grpo['vs_dpo']['delta']:+.3f}" in report
    assert {"log_history_grpo_r1", "log_history_grpo_r2"} <= set(read_manifest(run_dir / "round-2" / "report").inputs)
    lineage = [row for row in (run_dir / "report" / "report.md").read_text().splitlines() if "grpo" in row]
    assert lineage


@pytest.mark.slow
def test_the_tiny_preset_with_grpo_on_the_embedded_model(tmp_path, builtin_home, monkeypatch):
    """`selftune run --preset tiny --set grpo.enabled=true` on the embedded model: real answers,
    real rewards, the grpo model evaluated beside the others."""
    monkeypatch.setenv("SELFTUNE_HOME", str(builtin_home))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["run", "--preset", "tiny", "--run-dir", str(run_dir)]
        + ["--set", "model.spec=builtin:smollm2-135m-instruct", "--set", "grpo.enabled=true"],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    metrics = read_manifest(run_dir / "round-1" / "grpo").metrics
    assert metrics["steps"] == 2 and metrics["rollouts"] == "engine" and metrics["reward_mean"] > 0
    results = json.loads((run_dir / "round-1" / "evaluate" / "results.json").read_text())
    assert "vs_dpo" in results["models"]["grpo"]
