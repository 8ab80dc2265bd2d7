"""Stage `evaluate`: the base model and every round's SFT and DPO (and grpo) models, side by side, one model
in memory at a time (`selftune.evaluation.runner`), on the held-out eval prompts, the held-out pairs
and any configured benchmarks and lm-eval tasks.

Usage:
    selftune evaluate runs/demo                       # base, sft, dpo of the run's last round
"""

from __future__ import annotations

from pathlib import Path

from selftune.config import PipelineConfig
from selftune.data.benchmarks import parse_benchmark
from selftune.data.records import read_records
from selftune.evaluation.runner import (
    BENCHMARK_ANSWERS,
    eval_prompts,
    evaluate_models,
    load_benchmarks,
    round_references,
    write_results,
)
from selftune.generation.factory import UNHASHED_GENERATION_SETTINGS
from selftune.models import check_model_spec
from selftune.run.folder import Run
from selftune.run.spec import StageSpec
from selftune.scoring.registry import scorer_inputs


def run_models(run, base: str, round_number: int) -> list[tuple[str, str]]:
    """`base`, then each round's SFT, DPO and grpo merged models, as recorded in the run's manifests."""
    models = [("base", base)]
    for r in range(1, round_number + 1):
        suffix = "" if round_number == 1 else f"-r{r}"
        if run.manifest("sft", r) and "merged" in run.manifest("sft", r).outputs:
            models.append((f"sft{suffix}", str(run.output_of("sft", "merged", round_number=r))))
        for stage in ("dpo", "grpo"):
            if run.manifest(stage, r):
                models.append((f"{stage}{suffix}", str(run.output_of(stage, "merged", round_number=r))))
    return models


EVALUATE_STAGE = StageSpec(
    "evaluate",
    output="results",
    # Pair rewards use DPO's beta and are masked and truncated as DPO trained (max_length, separator).
    reads=(
        "evaluate",
        "sample.scorer.kind",  # a verifier function judges the eval prompts too
        "sample.scorer.function",
        "sample.scorer.pass_threshold",
        "grpo.enabled",
        "dpo.beta",
        "dpo.max_length",
        "sft.response_separator",
        "model.spec",
        "model.dtype",
        "generation.backend",
    ),
    unhashed=UNHASHED_GENERATION_SETTINGS,
)


def evaluate_stage(
    run: Run,
    cfg: PipelineConfig,
    *,
    round_number: int = 1,
    models: list[tuple[str, str]] | None = None,
    on_model=None,
    progress=None,
) -> Path:
    """Evaluate the run's models on its eval prompts and held-out pairs; writes eval/results.json."""

    cfg = EVALUATE_STAGE.view(cfg)
    prompts_path = run.output_of("prompts", "prompts", round_number=1)
    prompts = eval_prompts(prompts_path, cfg.sample.scorer.kind)
    pairs_path = run.optional_output("pairs", "eval_pairs", round_number=round_number)
    pairs = read_records(pairs_path, "pairs") if pairs_path else []
    models = models or run_models(run, cfg.model.spec, round_number)
    # The grpo models of a run with grpo enabled are evaluated like the others.
    kinds = set(cfg.evaluate.models) | ({"grpo"} if cfg.grpo.enabled else set())
    wanted = [m for m in models if m[0].split("-")[0] in kinds]
    inputs = {"prompts": prompts_path, **({"eval_pairs": pairs_path} if pairs_path else {})}
    inputs.update(scorer_inputs(cfg, prompts, prompts_path))  # an edited verifier reruns the evaluation

    for item in cfg.evaluate.benchmarks:  # a changed benchmark file reruns the evaluation
        bench, path = parse_benchmark(item)
        if path is not None:
            inputs[f"benchmark_{bench}"] = path
    benchmarks = load_benchmarks(cfg)  # benchmark files and lm-eval tasks, before the stage starts
    if cfg.evaluate.lm_eval.tasks and cfg.evaluate.lm_eval.include_path:  # a changed task file reruns it
        inputs["lm_eval_tasks"] = Path(cfg.evaluate.lm_eval.include_path).expanduser()

    for name, spec in wanted:
        check_model_spec(spec, trust_remote_code=cfg.model.trust_remote_code)
        if Path(spec).is_dir():
            inputs[f"model_{name}"] = Path(spec)
    start = run.begin(EVALUATE_STAGE, cfg, inputs=inputs, round_number=round_number, facts={"models": wanted})
    if start.reused:
        return start.reused
    with start as stage:
        references = round_references([name for name, _ in wanted])
        results = evaluate_models(
            wanted,
            prompts,
            pairs,
            cfg,
            reference=references,
            on_model=on_model,
            progress=progress,
            benchmarks=benchmarks,
        )
        stage.add_output("results", write_results(stage.dir, results))
        stage.add_output("answers", stage.dir / "answers.jsonl")
        if (stage.dir / BENCHMARK_ANSWERS).is_file():
            stage.add_output("benchmark_answers", stage.dir / BENCHMARK_ANSWERS)
        stage.metrics["prompt_strict"] = {
            n: m["instruction_following"]["prompt_strict"]
            for n, m in results["models"].items()
            if "instruction_following" in m
        }
        stage.metrics["peak_memory_gib"] = {n: m["peak_memory_gib"] for n, m in results["models"].items()}
        if "over_context_skipped" in results:
            stage.metrics["over_context_skipped"] = results["over_context_skipped"]
    return stage.dir / "results.json"
