"""The tools around the loop: `generate` (answer a JSONL file), `validate`, `config show|presets`,
`doctor`, `merge`, `inspect masks|types` and `export`."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from selftune.commands.options import TrustRemoteCodeOption
from selftune.config import dump_config, load_config, preset_names, preset_path
from selftune.data.records import KINDS, read_records
from selftune.progress import GenerationProgress, PhaseProgress, console
from selftune.reporting.by_type import markdown, type_table
from selftune.reporting.terminal import print_masks
from selftune.run.folder import Run

app = typer.Typer()
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True, rich_markup_mode="markdown")
inspect_app = typer.Typer(help="Look inside data and models.", no_args_is_help=True, rich_markup_mode="markdown")


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
    over_context: str = typer.Option(
        "error",
        "--over-context",
        help="A prompt whose tokens plus --max-new-tokens exceed the model's context window: error "
        "(before any weights load) or skip (left out and counted).",
    ),
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
    from selftune.generate import OutputIsAFolderError, answer_file
    from selftune.generation.preflight import OVER_CONTEXT
    from selftune.generation.types import SamplingParams

    if over_context not in OVER_CONTEXT:
        raise typer.BadParameter(f"must be one of {', '.join(OVER_CONTEXT)}", param_hint="--over-context")
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    bars: list[GenerationProgress] = []  # made once the model has loaded, as its tokens/s should be

    def started(total: int) -> GenerationProgress:
        # Said off a terminal too, where the bar is not drawn: a long job is never silent.
        console.print(
            f"generating {total * n} answers to {total} prompts with {model} (up to {max_new_tokens} new tokens each)",
            soft_wrap=True,
        )
        bars.append(GenerationProgress(total))
        bars[-1].begin()
        return bars[-1]

    try:
        records, fit = answer_file(
            model,
            prompts,
            out,
            params,
            backend=backend,
            batch_size=batch_size,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size,
            replicas=replicas,
            over_context=over_context,
            progress=started,
        )
    except OutputIsAFolderError as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from None
    if show:
        table = Table("id", "answer", "finish", show_lines=True)
        for record in records:
            table.add_row(record["id"], record["response"], record["finish_reason"])
        console.print(table)
    tokens, rate = (bars[0].tokens, bars[0].tokens_per_second) if bars else (0, 0.0)
    if fit.skipped:
        console.print(
            f"skipped {len(fit.skipped)} prompts over the model's context window with their answer budget: "
            + ", ".join(f"{name} ({tokens_in} tokens)" for name, tokens_in, _ in fit.skipped[:10])
            + (", ..." if len(fit.skipped) > 10 else ""),
            soft_wrap=True,
        )
    console.print(f"wrote {len(records)} answers to {out} ({tokens} tokens, {rate:.0f} tokens/s)", soft_wrap=True)


@app.command(epilog="Example: `selftune validate data/pairs.jsonl --kind pairs`")
def validate(
    file: Path = typer.Argument(..., help="JSONL file to check."),
    kind: str = typer.Option(..., "--kind", help="prompts, samples, sft, pairs or generate."),
):
    """Check a JSONL file against its record schema; print `file:line: field: problem` for each bad line."""

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

    console.print(dump_config(load_config(preset, config, set_)), end="", markup=False, highlight=False)


@config_app.command("presets", epilog="Example: `selftune config presets`")
def config_presets():
    """List the shipped presets."""

    for name in preset_names():
        first = preset_path(name).read_text().splitlines()[0].lstrip("# ")
        console.print(f"[bold]{name}[/bold]: {first}")


@app.command(epilog="Example: `selftune doctor`")
def doctor():
    """Report Python, torch and device, measured bf16 vs fp32 matmul speed, optional extras, cache and free disk."""
    from selftune.machine_check import collect

    table = Table("item", "finding", title="selftune doctor")
    for item, finding in collect():
        table.add_row(item, escape(finding))
    console.print(table)


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
    from selftune.train.merge import merge_adapter

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
    from selftune.models import load_tokenizer
    from selftune.train.masking import IGNORE_INDEX, response_separator, tokenize_example

    records = read_records(data, "sft")  # the whole file is checked before the tokenizer loads
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    for record in records[:n]:
        example = {
            "prompt": [m.model_dump() for m in record.prompt],
            "completion": [m.model_dump() for m in record.completion],
        }
        row = tokenize_example(
            tokenizer, example, max_length=max_length, response_separator=response_separator(tokenizer, separator)
        )
        print_masks(tokenizer, record.id, row["input_ids"], [label != IGNORE_INDEX for label in row["labels"]])


@app.command(epilog="Example: `selftune export runs/demo --to gguf --quant q8_0`")
def export(
    run_dir: Path = typer.Argument(..., help="Run directory with a trained model."),
    model: str = typer.Option("dpo", "--model", help="dpo, sft or grpo (the last round's), or ROUND/NAME, e.g. 1/sft."),
    to: str = typer.Option(..., "--to", help="gguf (one file for llama.cpp, ollama, LM Studio) or hf (a folder)."),
    out: Path | None = typer.Option(
        None, "--out", help="Output file or folder; default: RUN/export/NAME.gguf or NAME-hf."
    ),
    quant: str = typer.Option("f32", "--quant", help="GGUF weights: f32, f16 or q8_0."),
    push: str | None = typer.Option(None, "--push", help="With --to hf: upload the folder to this Hub repo id."),
    check: bool = typer.Option(True, "--check/--no-check", help="GGUF: load it back and compare greedy answers."),
    llama_cpp: bool = typer.Option(
        False,
        "--llama-cpp",
        help="GGUF: open it in llama.cpp (the llama extra) and compare its next-token predictions with the "
        "merged model's, teacher-forced.",
    ),
):
    """Export a run's merged model: a GGUF file, or a Hugging Face folder with a model card."""
    from selftune.export import (
        QUANTS,
        check_gguf,
        check_in_llama_cpp,
        model_card,
        push_folder,
        run_model,
        write_gguf,
        write_hf,
    )

    if to not in ("gguf", "hf"):
        raise typer.BadParameter(f"{to!r}: choose gguf or hf", param_hint="--to")
    if quant not in QUANTS:
        raise typer.BadParameter(f"{quant!r}: choose {', '.join(QUANTS)}", param_hint="--quant")
    if llama_cpp and to != "gguf":
        raise typer.BadParameter("--llama-cpp needs --to gguf", param_hint="--llama-cpp")
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
        if llama_cpp:
            found = check_in_llama_cpp(path, model_dir)
            console.print(
                f"opened in llama.cpp: next token agrees with the merged model's at {found.top1_agree} of "
                f"{found.positions} positions ({found.sequences} prompts and answers, teacher-forced), max |logit "
                f"difference| {found.max_abs_logit_diff}; llama.cpp's tokenizer gives the model's ids for "
                f"{found.tokenization_identical} of {found.tokenization_texts} texts",
                soft_wrap=True,
            )
        return
    path = write_hf(model_dir, out or run.root / "export" / f"{name}-hf", model_card(run, name, model_dir))
    console.print(f"wrote {path} (model card {path / 'README.md'})", soft_wrap=True)
    if push:
        console.print(f"pushed: {push_folder(path, push)}", soft_wrap=True)


@inspect_app.command("types", epilog="Example: `selftune inspect types runs/demo`")
def inspect_types(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    round_number: int = typer.Option(1, "--round", help="Round whose samples, SFT data and pairs are counted."),
):
    """Per constraint type: base sample pass rate, SFT examples and pairs carrying it, and every
    evaluated model's held-out pass rate, as a markdown table (the diagnosis of docs/gain.md)."""

    run = Run(run_dir)
    last = run.saved_config().rounds  # evaluate runs once, in the last round
    console.print(
        markdown(*type_table(run, round_number, eval_round=last)), markup=False, highlight=False, soft_wrap=True
    )
