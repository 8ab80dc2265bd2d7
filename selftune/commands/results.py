"""`selftune evaluate`, `report` and `compare`: models measured one at a time, and their results
as tables and a report."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from selftune.config import load_config
from selftune.data.records import read_records
from selftune.evaluation.options import OptionError, apply_evaluate_options
from selftune.progress import PhaseProgress, console
from selftune.reporting.tables import compare_table
from selftune.reporting.terminal import print_model_line, print_results_table, print_table
from selftune.run.folder import Run

app = typer.Typer()


@app.command(epilog="Example: `selftune evaluate runs/demo --models base,dpo`")
def evaluate(
    run_dir: Path | None = typer.Argument(None, help="Run directory: its eval prompts, held-out pairs and models."),
    models: str | None = typer.Option(
        None, "--models", help="Which of the run's models, comma-separated: base,sft,dpo,grpo."
    ),
    model: list[str] = typer.Option(
        [], "--model", help="NAME=SPEC of a model to evaluate instead (repeatable), e.g. from another run."
    ),
    prompts: Path | None = typer.Option(
        None, "--prompts", help="Prompt file (its eval split); default: the run's prompts."
    ),
    pairs: Path | None = typer.Option(None, "--pairs", help="Held-out pairs; default: the run's eval pairs."),
    reference: str | None = typer.Option(
        None, "--reference", help="NAME of the model pair margins are measured against (with --model)."
    ),
    out: Path = typer.Option(
        Path("eval"), "--out", help="Output folder with --model (a run's own evaluation stays in the run)."
    ),
    round_number: int | None = typer.Option(None, "--round", help="Round to evaluate; default: the run's last."),
    judge: bool = typer.Option(
        False, "--judge", help="Also a judge win-rate against base, positions swapped (judge loaded last, alone)."
    ),
    judge_model: str | None = typer.Option(None, "--judge-model", help="Judge model spec; default: the base model."),
    benchmark: list[str] = typer.Option(
        [],
        "--benchmark",
        help="ifeval[=PATH] or ifbench[=PATH] (repeatable): the benchmark's prompts scored by its reference checkers.",
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N prompts of each benchmark."),
    max_new_tokens: int | None = typer.Option(
        None,
        "--benchmark-max-new-tokens",
        min=1,
        help="Longest benchmark answer (default: evaluate.benchmark_max_new_tokens).",
    ),
    task: list[str] = typer.Option(
        [], "--task", help="An lm-evaluation-harness task or group (repeatable), e.g. arc_easy (extra eval)."
    ),
    num_fewshot: int | None = typer.Option(
        None, "--num-fewshot", min=0, help="lm-eval few-shot examples per request; default: each task's own."
    ),
    task_limit: float | None = typer.Option(
        None, "--task-limit", help="lm-eval documents per task: a whole number, or a share below 1."
    ),
    chat_template: bool | None = typer.Option(
        None,
        "--chat-template/--no-chat-template",
        help="lm-eval requests in the model's chat template (default: on, evaluate.lm_eval.chat_template).",
    ),
    tasks_from: Path | None = typer.Option(
        None, "--tasks-from", help="A folder of lm-eval task YAML files (tasks over your own local data)."
    ),
    verifier: str | None = typer.Option(
        None,
        "--verifier",
        help="With --model: the eval prompts judged by this verifier function too (file.py:fn, module:fn or "
        "builtin:NAME, e.g. builtin:final_number); a run uses its own scorer.",
    ),
):
    """Evaluate models one at a time: each is loaded fresh, measured, and unloaded before the next.

    Instruction following on the held-out eval prompts (prompt/instruction level, strict/loose,
    per constraint type), pair reward accuracy and margin against the SFT reference, perplexity of
    held-out chosen answers, answer length and repetition, peak memory per model; with --task,
    lm-evaluation-harness tasks in the model's chat template.
    """
    from selftune.evaluation.runner import eval_prompts, evaluate_models, parse_model_specs, write_results
    from selftune.stages.evaluate import evaluate_stage

    if run_dir is None and not model:
        raise typer.BadParameter("give a run directory, or --model NAME=SPEC with --prompts")
    if verifier and not model:
        raise typer.BadParameter("--verifier goes with --model (a run's evaluation uses the run's scorer)")
    run = Run(run_dir) if run_dir else None
    cfg = run.saved_config() if run else load_config()
    try:
        apply_evaluate_options(
            cfg,
            models=models,
            judge=judge,
            judge_model=judge_model,
            benchmarks=benchmark,
            limit=limit,
            tasks=task,
            num_fewshot=num_fewshot,
            task_limit=task_limit,
            chat_template=chat_template,
            tasks_from=tasks_from,
            max_new_tokens=max_new_tokens,
            verifier=verifier,
        )
    except OptionError as exc:
        raise typer.BadParameter(str(exc), param_hint=exc.option) from None
    round_number = round_number or cfg.rounds
    if not model:
        with run.lock():
            path = evaluate_stage(
                run, cfg, round_number=round_number, on_model=print_model_line, progress=PhaseProgress()
            )
    else:
        specs = parse_model_specs(model)
        prompts_path = prompts or (run.output_of("prompts", "prompts") if run else None)
        if prompts_path is None and not cfg.evaluate.benchmarks and not cfg.evaluate.lm_eval.tasks:
            raise typer.BadParameter("--prompts, --benchmark or --task is needed without a run")
        pairs_path = pairs or (run.optional_output("pairs", "eval_pairs", round_number=round_number) if run else None)
        results = evaluate_models(
            specs,
            eval_prompts(prompts_path, cfg.sample.scorer.kind) if prompts_path else [],
            read_records(pairs_path, "pairs") if pairs_path else [],
            cfg,
            reference=reference or specs[0][0],
            on_model=print_model_line,
            progress=PhaseProgress(),
        )
        path = write_results(out, results)
    print_results_table(json.loads(path.read_text()), "evaluation (eval split; deltas against base)")
    console.print(f"results: {path}", soft_wrap=True)


@app.command(epilog="Example: `selftune report runs/demo`")
def report(
    run_dir: Path = typer.Argument(..., help="Run directory with a completed evaluation."),
    round_number: int | None = typer.Option(
        None, "--round", help="Round whose evaluation is reported; default: the run's last."
    ),
):
    """Write report.md and a self-contained report.html (table, plots, answers side by side, lineage)."""
    from selftune.stages.report import report_stage

    run = Run(run_dir)
    cfg = run.saved_config()
    round_number = round_number or cfg.rounds
    with run.lock():
        html_path = report_stage(run, cfg, round_number=round_number)
    print_results_table(
        json.loads(run.output_of("evaluate", "results", round_number=round_number).read_text()), "summary"
    )
    console.print(f"report: {html_path}", soft_wrap=True)


@app.command(epilog="Example: `selftune compare runs/demo runs/demo-beta02`")
def compare(runs: list[Path] = typer.Argument(..., help="Two or more run directories.")):
    """One models x metrics table across runs (deltas against the first run's base model)."""

    header, rows = compare_table([Run(r) for r in runs])
    print_table(header, rows, "comparison (eval split; deltas against the first run's base)")
