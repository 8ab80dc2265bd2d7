"""The configured scorer (`make_scorer`) and scoring a stage's answers into sample records."""

from __future__ import annotations

import contextlib
from pathlib import Path

from selftune.data.records import PromptRecord, SampleRecord
from selftune.errors import ConfigError
from selftune.generation.factory import open_configured
from selftune.generation.types import Generator
from selftune.models import load_tokenizer, resolve_model_path, unload
from selftune.scoring.base import Scorer
from selftune.scoring.constraint import ConstraintScorer
from selftune.scoring.function import FunctionScorer, check_verifier
from selftune.scoring.judge import JudgeScorer
from selftune.scoring.reward_model import RewardModelScorer

# transformers is imported where a reward model loads (its model classes cost ~3 s).

# ---------------------------------------------------------------------------------------------
# The configured scorer, and scoring a stage's answers
# ---------------------------------------------------------------------------------------------


def judges_with_policy(scorer_cfg) -> bool:
    """A judge with no model of its own judges with the policy model of the stage."""
    return scorer_cfg.kind == "judge" and scorer_cfg.judge_model is None


def scorer_inputs(cfg, prompts: list[PromptRecord], where) -> dict[str, Path]:
    """Check the configured scorer against the prompts it will score, before any model loads, and
    return what it adds to the stage's inputs: a verifier function's source file (an edited verifier
    reruns the stage). `where` names the prompts' file in messages."""
    if cfg.sample.scorer.kind != "function":
        return {}
    return {"verifier": check_verifier(cfg.sample.scorer.function, prompts, str(where))}


def make_scorer(cfg, generator: Generator | None):
    """The configured scorer; a judge without its own model judges with `generator` (the policy)."""
    scorer_cfg = cfg.sample.scorer
    if scorer_cfg.kind == "constraints":
        return contextlib.nullcontext(ConstraintScorer(quality_checks=scorer_cfg.quality_checks))
    if scorer_cfg.kind == "function":
        return contextlib.nullcontext(FunctionScorer(scorer_cfg.function, pass_threshold=scorer_cfg.pass_threshold))
    if scorer_cfg.kind == "judge":
        if judges_with_policy(scorer_cfg):
            if generator is None:
                raise ConfigError(
                    "sample.scorer.kind=judge with no sample.scorer.judge_model judges with the policy "
                    "model, and this step has none loaded; set sample.scorer.judge_model"
                )
            return contextlib.nullcontext(
                JudgeScorer(generator, samples=scorer_cfg.judge_samples, pass_threshold=scorer_cfg.pass_threshold)
            )
        return _judge_from(scorer_cfg, cfg)
    return _reward_model_from(scorer_cfg, cfg)


@contextlib.contextmanager
def _judge_from(scorer_cfg, cfg):

    with open_configured(scorer_cfg.judge_model, cfg) as judge:
        yield JudgeScorer(judge, samples=scorer_cfg.judge_samples, pass_threshold=scorer_cfg.pass_threshold)


@contextlib.contextmanager
def _reward_model_from(scorer_cfg, cfg):
    from transformers import AutoModelForSequenceClassification

    if not scorer_cfg.reward_model:
        raise ConfigError("sample.scorer.kind=reward-model needs sample.scorer.reward_model")
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(scorer_cfg.reward_model), use_safetensors=True, trust_remote_code=cfg.model.trust_remote_code
    )
    try:
        tokenizer = load_tokenizer(scorer_cfg.reward_model, trust_remote_code=cfg.model.trust_remote_code)
        yield RewardModelScorer(model.eval(), tokenizer, pass_threshold=scorer_cfg.pass_threshold)
    finally:
        unload(model)


def score_samples(prompts: list[PromptRecord], answers, scorer: Scorer, model_name: str) -> list[SampleRecord]:
    rows = []
    for prompt, completions in zip(prompts, answers):
        results = scorer.score(prompt, [c.text for c in completions])
        for completion, result in zip(completions, results):
            rows.append(
                SampleRecord(
                    prompt_id=prompt.id,
                    model=model_name,
                    completion=completion.text,
                    score=result.score,
                    checks=result.checks,
                    sample_index=completion.sample_index,
                    seed=completion.seed,
                    finish_reason=completion.finish_reason,
                    completion_tokens=completion.completion_tokens,
                    **({"rejected_by": completion.rejected_by} if completion.rejected_by else {}),
                )
            )
    return rows
