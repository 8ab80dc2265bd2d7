"""`selftune run`: the whole loop, stage by stage through the run's lineage.

    prompts ─► [round r: sample ─► sft-data ─► sft (+merge) ─► pairs ─► dpo (+merge)
                         (─► grpo (+merge), when grpo.enabled)] x rounds
            ─► evaluate (base and every round's SFT, DPO (and grpo) models, one at a time) ─► report

Every stage function checks its own manifest first (`Run.up_to_date`): a stage that is complete
and whose config hash and input sha256s still match is skipped, and the run says so; any other
stage runs, with the reason (never ran, config changed, input changed, ...). Because every input
is recorded with its sha256, a rerun stage changes its outputs and so reruns everything
downstream. A stage that was interrupted left no complete manifest and runs again; training
resumes from its last checkpoint.

Round 1 samples from the base model. Round r+1 samples from, and trains SFT on top of, round r's
final model (DPO, or grpo when enabled); the `base` negatives of every round are round 1's failed base samples.

Usage:
    selftune run --preset demo
    selftune run --preset tiny --run-dir runs/t --set dpo.beta=0.2      # reruns dpo, evaluate, report

    import selftune                                                      # the same from Python
    selftune.run_pipeline("runs/t", selftune.load_config("tiny", overrides=["dpo.beta=0.2"]))
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from selftune.config import PipelineConfig
from selftune.errors import ConfigError
from selftune.evaluation.runner import load_benchmarks
from selftune.generation.types import PhaseCallback
from selftune.models import check_model_spec
from selftune.models.limits import check_length_setting, model_shape
from selftune.progress import configure_logging
from selftune.run.folder import Run, StageEvent
from selftune.run.plan import Step, fresh_prompts, plan, stage_manifests
from selftune.scoring.function import load_verifier
from selftune.stages.dpo import dpo_stage
from selftune.stages.evaluate import evaluate_stage
from selftune.stages.grpo import grpo_stage
from selftune.stages.pairs import pairs_stage
from selftune.stages.prompts import prompts_stage
from selftune.stages.report import report_stage
from selftune.stages.sample import sample_stage
from selftune.stages.sft import sft_stage
from selftune.stages.sft_data import sft_data_stage
from selftune.tracking import Trackers, check_trackers, lineage
from selftune.train.launch import check_accelerate_config


def _policy(run: Run, cfg: PipelineConfig, round_number: int) -> str:
    """The model a round starts from: the base in round 1, else the previous round's final model
    (its grpo model when grpo is enabled, else its DPO model)."""
    if round_number == 1:
        return cfg.model.spec
    final = "grpo" if cfg.grpo.enabled else "dpo"
    return str(run.output_of(final, "merged", round_number=round_number - 1))


def check_context_settings(cfg: PipelineConfig) -> None:
    """Every token budget and training length of the run within the base model's context window,
    before anything is written (each stage checks its own prompts again before it generates)."""
    shape = model_shape(cfg.model.spec, trust_remote_code=cfg.model.trust_remote_code)
    budgets = {
        "generation.max_new_tokens": cfg.generation.max_new_tokens,
        "generation.max_new_tokens_cap": cfg.generation.max_new_tokens_cap,
        "evaluate.max_new_tokens": cfg.evaluate.max_new_tokens,
        "evaluate.max_new_tokens_cap": cfg.evaluate.max_new_tokens_cap,
    }
    if cfg.evaluate.benchmarks:
        budgets["evaluate.benchmark_max_new_tokens"] = cfg.evaluate.benchmark_max_new_tokens
    lengths = {"sft.max_length": cfg.sft.max_length, "dpo.max_length": cfg.dpo.max_length}
    if cfg.grpo.enabled:
        lengths["grpo.max_length"] = cfg.grpo.max_length
    for setting, value in budgets.items():  # an answer needs room for its prompt too
        check_length_setting(shape, value, setting, answer=True)
    for setting, value in lengths.items():
        check_length_setting(shape, value, setting)


def run_step(
    run: Run,
    cfg: PipelineConfig,
    step: Step,
    *,
    progress_factory: Callable | None = None,
    training_progress_factory: Callable | None = None,
    phase_progress: PhaseCallback | None = None,
) -> Path:
    """Run (or reuse) one stage; returns its main output."""

    r = step.round_number
    if step.stage == "prompts":
        return prompts_stage(run, cfg, round_number=r)
    if step.stage == "sample":
        with _progress(progress_factory, f"round {r}: sampling") as progress:
            return sample_stage(run, cfg, round_number=r, policy=_policy(run, cfg, r), progress=progress)
    if step.stage == "sft-data":
        return sft_data_stage(run, cfg, round_number=r)
    if step.stage == "sft":
        progress = training_progress_factory(f"round {r}: SFT") if training_progress_factory else None
        return sft_stage(run, cfg, round_number=r, base=_policy(run, cfg, r), progress=progress)
    if step.stage == "pairs":
        with _progress(progress_factory, f"round {r}: sampling the SFT model") as progress:
            return pairs_stage(run, cfg, round_number=r, progress=progress)
    if step.stage == "dpo":
        progress = training_progress_factory(f"round {r}: DPO") if training_progress_factory else None
        return dpo_stage(run, cfg, round_number=r, progress=progress, phase_progress=phase_progress)
    if step.stage == "grpo":
        progress = training_progress_factory(f"round {r}: GRPO") if training_progress_factory else None
        return grpo_stage(run, cfg, round_number=r, progress=progress)
    if step.stage == "evaluate":
        return evaluate_stage(run, cfg, round_number=r, progress=phase_progress)
    if step.stage == "report":
        return report_stage(run, cfg, round_number=r)
    raise ConfigError(f"unknown stage {step.stage!r}")


def _progress(factory, label: str):
    return factory(label) if factory else contextlib.nullcontext(None)


@dataclass
class StepResult:
    step: Step
    action: str  # "skipped" (up to date) or "ran"
    reason: str
    seconds: float
    output: Path


def run_pipeline(
    run_dir: Path | str,
    cfg: PipelineConfig | None = None,
    *,
    from_stage: str | None = None,
    until_stage: str | None = None,
    on_event: Callable[[str], None] | None = None,
    progress_factory: Callable | None = None,
    training_progress_factory: Callable | None = None,
    phase_progress: PhaseCallback | None = None,
) -> list[StepResult]:
    """Run the loop for `cfg` in `run_dir`, exactly as `selftune run` does (from a notebook too).

    `cfg`: a `PipelineConfig` (`selftune.load_config(...)`), saved as the run's config.yaml; None
    continues the run with its saved config. `on_event` hears, before each stage, whether it is
    skipped or why it runs, and after a run how long it took (default: the "selftune" logger,
    which `configure_logging` prints unless logging is already configured). `progress_factory(label)`
    gives a generation progress callback for the sampling stages, `training_progress_factory(label)`
    a transformers TrainerCallback for sft and dpo, and `phase_progress(label, done, total)` hears
    the rest (DPO's reference pass; evaluation per model, prompt set and lm-eval task); the CLI
    draws them all as rich progress bars.
    """
    configure_logging()
    if on_event is None:
        on_event = logging.getLogger("selftune.run").info
    run = Run(run_dir)
    if cfg is None:
        cfg = run.saved_config()
    if not cfg.sft.merge:
        raise ConfigError("sft.merge: false leaves DPO no merged SFT model to start from; set sft.merge: true")
    # Every model the run names is checked before anything is written (config.yaml included).

    scorer = cfg.sample.scorer
    for spec in (cfg.model.spec, scorer.judge_model, scorer.reward_model, cfg.evaluate.judge_model):
        if spec:
            check_model_spec(spec, trust_remote_code=cfg.model.trust_remote_code)
    if scorer.kind == "function":  # imported now; called on the prompts before the sample stage's model loads
        load_verifier(scorer.function)

    check_context_settings(cfg)
    load_benchmarks(cfg)  # the benchmarks' files and checkers and the lm-eval tasks, not after hours of training
    if cfg.train.launcher == "accelerate":
        check_accelerate_config(cfg.train.accelerate_config)
    decisions: list[StageEvent] = []

    def decided(event: StageEvent) -> None:
        decisions.append(event)
        label = Step(event.stage, event.round_number).label
        on_event(f"{label}: up to date, skipped" if event.action == "skip" else f"{label}: runs ({event.reason})")

    check_trackers(cfg.tracking.report_to)
    run = Run(run_dir, reuse=True, on_event=decided)
    results = []
    with run.lock(), contextlib.closing(Trackers(run, cfg)) as trackers:
        run.save_config(cfg)  # later stages and commands read it (rounds, base model)
        trackers.params(cfg.model_dump(mode="json"))
        for index, (step, forced) in enumerate(
            plan(
                cfg.rounds,
                fresh=fresh_prompts(cfg),
                grpo=cfg.grpo.enabled,
                from_stage=from_stage,
                until_stage=until_stage,
            )
        ):
            decisions.clear()
            run.reuse = not forced
            if forced:
                on_event(f"{step.label}: runs (--from {from_stage})")
            started = time.perf_counter()
            output = run_step(
                run,
                cfg,
                step,
                progress_factory=progress_factory,
                training_progress_factory=training_progress_factory,
                phase_progress=phase_progress,
            )
            seconds = time.perf_counter() - started
            skipped = bool(decisions) and decisions[-1].action == "skip"
            reason = decisions[-1].reason if decisions else f"--from {from_stage}"
            results.append(StepResult(step, "skipped" if skipped else "ran", reason, seconds, output))
            if not skipped:
                on_event(f"{step.label}: done in {seconds:.0f}s")
            trackers.stage(run, step.stage, step.round_number, index)
        trackers.params(lineage(stage_manifests(run, cfg.rounds, fresh=fresh_prompts(cfg), grpo=cfg.grpo.enabled)))
    return results
