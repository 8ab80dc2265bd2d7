"""The `selftune` command: a table of stage functions, one command each.

Usage:
    selftune --help
    selftune generate --model builtin:smollm2-135m-instruct --prompts prompts.jsonl --out out.jsonl
"""

from __future__ import annotations

import errno
import json
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column, Table

from selftune.errors import SelftuneError

app = typer.Typer(
    name="selftune",
    help="Make a language model better at following instructions by training it on its own, checked outputs.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True, rich_markup_mode="markdown")
app.add_typer(config_app, name="config")
prompts_app = typer.Typer(help="Build or import the prompt set.", no_args_is_help=True, rich_markup_mode="markdown")
app.add_typer(prompts_app, name="prompts")
inspect_app = typer.Typer(help="Look inside data and models.", no_args_is_help=True, rich_markup_mode="markdown")
app.add_typer(inspect_app, name="inspect")

# No emoji codes: data such as the negative source "corrupt:repeat:" would print as an emoji.
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)


class GenerationProgress:
    """A progress bar over prompts with a live tokens/s figure; used as a ProgressCallback."""

    def __init__(self, total_prompts: int | None, label: str = "generating"):
        self.tokens = 0
        self.started = time.perf_counter()
        self.progress = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("prompts"),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
            disable=not err_console.is_terminal,
        )
        self.task = self.progress.add_task(label, total=total_prompts, rate="")

    def __enter__(self):
        return self  # the bar starts with the first report: a stage that is skipped shows none

    def __exit__(self, *exc):
        if self.progress.live.is_started:
            self.progress.stop()

    def __call__(self, prompts_done: int, new_tokens: int) -> None:
        if not self.progress.live.is_started:
            self.progress.start()
        self.tokens += new_tokens
        elapsed = time.perf_counter() - self.started
        self.progress.update(self.task, completed=prompts_done, rate=f"{self.tokens / elapsed:.0f} tok/s")

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(time.perf_counter() - self.started, 1e-9)


class TrainingProgress:
    """A transformers TrainerCallback drawing a progress bar over optimizer steps, with the
    latest loss and the time left; nothing when the console is not a terminal (CI logs)."""

    def __init__(self, label: str, console: Console | None = None):
        self.console = console or err_console
        self.progress = Progress(
            TextColumn(f"[bold]{escape(label)}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TextColumn("{task.fields[loss]}"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.console.is_terminal,
        )
        self.task = None

    # The TrainerCallback protocol: the Trainer calls every on_* event it knows on each callback.
    def __getattr__(self, name: str):
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_train_begin(self, args, state, control, **kwargs):
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, loss="")
        self.progress.start()

    def on_step_end(self, args, state, control, **kwargs):
        self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.progress.update(self.task, loss=f"loss {logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        self.progress.update(self.task, completed=state.global_step)
        self.progress.stop()


class PhaseProgress:
    """A `PhaseCallback` (label, done, total) drawing one bar per label with the time left:
    evaluation per model and prompt set, DPO's reference pass, export. The display runs while a
    bar is unfinished and stops when all are, so a training bar can follow; nothing when the
    console is not a terminal."""

    def __init__(self, console: Console | None = None):
        self.console = console or err_console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.console.is_terminal,
        )
        self.tasks: dict[str, int] = {}

    def __call__(self, label: str, done: int, total: int | None) -> None:
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(escape(label), total=total)
            if not self.progress.live.is_started:
                self.progress.start()
        self.progress.update(self.tasks[label], completed=done, total=total)
        if all(task.finished for task in self.progress.tasks) and self.progress.live.is_started:
            self.progress.stop()


# Options shared by several commands, each defined once.
PresetOption = typer.Option(None, "--preset", help="Preset name: tiny, demo, recipe-32b.")
ConfigOption = typer.Option([], "--config", help="YAML override files, applied in order.")
SetOption = typer.Option([], "--set", help="key.path=value overrides, applied last.")
TrustRemoteCodeOption = typer.Option(
    False, "--trust-remote-code", help="Allow model code from the checkpoint; off unless you trust it."
)


def stage_command(*, rounds: bool = True):
    """A stage command's shared options, defined here once: --run, --round (when `rounds`),
    --preset, --config and --set. The decorated function takes `(run, cfg, **its own options)`
    (and `round_number`) and runs under the run's lock."""
    import functools
    import inspect

    def decorate(func):
        kind = inspect.Parameter.KEYWORD_ONLY
        own = [
            p.replace(kind=kind)
            for p in inspect.signature(func, eval_str=True).parameters.values()
            if p.name not in ("run", "cfg", "round_number")
        ]
        run_option = typer.Option(..., "--run", help="Run directory (e.g. runs/demo).")
        round_option = typer.Option(1, "--round", help="Round number.")
        parameters = [
            inspect.Parameter("run_dir", kind, annotation=Path, default=run_option),
            *own,
            *([inspect.Parameter("round_number", kind, annotation=int, default=round_option)] if rounds else []),
            inspect.Parameter("preset", kind, annotation=str | None, default=PresetOption),
            inspect.Parameter("config", kind, annotation=list[Path], default=ConfigOption),
            inspect.Parameter("set_", kind, annotation=list[str], default=SetOption),
        ]

        @functools.wraps(func)
        def command(*, run_dir: Path, preset=None, config=(), set_=(), **options):
            run, cfg = open_run(run_dir, preset, list(config), list(set_))
            with run.lock():
                run.save_config_on_start(cfg)
                return func(run, cfg, **options)

        command.__signature__ = inspect.Signature(parameters)
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        del command.__wrapped__  # typer reads __signature__, not the wrapped function's
        return command

    return decorate


@app.command(
    epilog="Example: `selftune generate --model builtin:smollm2-135m-instruct --prompts "
    "examples/prompts.jsonl --out answers.jsonl -n 2 --temperature 0.8`"
)
def generate(
    model: str = typer.Option(
        ..., "--model", help="Model spec: builtin:NAME, a .gguf file, a checkpoint dir or a hub id."
    ),
    prompts: Path = typer.Option(
        ..., "--prompts", help="JSONL rows with `id` and either `prompt` (raw text) or `messages`."
    ),
    out: Path = typer.Option(..., "--out", help="Output JSONL: one row per answer."),
    n: int = typer.Option(1, "-n", min=1, help="Answers per prompt."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.01, max=1.0, help="Nucleus sampling mass (0.01 to 1)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Longest answer in tokens."),
    batch_size: int = typer.Option(
        32, "--batch-size", min=1, help="Sequences per forward pass (slots of the continuous engine)."
    ),
    seed: int = typer.Option(0, "--seed", help="Sampling seed; each answer's seed derives from it."),
    backend: str = typer.Option(
        "auto",
        "--backend",
        help="auto (vllm where it is installed and usable, else continuous), continuous, hf or vllm.",
    ),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16."),
    replicas: int = typer.Option(
        1,
        "--replicas",
        min=1,
        help="Copies of the model in child processes, each answering a share of the prompts: one per "
        "GPU (--tensor-parallel-size GPUs each with vLLM), or the CPU cores split between them.",
    ),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", min=1, help="GPUs per vLLM engine."),
    show: bool = typer.Option(False, "--show", help="Also print the answers."),
    trust_remote_code: bool = TrustRemoteCodeOption,
):
    """Answer every prompt of a JSONL file with a model.

    Output rows: `id`, `sample_index`, `response`, `model`, `finish_reason` (stop or length),
    `prompt_tokens`, `completion_tokens`, `seed`. This interface is stable for other tools.

    Reproducibility: with the continuous and hf backends each answer is sampled from its own seed
    (from --seed, the prompt text and the sample index), so the same inputs give the same answers
    on the same machine whatever the batch size or the other prompts; the two backends agree.
    The answers are the same with any --replicas. vLLM seeds per request but its batching can
    change low-order bits, so its answers may differ between batch sizes.
    """
    from selftune.generation import SamplingParams, check_backend, open_generator
    from selftune.models import check_model_spec, resolve_dtype
    from selftune.records import read_records
    from selftune.runs import write_jsonl

    # Everything is checked before a model loads: options, the output path, every prompt row.
    check_backend(backend)
    if dtype != "auto":
        resolve_dtype(dtype, "cpu")
    if out.is_dir():
        raise typer.BadParameter(f"{out} is a folder; give the path of the JSONL file to write", param_hint="--out")
    rows = read_records(prompts, "generate")
    check_model_spec(model, trust_remote_code=trust_remote_code)
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    inputs = [row.prompt if row.prompt is not None else [m.model_dump() for m in row.messages] for row in rows]
    with open_generator(
        model,
        backend=backend,
        batch_size=batch_size,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        tensor_parallel_size=tensor_parallel_size,
        replicas=replicas,
    ) as generator:
        with GenerationProgress(len(inputs)) as progress:
            answers = generator.generate(inputs, params, progress=progress)
    records = [
        {
            "id": row.id,
            "sample_index": c.sample_index,
            "response": c.text,
            "model": model,
            "finish_reason": c.finish_reason,
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "seed": c.seed,
        }
        for row, completions in zip(rows, answers)
        for c in completions
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out, records)
    if show:
        table = Table("id", "answer", "finish", show_lines=True)
        for record in records:
            table.add_row(record["id"], record["response"], record["finish_reason"])
        console.print(table)
    console.print(
        f"wrote {len(records)} answers to {out} ({progress.tokens} tokens, {progress.tokens_per_second:.0f} tokens/s)"
    )


@app.command(epilog="Example: `selftune validate data/pairs.jsonl --kind pairs`")
def validate(
    file: Path = typer.Argument(..., help="JSONL file to check."),
    kind: str = typer.Option(..., "--kind", help="prompts, samples, sft, pairs or generate."),
):
    """Check a JSONL file against its record schema; print `file:line: field: problem` for each bad line."""
    from selftune.records import KINDS, read_records

    if kind not in KINDS:
        raise typer.BadParameter(f"{kind!r} is not a kind; choose from {', '.join(KINDS)}", param_hint="--kind")
    records = read_records(file, kind)
    console.print(f"{file}: {len(records)} valid {kind} records", soft_wrap=True)


@config_app.command("show", epilog="Example: `selftune config show --preset recipe-32b --set dpo.beta=0.2`")
def config_show(
    preset: str | None = typer.Option(None, "--preset", help="Preset name (see `selftune config presets`)."),
    config: list[Path] = typer.Option([], "--config", help="YAML override files, applied in order."),
    set_: list[str] = typer.Option([], "--set", help="key.path=value overrides, applied last."),
):
    """Print the fully resolved config as YAML."""
    from selftune.config import dump_config, load_config

    console.print(dump_config(load_config(preset, config, set_)), end="", markup=False, highlight=False)


@config_app.command("presets", epilog="Example: `selftune config presets`")
def config_presets():
    """List the shipped presets."""
    from selftune.config import preset_names, preset_path

    for name in preset_names():
        first = preset_path(name).read_text().splitlines()[0].lstrip("# ")
        console.print(f"[bold]{name}[/bold]: {first}")


@app.command(epilog="Example: `selftune doctor`")
def doctor():
    """Report Python, torch and device, measured bf16 vs fp32 matmul speed, optional extras, cache and free disk."""
    from selftune.doctor import collect

    table = Table("item", "finding", title="selftune doctor")
    for item, finding in collect():
        table.add_row(item, escape(finding))
    console.print(table)


def open_run(run_dir: Path, preset: str | None, files: list[Path], sets: list[str]):
    """The run and its config: the run's saved config.yaml unless options are given, in which
    case they are resolved over it. Nothing is written here: the config is saved under the run's
    lock (a refused second writer must not change it)."""
    from selftune.config import load_config
    from selftune.runs import Run

    run = Run(run_dir)
    saved = run.root / "config.yaml"
    if saved.is_file() and not (preset or files or sets):
        return run, run.saved_config()
    if saved.is_file() and not preset:
        cfg = load_config(files=[saved, *files], overrides=sets)
    else:
        cfg = load_config(preset, files, sets)
    return run, cfg


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
    from selftune.prompts import prompts_stage

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
    from selftune.sample import sample_stage

    prompt_count = None
    if prompts is None:
        from selftune.records import read_records

        prompt_count = sum(r.split == "train" for r in read_records(run.output_of("prompts", "prompts"), "prompts"))
    with GenerationProgress(prompt_count or 0, "sampling") as progress:
        out = sample_stage(run, cfg, round_number=round_number, prompts_path=prompts, policy=model, progress=progress)
    print_yield(run.manifest("sample", round_number).metrics)
    console.print(f"samples: {out}", soft_wrap=True)


def print_yield(metrics: dict) -> None:
    table = Table("constraint type", "checks", "pass rate", title="sample pass rate per constraint type")
    for name, rate in metrics["pass_rate_by_type"].items():
        table.add_row(name, str(metrics["checks_by_type"][name]), f"{rate:.1%}")
    console.print(table)
    console.print(
        f"prompts {metrics['prompts']}, samples {metrics['samples']}, sample pass rate "
        f"{metrics['sample_pass_rate']:.1%}, yield (prompts with a passing sample) {metrics['yield']:.1%}; "
        f"best score per prompt: {metrics['best_score_distribution']}"
    )


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
    from selftune.sft_data import sft_data_stage

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
    from selftune.sft import sft_stage

    out = sft_stage(run, cfg, round_number=round_number, data_path=data, base=base, progress=TrainingProgress("SFT"))
    m = run.manifest("sft", round_number).metrics
    console.print(
        f"SFT: {m['steps']} steps, {m['train_examples']} examples ({m['dropped']} dropped), "
        f"{m['tokens_per_second']} tokens/s, held-out loss {m['eval_loss_before']} -> "
        f"{m['eval_loss_after']}; model: {out}",
        soft_wrap=True,
    )


@app.command(
    epilog="Example: `selftune merge --base builtin:smollm2-135m-instruct --adapter "
    "runs/demo/round-1/sft/adapter --out merged/`"
)
def merge(
    base: str = typer.Option(..., "--base", help="Base model spec the adapter was trained on."),
    adapter: Path = typer.Option(..., "--adapter", help="LoRA adapter directory."),
    out: Path = typer.Option(..., "--out", help="Where to write the merged model (safetensors)."),
    trust_remote_code: bool = TrustRemoteCodeOption,
):
    """Merge a LoRA adapter into its base; checks merged logits against base + adapter first."""
    from selftune.merge import merge_adapter

    result = merge_adapter(base, adapter, out, trust_remote_code=trust_remote_code)
    console.print(f"merged into {result.path} (max logit difference {result.max_logit_diff:.2e})", soft_wrap=True)


@inspect_app.command(
    "masks",
    epilog="Example: `selftune inspect masks --data runs/demo/round-1/sft-data/sft.jsonl --model "
    "builtin:smollm2-135m-instruct -n 3`",
)
def inspect_masks(
    data: Path = typer.Option(..., "--data", help="SFT JSONL (prompt/completion)."),
    model: str = typer.Option(..., "--model", help="Model spec whose tokenizer and template are used."),
    n: int = typer.Option(3, "-n", min=1, help="Examples to show."),
    max_length: int | None = typer.Option(None, "--max-length", min=8, help="Truncate like training would."),
    separator: str = typer.Option("\nResponse:", "--separator", help="Response separator for raw-text models."),
    trust_remote_code: bool = TrustRemoteCodeOption,
):
    """Show examples token by token with the trained tokens highlighted (green) and masked ones dim."""
    from rich.text import Text

    from selftune.masking import IGNORE_INDEX, tokenize_example
    from selftune.models import load_tokenizer
    from selftune.records import read_records

    records = read_records(data, "sft")  # the whole file is checked before the tokenizer loads
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    for record in records[:n]:
        example = {
            "prompt": [m.model_dump() for m in record.prompt],
            "completion": [m.model_dump() for m in record.completion],
        }
        row = tokenize_example(
            tokenizer, example, max_length=max_length, response_separator=None if tokenizer.chat_template else separator
        )
        text = Text()
        for token, label in zip(row["input_ids"], row["labels"]):
            piece = tokenizer.decode([token], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            text.append(piece, style="bold black on green" if label != IGNORE_INDEX else "dim")
        trained = sum(label != IGNORE_INDEX for label in row["labels"])
        console.rule(f"{record.id}: {trained} of {len(row['input_ids'])} tokens trained")
        console.print(text)


@inspect_app.command("types", epilog="Example: `selftune inspect types runs/demo`")
def inspect_types(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    round_number: int = typer.Option(1, "--round", help="Round whose samples, SFT data and pairs are counted."),
):
    """Per constraint type: base sample pass rate, SFT examples and pairs carrying it, and every
    evaluated model's held-out pass rate, as a markdown table (the diagnosis of docs/gain.md)."""
    from selftune.diagnosis import markdown, type_table
    from selftune.runs import Run

    run = Run(run_dir)
    last = run.saved_config().rounds  # evaluate runs once, in the last round
    console.print(
        markdown(*type_table(run, round_number, eval_round=last)), markup=False, highlight=False, soft_wrap=True
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
    from selftune.pairs import pairs_stage

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
    from selftune.dpo import dpo_stage

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


def print_results_table(results: dict, title: str) -> None:
    from selftune.report import noise_table, summary_table

    print_table(*summary_table(results), title)
    header, rows = noise_table(results)
    if rows:
        print_table(
            header,
            rows,
            "prompt-level strict gain vs base, with its noise (IFEval-style eval prompts; benchmarks by name)",
            transpose=False,
        )


def print_table(header: list[str], rows: list[list[str]], title: str, transpose: bool = True) -> None:
    if not transpose:
        table = Table(*header, title=title)
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))
        console.print(table)
        return
    # Metrics down, models across: fits a terminal however many metrics there are.
    # The metric names stay on one line: a wrapped "IFEval-style prompt strict" is hard to read.
    table = Table(Column("metric", no_wrap=True), *(escape(row[0]) for row in rows), title=title)
    for k, metric in enumerate(header[1:], start=1):
        table.add_row(escape(metric), *(escape(row[k]) for row in rows))
    console.print(table)


@app.command(epilog="Example: `selftune evaluate runs/demo --models base,dpo`")
def evaluate(
    run_dir: Path | None = typer.Argument(None, help="Run directory: its eval prompts, held-out pairs and models."),
    models: str | None = typer.Option(
        None, "--models", help="Which of the run's models, comma-separated: base,sft,dpo."
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
):
    """Evaluate models one at a time: each is loaded fresh, measured, and unloaded before the next.

    Instruction following on the held-out eval prompts (prompt/instruction level, strict/loose,
    per constraint type), pair reward accuracy and margin against the SFT reference, perplexity of
    held-out chosen answers, answer length and repetition, peak memory per model; with --task,
    lm-evaluation-harness tasks in the model's chat template.
    """
    from selftune.config import load_config
    from selftune.evaluate import eval_prompts, evaluate_models, evaluate_stage, parse_model_specs, write_results
    from selftune.records import read_records
    from selftune.runs import Run

    if run_dir is None and not model:
        raise typer.BadParameter("give a run directory, or --model NAME=SPEC with --prompts")
    run = Run(run_dir) if run_dir else None
    cfg = run.saved_config() if run else load_config()
    if models is not None:  # checked before anything runs: a typo must not rewrite a finished evaluation
        from selftune.config import EVALUATED_MODELS

        names = [name.strip() for name in models.split(",") if name.strip()]
        unknown = [name for name in names if name not in EVALUATED_MODELS]
        if unknown or not names:
            raise typer.BadParameter(
                f"unknown model name(s) {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(EVALUATED_MODELS)}",
                param_hint="--models",
            )
        cfg.evaluate.models = names
    if judge or judge_model:
        cfg.evaluate.judge, cfg.evaluate.judge_model = True, judge_model or cfg.evaluate.judge_model
    if benchmark:
        from selftune.benchmarks import parse_benchmark

        for item in benchmark:
            try:
                parse_benchmark(item)
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--benchmark") from None
        cfg.evaluate.benchmarks = benchmark
    if limit is not None:
        cfg.evaluate.benchmark_limit = limit
    lm_eval = {
        "tasks": task or None,
        "num_fewshot": num_fewshot,
        "limit": task_limit,
        "chat_template": chat_template,
        "include_path": str(tasks_from) if tasks_from else None,
    }
    for key, value in lm_eval.items():
        if value is not None:
            try:
                setattr(cfg.evaluate.lm_eval, key, value)
            except ValueError as exc:  # pydantic's ValidationError: the field's own message
                problem = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
                raise typer.BadParameter(problem, param_hint=f"evaluate.lm_eval.{key}") from None
    if max_new_tokens is not None:
        cfg.evaluate.benchmark_max_new_tokens = max_new_tokens
    round_number = round_number or cfg.rounds

    def announce(name: str, metrics: dict) -> None:
        scores = [
            f"{label} prompt-level strict {values['prompt_strict']:.3f}"
            for label, values in (
                [("IFEval-style", metrics["instruction_following"])] if "instruction_following" in metrics else []
            )
            + list(metrics.get("benchmarks", {}).items())
        ]
        console.print(
            f"{name}: "
            + ", ".join(scores)
            + ", "
            + (f"peak {metrics['peak_memory_gib']:.2f} GiB, " if metrics["peak_memory_gib"] is not None else "")
            + f"{metrics['seconds']:.0f}s"
            + (" (answers from cache)" if metrics.get("answers_from_cache") else ""),
            soft_wrap=True,
        )

    if not model:
        with run.lock():
            path = evaluate_stage(run, cfg, round_number=round_number, on_model=announce, progress=PhaseProgress())
    else:
        specs = parse_model_specs(model)
        prompts_path = prompts or (run.output_of("prompts", "prompts") if run else None)
        if prompts_path is None and not cfg.evaluate.benchmarks and not cfg.evaluate.lm_eval.tasks:
            raise typer.BadParameter("--prompts, --benchmark or --task is needed without a run")
        pairs_path = pairs or (run.optional_output("pairs", "eval_pairs", round_number=round_number) if run else None)
        pair_records = read_records(pairs_path, "pairs") if pairs_path else []
        results = evaluate_models(
            specs,
            eval_prompts(prompts_path) if prompts_path else [],
            pair_records,
            cfg,
            reference=reference or specs[0][0],
            on_model=announce,
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
    from selftune.report import report_stage
    from selftune.runs import Run

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
    from selftune.report import compare_table
    from selftune.runs import Run

    header, rows = compare_table([Run(r) for r in runs])
    print_table(header, rows, "comparison (eval split; deltas against the first run's base)")


@app.command(epilog="Example: `selftune export runs/demo --to gguf --quant q8_0`")
def export(
    run_dir: Path = typer.Argument(..., help="Run directory with a trained model."),
    model: str = typer.Option("dpo", "--model", help="dpo or sft (the last round's), or ROUND/NAME, e.g. 1/sft."),
    to: str = typer.Option(..., "--to", help="gguf (one file for llama.cpp, ollama, LM Studio) or hf (a folder)."),
    out: Path | None = typer.Option(
        None, "--out", help="Output file or folder; default: RUN/export/NAME.gguf or NAME-hf."
    ),
    quant: str = typer.Option("f32", "--quant", help="GGUF weights: f32, f16 or q8_0."),
    push: str | None = typer.Option(None, "--push", help="With --to hf: upload the folder to this Hub repo id."),
    check: bool = typer.Option(True, "--check/--no-check", help="GGUF: load it back and compare greedy answers."),
):
    """Export a run's merged model: a GGUF file, or a Hugging Face folder with a model card."""
    from selftune.export import QUANTS, check_gguf, model_card, push_folder, run_model, write_gguf, write_hf
    from selftune.runs import Run

    if to not in ("gguf", "hf"):
        raise typer.BadParameter(f"{to!r}: choose gguf or hf", param_hint="--to")
    if quant not in QUANTS:
        raise typer.BadParameter(f"{quant!r}: choose {', '.join(QUANTS)}", param_hint="--quant")
    if push and to != "hf":
        raise typer.BadParameter("--push needs --to hf", param_hint="--push")
    run = Run(run_dir)
    name, model_dir = run_model(run, model)
    started = time.perf_counter()
    if to == "gguf":
        path = write_gguf(model_dir, out or run.root / "export" / f"{name}-{quant}.gguf", quant, PhaseProgress())
        console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - started:.0f}s)")
        if check:
            result = check_gguf(path, model_dir, progress=PhaseProgress())
            console.print(
                f"loaded back with transformers: {result.identical} of {result.prompts} greedy answers identical "
                f"to the merged model's; first: {escape(result.first_answer)!r}",
                soft_wrap=True,
            )
        return
    path = write_hf(model_dir, out or run.root / "export" / f"{name}-hf", model_card(run, name, model_dir))
    console.print(f"wrote {path} (model card {path / 'README.md'})", soft_wrap=True)
    if push:
        console.print(f"pushed: {push_folder(path, push)}", soft_wrap=True)


@app.command("run", epilog="Example: `selftune run --preset demo`")
def run_command(
    preset: str | None = PresetOption,
    config: list[Path] = ConfigOption,
    set_: list[str] = SetOption,
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Run directory; default: runs/<config name>."),
    rounds: int | None = typer.Option(
        None, "--rounds", help="Self-training rounds (round r+1 starts from round r's DPO model)."
    ),
    from_stage: str | None = typer.Option(None, "--from", help="Rerun from this stage on, whatever its manifest says."),
    until_stage: str | None = typer.Option(None, "--until", help="Stop after this stage."),
):
    """The whole loop: prompts, sample, sft-data, sft (+merge), pairs, dpo, evaluate, report.

    Stages that are complete and still valid for their inputs and config are skipped (and said
    so); a changed option reruns the stages it affects and everything downstream; an interrupted
    run continues where it stopped, training from its last checkpoint.
    """
    from selftune.config import load_config
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
        from selftune.report import evaluation_of, side_by_side

        results, answers, prompts = evaluation_of(run, cfg.rounds)
        for example in side_by_side(answers, prompts, count=1):
            console.rule(f"held-out prompt {example['prompt_id']}")
            console.print(escape(example["prompt"]), soft_wrap=True)
            for name, answer in example["answers"].items():
                console.print(f"[bold]{escape(name)}:[/bold] {escape(answer)}", soft_wrap=True)
        print_results_table(results, "summary (eval split; deltas against base)")
        from selftune.diagnosis import data_mix

        for line in data_mix(run, cfg.rounds):
            console.print(escape(line), soft_wrap=True)
        console.print(f"report: {steps[-1].output}", soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """The console entry point: `argv` defaults to the process's arguments. A SelftuneError, an
    interrupt or a machine failure (disk full) ends in one sentence and a non-zero exit status."""
    from rich.logging import RichHandler

    from selftune.pipeline import configure_logging

    # Stage modules log what people should see (a resumed checkpoint, a drift warning) under "selftune".
    configure_logging(RichHandler(console=err_console, show_time=False, show_path=False))
    try:
        app(args=argv, prog_name="selftune")
    except SelftuneError as exc:
        fail(str(exc))
    except SystemExit as exc:
        if exc.code == 130:  # typer's exit for Ctrl-C (KeyboardInterrupt); it prints nothing
            # The stage's manifest already says it stopped; finished stages and checkpoints are kept.
            fail("interrupted; run the same command again to continue where it stopped", status=130)
        raise
    except Exception as exc:
        problem = system_problem(exc)
        if problem is None:
            raise
        fail(f"{problem}. Finished stages are kept; fix it and run the same command again.")


# Failures of the machine rather than of selftune or its input, said in a sentence: a traceback
# would suggest a bug. Anything else still raises.
SYSTEM_PROBLEMS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENAMETOOLONG: "a file name is too long",
}


def system_problem(exc: BaseException) -> str | None:
    """A sentence for a failure of the machine (disk full, permissions) anywhere in `exc`'s
    chain, or None. Libraries written in Rust (tokenizers, safetensors) report an OS error as a
    plain exception holding the OS's text, so that text is recognised too."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in SYSTEM_PROBLEMS:
            where = f" ({exc.filename})" if exc.filename else ""
            return f"{SYSTEM_PROBLEMS[exc.errno]}{where}: {exc.strerror}"
        for code, sentence in SYSTEM_PROBLEMS.items():
            if f"(os error {code})" in str(exc):
                return f"{sentence}: {str(exc).strip().splitlines()[-1]}"
        exc = exc.__cause__ or exc.__context__
    return None


def fail(message: str, status: int = 1) -> None:
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
