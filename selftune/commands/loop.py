"""`selftune run` (the whole loop) and one command per stage: `prompts build`, `sample`,
`sft-data`, `sft`, `pairs`, `dpo`, `grpo`."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from selftune.commands.options import ConfigOption, PresetOption, SetOption, stage_command
from selftune.config import load_config
from selftune.data.records import read_records
from selftune.progress import GenerationProgress, PhaseProgress, TrainingProgress, console, err_console
from selftune.reporting.terminal import print_run_end, print_yield
from selftune.run.folder import open_run

app = typer.Typer()
prompts_app = typer.Typer(help="Build or import the prompt set.", no_args_is_help=True, rich_markup_mode="markdown")


@prompts_app.command("build", epilog="Example: `selftune prompts build --run runs/demo --preset demo`")
@stage_command(rounds=False)
def prompts_build(
    run,
    cfg,
    source: Path | None = typer.Option(
        None, "--source", help="Import prompts from this file instead of the built-in set."
    ),
):
    """Write the run's prompts: the built-in tasks x constraints set (train + held-out eval), or imported ones."""
    from selftune.stages.prompts import prompts_stage

    out = prompts_stage(run, cfg, source=source)
    metrics = run.manifest("prompts").metrics
    console.print(f"wrote {metrics['train']} train and {metrics['eval']} eval prompts to {out}", soft_wrap=True)


@app.command(epilog="Example: `selftune sample --run runs/demo`")
@stage_command()
def sample(
    run,
    cfg,
    round_number: int,
    prompts: Path | None = typer.Option(
        None, "--prompts", help="Prompt file; default: the run's prompts stage output."
    ),
    model: str | None = typer.Option(None, "--model", help="Policy spec; default: the config's model."),
):
    """The policy writes K answers per train prompt; each is scored. Prints the yield per constraint type."""
    from selftune.stages.sample import sample_stage

    prompt_count = None
    if prompts is None:
        prompt_count = sum(r.split == "train" for r in read_records(run.output_of("prompts", "prompts"), "prompts"))
    with GenerationProgress(prompt_count or 0, "sampling") as progress:
        out = sample_stage(run, cfg, round_number=round_number, prompts_path=prompts, policy=model, progress=progress)
    print_yield(run.manifest("sample", round_number).metrics)
    console.print(f"samples: {out}", soft_wrap=True)


@app.command("sft-data", epilog="Example: `selftune sft-data --run runs/demo`")
@stage_command()
def sft_data(
    run,
    cfg,
    round_number: int,
    samples: Path | None = typer.Option(
        None, "--samples", help="Samples file; default: the run's sample stage output."
    ),
    prompts: Path | None = typer.Option(
        None, "--prompts", help="Prompt file; default: the run's prompts stage output."
    ),
):
    """Keep the best passing sample per prompt as an SFT example (TRL prompt/completion format)."""
    from selftune.stages.sft_data import sft_data_stage

    out = sft_data_stage(run, cfg, round_number=round_number, samples_path=samples, prompts_path=prompts)
    m = run.manifest("sft-data", round_number).metrics
    console.print(
        f"{m['examples']} SFT examples from {m['prompts']} prompts (yield {m['yield']:.1%}; "
        f"{m['no_passing']} without a passing sample, {m['duplicates_dropped']} duplicates dropped): {out}",
        soft_wrap=True,
    )


@app.command(epilog="Example: `selftune sft --run runs/demo`")
@stage_command()
def sft(
    run,
    cfg,
    round_number: int,
    data: Path | None = typer.Option(
        None, "--data", help="SFT data (selftune or TRL format, any data file); default: the run's sft-data output."
    ),
    base: str | None = typer.Option(None, "--base", help="Base model spec; default: the config's model."),
):
    """LoRA SFT with response-only loss; resumes from its last checkpoint; merges the adapter when configured."""
    from selftune.stages.sft import sft_stage

    out = sft_stage(run, cfg, round_number=round_number, data_path=data, base=base, progress=TrainingProgress("SFT"))
    m = run.manifest("sft", round_number).metrics
    console.print(
        f"SFT: {m['steps']} steps, {m['train_examples']} examples ({m['dropped']} dropped), "
        f"{m['tokens_per_second']} tokens/s, held-out loss {m['eval_loss_before']} -> "
        f"{m['eval_loss_after']}; model: {out}",
        soft_wrap=True,
    )


@app.command(epilog="Example: `selftune pairs --run runs/demo`")
@stage_command()
def pairs(
    run,
    cfg,
    round_number: int,
    model: str | None = typer.Option(None, "--model", help="SFT model spec; default: the run's merged SFT model."),
):
    """Build preference pairs: chosen = passing answers; rejected = policy/base failures and named corruptions."""
    from selftune.stages.pairs import pairs_stage

    with GenerationProgress(0, "sampling SFT model") as progress:
        out = pairs_stage(run, cfg, round_number=round_number, policy=model, progress=progress)
    m = run.manifest("pairs", round_number).metrics
    table = Table("split", "pairs", "by negative source", "dropped")
    for split in ("train", "eval"):
        table.add_row(
            split, str(m[split]["pairs"]), escape(str(m[split]["by_source"])), escape(str(m[split]["dropped"]))
        )
    console.print(table)
    console.print(f"pairs: {out}", soft_wrap=True)


@app.command(epilog="Example: `selftune dpo --run runs/demo --set dpo.beta=0.2`")
@stage_command()
def dpo(
    run,
    cfg,
    round_number: int,
    pairs: Path | None = typer.Option(
        None, "--pairs", help="Preference pairs (selftune or TRL format); default: the run's pairs output."
    ),
    eval_pairs: Path | None = typer.Option(
        None, "--eval-pairs", help="Held-out pairs; default: the run's (none when --pairs is given)."
    ),
):
    """DPO: merge the SFT adapter, train a fresh LoRA against the merged SFT model as reference, merge it."""
    from selftune.stages.dpo import dpo_stage

    out = dpo_stage(
        run,
        cfg,
        round_number=round_number,
        pairs_path=pairs,
        eval_pairs_path=eval_pairs,
        progress=TrainingProgress("DPO"),
        phase_progress=PhaseProgress(),
    )
    m = run.manifest("dpo", round_number).metrics
    before, after = m["eval_before"], m["eval_after"]
    if after:
        console.print(
            f"held-out reward accuracy {before.get('eval_rewards/accuracies', 0):.3f} -> "
            f"{after['eval_rewards/accuracies']:.3f}, margin {before.get('eval_rewards/margins', 0):.3f} -> "
            f"{after['eval_rewards/margins']:.3f}"
        )
    for warning in m["warnings"]:
        err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    console.print(f"DPO: {m['steps']} steps, {m['tokens_per_second']} tokens/s; model: {out}", soft_wrap=True)


@app.command(epilog="Example: `selftune grpo --run runs/demo --set grpo.enabled=true`")
@stage_command()
def grpo(run, cfg, round_number: int):
    """GRPO (online RL): a fresh LoRA on the merged DPO model, trained on answers it writes while it
    trains, each rewarded by the run's scorer; merged like DPO."""
    from selftune.stages.grpo import grpo_stage

    out = grpo_stage(run, cfg, round_number=round_number, progress=TrainingProgress("GRPO"))
    m = run.manifest("grpo", round_number).metrics
    console.print(
        f"GRPO: {m['steps']} steps on {m['prompts']} prompts; reward {m.get('reward_first', 0):.3f} -> "
        f"{m.get('reward_last', 0):.3f}, pass rate {m.get('pass_rate_first') or 0:.3f} -> "
        f"{m.get('pass_rate_last') or 0:.3f}; model: {out}",
        soft_wrap=True,
    )


@app.command("run", epilog="Example: `selftune run --preset demo`")
def run_command(
    preset: str | None = PresetOption,
    config: list[Path] = ConfigOption,
    set_: list[str] = SetOption,
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Run directory; default: `runs/NAME`, NAME the config's `name` (the preset's)."
    ),
    rounds: int | None = typer.Option(
        None, "--rounds", help="Self-training rounds (round r+1 starts from round r's final model)."
    ),
    from_stage: str | None = typer.Option(None, "--from", help="Rerun from this stage on, whatever its manifest says."),
    until_stage: str | None = typer.Option(None, "--until", help="Stop after this stage."),
):
    """The whole loop: prompts, sample, sft-data, sft (+merge), pairs, dpo (+ grpo), evaluate, report.

    Stages that are complete and still valid for their inputs and config are skipped (and said
    so); a changed option reruns the stages it affects and everything downstream; an interrupted
    run continues where it stopped, training from its last checkpoint.
    """
    from selftune.pipeline import run_pipeline

    sets = [*set_, *([f"rounds={rounds}"] if rounds is not None else [])]
    if run_dir is None:
        run_dir = Path("runs") / load_config(preset, config, sets).name
    run, cfg = open_run(run_dir, preset, config, sets)
    console.print(
        f"run {run.root} ({cfg.rounds} round{'s' if cfg.rounds > 1 else ''}, model {cfg.model.spec})", soft_wrap=True
    )
    started = time.perf_counter()
    steps = run_pipeline(
        run.root,
        cfg,
        from_stage=from_stage,
        until_stage=until_stage,
        on_event=lambda line: console.print(escape(line), soft_wrap=True),
        progress_factory=lambda label: GenerationProgress(None, label),
        training_progress_factory=TrainingProgress,
        phase_progress=PhaseProgress(),
    )
    table = Table("stage", "action", "seconds", title=f"stages ({time.perf_counter() - started:.0f}s in all)")
    for step in steps:
        table.add_row(step.step.label, step.action if step.action == "ran" else "up to date", f"{step.seconds:.0f}")
    console.print(table)
    if steps and steps[-1].step.stage == "report":
        print_run_end(run, cfg, steps[-1].output)
