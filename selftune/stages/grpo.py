"""Stage `grpo` (optional, `grpo.enabled`): online RL after DPO. A fresh LoRA on the merged DPO
model, trained with TRL's GRPOTrainer on answers it writes while it trains, rewarded by the run's
scorer (`selftune.train.grpo`), then merged. The prompts are a seeded draw of the round's train
prompts, validated here before anything loads; the training runs in this process or in
`accelerate launch` children; the merge and the manifest stay here.

Usage:
    selftune grpo --run runs/demo --set grpo.enabled=true
"""

from __future__ import annotations

import random
from pathlib import Path

from selftune.config import PipelineConfig
from selftune.data.pairs import prompt_messages
from selftune.data.prompts import answer_budgets, scorable_train_prompts
from selftune.generation.preflight import check_stage_prompts
from selftune.run.folder import Run
from selftune.run.plan import prompts_round
from selftune.run.spec import StageSpec
from selftune.scoring.registry import scorer_inputs
from selftune.train.jobs import GRPOJob
from selftune.train.launch import run_training
from selftune.train.toolkit import check_trainable, check_training_memory, record_adapter, resume_point

GRPO_STAGE = StageSpec(
    "grpo",
    output="merged",
    # The rollouts are capped like every sampled answer; the reward is the run's scorer.
    reads=(
        "grpo",
        "model.dtype",
        "model.load_in_4bit",
        "generation.backend",
        "generation.max_new_tokens",
        "generation.max_new_tokens_cap",
        "sample.scorer",
        "train.num_processes",
        "train.accelerate_config",
    ),
    # Which round's prompts are read is recorded with them (the inputs' sha256).
    unhashed=(
        "model.trust_remote_code",
        "generation.batch_size",
        "generation.over_context",  # which prompts train, not how: see UNHASHED_GENERATION_SETTINGS
        "train.launcher",
        "prompts.fresh_each_round",
        "prompts.source",
    ),
)


def grpo_stage(
    run: Run,
    cfg: PipelineConfig,
    *,
    round_number: int = 1,
    prompts_path: Path | None = None,
    dpo_model: str | None = None,
    progress=None,
) -> Path:
    """Train the GRPO adapter on the round's merged DPO model and merge it; returns the merged model dir."""
    cfg = GRPO_STAGE.view(cfg)
    if prompts_path is None:
        prompts_path = run.output_of("prompts", "prompts", round_number=prompts_round(cfg, round_number))
    dpo_model = dpo_model or str(run.output_of("dpo", "merged", round_number=round_number))
    prompts = scorable_train_prompts(prompts_path, cfg.sample.scorer.kind)  # each one rewardable
    if cfg.grpo.prompts and cfg.grpo.prompts < len(prompts):
        prompts = random.Random(f"grpo-{cfg.grpo.seed}-{round_number}").sample(prompts, cfg.grpo.prompts)
    check_trainable(dpo_model, cfg, "grpo")
    budgets = answer_budgets(prompts, cfg.generation.max_new_tokens, cfg.generation.max_new_tokens_cap)
    messages = [prompt_messages(p) for p in prompts]
    fit = check_stage_prompts(dpo_model, messages, [p.id for p in prompts], budgets, cfg, "grpo")
    prompts, budgets = [prompts[k] for k in fit.kept], [budgets[k] for k in fit.kept]
    # A step trains per_device_batch_size answers, each with its prompt.
    estimate = check_training_memory(
        dpo_model, cfg, "grpo", examples=len(prompts) * cfg.grpo.num_generations, length=fit.longest
    )
    inputs = {"prompts": Path(prompts_path), "dpo_model": Path(dpo_model), **scorer_inputs(cfg, prompts, prompts_path)}
    start = run.begin(GRPO_STAGE, cfg, inputs=inputs, round_number=round_number)
    if start.reused:
        return start.reused
    with start as stage:
        job = GRPOJob(
            dpo_model=dpo_model,
            prompts=[p.model_dump(mode="json") for p in prompts],
            budgets=budgets,
            resuming=resume_point(stage),
        )
        metrics = run_training(job, cfg, stage.dir, progress=progress)
        skipped = fit.record() if fit.skipped else {}
        counts = {"prompts": len(prompts), "resumed": job.resuming, **skipped}
        return record_adapter(stage, dpo_model, cfg, {**counts, **metrics}, memory=estimate)
