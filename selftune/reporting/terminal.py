"""Results printed on the terminal (rich): the results and noise tables, the yield per constraint
type, one line per evaluated model, trained tokens highlighted, and the end of `selftune run`.
What the commands print once their stage has written its files."""

from __future__ import annotations

from rich import box
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from selftune.config import PipelineConfig
from selftune.progress import console
from selftune.reporting.by_type import data_mix
from selftune.reporting.document import evaluation_of, side_by_side
from selftune.reporting.tables import noise_table, round_table, summary_table
from selftune.run.folder import Run


def print_table(header: list[str], rows: list[list[str]], title: str, transpose: bool = True) -> None:
    if not transpose:
        table = Table(*header, title=title)
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))
        console.print(table)
        return
    # Metrics down, models across: fits a terminal however many metrics there are.
    # The metric names stay on one line: a wrapped "IFEval-style prompt strict" is hard to read.
    # A value's delta goes on a line of its own, without vertical rules. Models that do not fit
    # the console's width side by side (80 columns off a terminal: a CI log, `| tee`) are printed
    # in several tables of fewer models each, so that no figure is ever cut or folded.
    columns = [[cell.replace(" (", "\n(", 1) for cell in row[1:]] for row in rows]
    widest = [max((len(line) for cell in column for line in cell.split("\n")), default=0) for column in columns]
    metric_width = max(len("metric"), *(len(m) for m in header[1:]))
    chunk: list[int] = []
    width = metric_width
    for k, column_width in enumerate(widest):
        if chunk and width + 2 + max(column_width, len(rows[k][0])) > console.width:
            _print_models(header, rows, columns, chunk, title)
            chunk, width, title = [], metric_width, None
        chunk.append(k)
        width += 2 + max(column_width, len(rows[k][0]))
    if chunk:
        _print_models(header, rows, columns, chunk, title)


def _print_models(header: list[str], rows: list[list[str]], columns: list[list[str]], chunk: list[int], title):
    table = Table(
        Column("metric", no_wrap=True),
        *(Column(escape(rows[k][0]), no_wrap=True) for k in chunk),
        title=title,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for m, metric in enumerate(header[1:]):
        table.add_row(escape(metric), *(escape(columns[k][m]) for k in chunk))
    console.print(table)


def print_results_table(results: dict, title: str) -> None:
    print_table(*summary_table(results), title)
    header, rows = noise_table(results)
    if rows:
        print_table(
            header,
            rows,
            "prompt-level strict gain vs base, with its noise ("
            + own_label(next(iter(results["models"].values())).get("instruction_following", {}))
            + " eval prompts; benchmarks by name)",
            transpose=False,
        )


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


def own_label(following: dict) -> str:
    """What the eval prompts' scores measure: IFEval-style checkers, or a verifier function too."""
    return f"eval ({following['verifier']})" if "verifier" in following else "IFEval-style"


def print_model_line(name: str, metrics: dict) -> None:
    """One evaluated model: its prompt-level strict scores, peak memory and time."""
    scores = [
        f"{label} prompt-level strict {values['prompt_strict']:.3f}"
        for label, values in (
            [(own_label(metrics["instruction_following"]), metrics["instruction_following"])]
            if "instruction_following" in metrics
            else []
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


def print_masks(tokenizer, record_id: str, input_ids: list[int], trained: list[bool]) -> None:
    """One tokenized example, trained tokens highlighted (green) and masked ones dim."""
    text = Text()
    for token, learned in zip(input_ids, trained):
        piece = tokenizer.decode([token], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        text.append(piece, style="bold black on green" if learned else "dim")
    console.rule(f"{record_id}: {sum(trained)} of {len(input_ids)} tokens trained")
    console.print(text)


def print_run_end(run: Run, cfg: PipelineConfig, report_path) -> None:
    """After `selftune run` reported: one held-out prompt answered by every model, the summary with
    its noise, the data each round trained on, and where the report is."""
    results, answers, prompts = evaluation_of(run, cfg.rounds)
    for example in side_by_side(answers, prompts, count=1):
        console.rule(f"held-out prompt {example['prompt_id']}")
        console.print(escape(example["prompt"]), soft_wrap=True)
        for name, answer in example["answers"].items():
            console.print(f"[bold]{escape(name)}:[/bold] {escape(answer)}", soft_wrap=True)
    print_results_table(results, "summary (eval split; deltas against base)")
    header, rows = round_table(results)
    if len(rows) > 1:
        print_table(
            header, rows, "round by round: each round's final model against the round before's", transpose=False
        )
    for line in data_mix(run, cfg.rounds):
        console.print(escape(line), soft_wrap=True)
    console.print(f"report: {report_path}", soft_wrap=True)
