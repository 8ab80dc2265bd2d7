"""Stage `sample`: the policy writes K answers per train prompt; a scorer checks each.

In round 1 the policy is the base model, so the first SFT data is written by the real model
(rejection sampling), never by templates. Output `samples.jsonl` (one row per answer) and a
manifest with yield statistics: pass rate per constraint type, prompt-level pass rate, share of
prompts with at least one passing answer, and the distribution of per-prompt best scores.

Usage:
    selftune sample --run runs/demo                 # prompts from the run's lineage
    selftune sample --run runs/x --prompts p.jsonl --model path/to/model

    from selftune.stages.sample import sample_stage
    path = sample_stage(run, cfg)                    # generator= to inject a mock in tests
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import defaultdict
from pathlib import Path

from selftune.config import PipelineConfig
from selftune.data.early_rejection import EarlyRejection
from selftune.data.pairs import prompt_messages
from selftune.data.prompts import answer_budgets, scorable_train_prompts
from selftune.data.records import PromptRecord, SampleRecord
from selftune.generation.budget import generate_with_budgets
from selftune.generation.factory import (
    UNHASHED_GENERATION_SETTINGS,
    generates_in_children,
    open_configured,
    sampling_params,
)
from selftune.generation.preflight import check_stage_prompts, generation_estimate
from selftune.generation.types import Generator, ProgressCallback
from selftune.models import check_model_spec, default_device, peak_memory_bytes, reset_peak_memory
from selftune.run.files import write_jsonl
from selftune.run.folder import Run
from selftune.run.plan import prompts_round
from selftune.run.spec import StageSpec
from selftune.scoring.base import Scorer
from selftune.scoring.registry import make_scorer, score_samples, scorer_inputs


def retry_unsolved(
    gen: Generator,
    scorer: Scorer,
    prompts: list[PromptRecord],
    rows: list[SampleRecord],
    cfg,
    model_name: str,
    metrics: dict,
    progress: ProgressCallback | None = None,
) -> list[SampleRecord]:
    """Difficulty-aware sampling: in each of `sample.retry_rounds` rounds, only the prompts with no
    passing answer yet get `sample.retry_k` more answers (new seeds, sample indices after the ones
    already drawn), so the budget goes where data is missing rather than to prompts already solved.
    Early rejection applies to every retry answer: a repair can already use the first whole one."""
    threshold = cfg.sample.scorer.pass_threshold
    solved = {r.prompt_id for r in rows if r.score >= threshold}
    next_index = cfg.sample.k
    added: list[SampleRecord] = []
    per_round = []
    for extra in range(1, cfg.sample.retry_rounds + 1):
        todo = [p for p in prompts if p.id not in solved]
        if not todo:
            break
        params = sampling_params(cfg, n=cfg.sample.retry_k, seed=cfg.sample.seed + 7919 * extra)
        stop_when = (
            EarlyRejection(todo, 0) if cfg.sample.early_rejection and cfg.sample.scorer.kind == "constraints" else None
        )
        answers = generate_with_budgets(
            gen, [prompt_messages(p) for p in todo], params, budgets(todo, cfg), progress=progress, stop_when=stop_when
        )
        answers = [[dataclasses.replace(c, sample_index=next_index + c.sample_index) for c in row] for row in answers]
        new = score_samples(todo, answers, scorer, model_name)
        newly = {r.prompt_id for r in new if r.score >= threshold}
        per_round.append({"prompts": len(todo), "newly_solved": len(newly)})
        solved |= newly
        added += new
        next_index += cfg.sample.retry_k
    metrics["retry_rounds"] = per_round
    return added


def yield_stats(prompts: list[PromptRecord], rows: list[SampleRecord], threshold: float = 1.0) -> dict:
    """Pass rate per constraint type, prompt-level pass rate, yield and best-score distribution."""
    by_type: dict[str, list[bool]] = defaultdict(list)
    best: dict[str, float] = {}
    passing: set[str] = set()
    for row in rows:
        for key, value in row.checks.items():
            if isinstance(value, bool):
                by_type[key.split("#")[0]].append(value)
        best[row.prompt_id] = max(best.get(row.prompt_id, 0.0), row.score)
        if row.score >= threshold:
            passing.add(row.prompt_id)
    bins = {"0": 0, "(0,0.5)": 0, "[0.5,1)": 0, "1": 0}
    for prompt in prompts:
        value = best.get(prompt.id, 0.0)
        bins["0" if value == 0 else "(0,0.5)" if value < 0.5 else "[0.5,1)" if value < 1 else "1"] += 1
    return {
        "prompts": len(prompts),
        "samples": len(rows),
        "sample_pass_rate": round(sum(r.score >= threshold for r in rows) / max(len(rows), 1), 4),
        "yield": round(len(passing) / max(len(prompts), 1), 4),
        "pass_rate_by_type": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_type.items())},
        "checks_by_type": {k: len(v) for k, v in sorted(by_type.items())},
        "best_score_distribution": bins,
        "truncated": sum(getattr(r, "finish_reason", None) == "length" for r in rows),
        "rejected_early": sum(getattr(r, "finish_reason", None) == "rejected" for r in rows),
        "completion_tokens": sum(getattr(r, "completion_tokens", 0) or 0 for r in rows),
    }


SAMPLE_STAGE = StageSpec(
    "sample",
    output="samples",
    reads=(
        "sample",
        "model.spec",
        "model.dtype",
        "generation.backend",
        "generation.max_new_tokens",
        "generation.max_new_tokens_cap",
    ),
    # Which round's prompts are read is recorded with them (the inputs' sha256).
    unhashed=(*UNHASHED_GENERATION_SETTINGS, "prompts.fresh_each_round", "prompts.source"),
)


def budgets(prompts: list[PromptRecord], cfg) -> list[int]:
    """Each prompt's answer budget (the length it asks for, within the generation settings)."""
    return answer_budgets(prompts, cfg.generation.max_new_tokens, cfg.generation.max_new_tokens_cap)


def sample_stage(
    run: Run,
    cfg: PipelineConfig,
    *,
    round_number: int = 1,
    prompts_path: Path | None = None,
    policy: str | None = None,
    generator: Generator | None = None,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write `samples.jsonl` (answers to the train prompts) for one round; returns its path."""
    cfg = SAMPLE_STAGE.view(cfg)
    if prompts_path is None:
        prompts_path = run.output_of("prompts", "prompts", round_number=prompts_round(cfg, round_number))
    prompts = scorable_train_prompts(prompts_path, cfg.sample.scorer.kind)
    policy = policy or cfg.model.spec
    inputs = {"prompts": prompts_path, **scorer_inputs(cfg, prompts, prompts_path)}
    if Path(policy).is_dir():
        inputs["policy"] = Path(policy)
    params = sampling_params(cfg, n=cfg.sample.k, seed=cfg.sample.seed)
    fit = None
    if generator is None:
        check_model_spec(policy, trust_remote_code=cfg.model.trust_remote_code)
        messages = [prompt_messages(p) for p in prompts]
        fit = check_stage_prompts(policy, messages, [p.id for p in prompts], budgets(prompts, cfg), cfg, "sample")
        prompts = [prompts[k] for k in fit.kept]
    start = run.begin(SAMPLE_STAGE, cfg, inputs=inputs, round_number=round_number, facts={"policy": policy})
    if start.reused:
        return start.reused
    estimate = generation_estimate(policy, cfg, fit, cfg.sample.k) if fit and not generates_in_children(cfg) else None
    with start as stage:
        if fit and fit.skipped:
            stage.metrics.update(fit.record())
        reset_peak_memory(default_device())
        opened = contextlib.nullcontext(generator) if generator else open_configured(policy, cfg)
        stop_when = None
        if cfg.sample.early_rejection and cfg.sample.scorer.kind == "constraints":
            stop_when = EarlyRejection(prompts, cfg.sample.full_samples, cfg.sample.k)
        with opened as gen:
            started = time.perf_counter()
            messages = [prompt_messages(p) for p in prompts]
            answers = generate_with_budgets(
                gen, messages, params, budgets(prompts, cfg), progress=progress, stop_when=stop_when
            )
            with make_scorer(cfg, gen) as scorer:
                rows = score_samples(prompts, answers, scorer, policy)
                if cfg.sample.retry_rounds:
                    rows += retry_unsolved(gen, scorer, prompts, rows, cfg, policy, stage.metrics, progress)
            stage.metrics["generation_seconds"] = round(time.perf_counter() - started, 1)
        if estimate:  # the estimate beside this process's measured peak
            peak = round(peak_memory_bytes(default_device()) / 2**30, 3)
            stage.metrics["memory"] = {**estimate.record(), "peak_gib": peak}
        out = stage.dir / "samples.jsonl"
        write_jsonl(out, rows)
        stage.add_output("samples", out)
        stage.metrics.update(yield_stats(prompts, rows, cfg.sample.scorer.pass_threshold))
    return out
