"""Stage `report`: report.md and a self-contained report.html (images embedded) for a run.

Contents: a table of models x metrics with deltas against base; plots (pass rate per constraint
type by model, SFT and DPO training curves, answer length distributions); a few answers side by
side for the same prompts; the run's lineage (stages, config hashes, record counts, yield, pairs
per negative source).

Usage:
    selftune report runs/demo
    selftune compare runs/a runs/b
    from selftune.report import report_stage, summary_rows
"""

from __future__ import annotations

import base64
import json
import time
from collections import defaultdict
from pathlib import Path

from selftune.runs import StageSpec

# (key in results, column title, higher is better)
COLUMNS = [
    ("prompt_strict", "IFEval-style prompt strict", True),
    ("prompt_loose", "IFEval-style prompt loose", True),
    ("instruction_strict", "IFEval-style instr. strict", True),
    ("instruction_loose", "IFEval-style instr. loose", True),
    ("reward_accuracy", "pair reward acc.", True),
    ("reward_margin", "pair margin", True),
    ("judge_win_rate", "judge win rate", True),
    ("chosen_perplexity", "chosen ppl", False),
    ("mean_length_tokens", "mean length", None),
    ("repetition_rate", "repetition", False),
    ("peak_memory_gib", "peak GiB", False),
]


_BENCHMARK_COLUMNS = [
    ("prompt_strict", "prompt strict"),
    ("prompt_loose", "prompt loose"),
    ("instruction_strict", "instr. strict"),
    ("instruction_loose", "instr. loose"),
]


_LM_EVAL_SKIP = ("n", "num_fewshot", "higher_is_better")


def columns(results: dict) -> list[tuple[str, str, bool | None]]:
    """COLUMNS, then four per benchmark any model ran (`ifeval:prompt_strict`, ...), then one per
    lm-eval task and metric (`lm_eval:arc_easy:acc`, its standard error shown beside it)."""
    benchmarks = sorted({b for m in results["models"].values() for b in m.get("benchmarks", {})})
    lm_eval: dict[tuple[str, str], bool | None] = {}
    for metrics in results["models"].values():
        for task, values in metrics.get("lm_eval", {}).get("tasks", {}).items():
            for metric in values:
                if metric not in _LM_EVAL_SKIP and not metric.endswith("_stderr"):
                    lm_eval[(task, metric)] = values.get("higher_is_better", {}).get(metric)
    return (
        COLUMNS
        + [(f"{b}:{key}", f"{b.upper()} {title}", True) for b in benchmarks for key, title in _BENCHMARK_COLUMNS]
        + [
            (f"lm_eval:{task}:{metric}", f"{task} {metric}", better)
            for (task, metric), better in sorted(lm_eval.items())
        ]
    )


def _lm_eval_value(metrics: dict, key: str, suffix: str = ""):
    task, _, metric = key.removeprefix("lm_eval:").rpartition(":")
    return metrics.get("lm_eval", {}).get("tasks", {}).get(task, {}).get(metric + suffix)


def _value(metrics: dict, key: str):
    if key.startswith("lm_eval:"):
        return _lm_eval_value(metrics, key)
    if ":" in key:
        bench, _, name = key.partition(":")
        return metrics.get("benchmarks", {}).get(bench, {}).get(name)
    following = metrics.get("instruction_following", {})
    if key in following:
        return following[key]
    pairs = metrics.get("pairs", {})
    if key in ("reward_accuracy", "reward_margin"):
        return pairs.get(key, {}).get("all")
    if key in pairs:
        return pairs[key]
    return metrics.get(key)


def summary_rows(results: dict, baseline: str = "base") -> list[list[str]]:
    """Rows of [model, value (delta vs base), ...] for every model."""
    base = results["models"].get(baseline)
    rows = []
    for name, metrics in results["models"].items():
        row = [name]
        for key, _, _ in columns(results):
            value = _value(metrics, key)
            if value is None:
                row.append("-")
                continue
            cell = f"{value:.3f}" if isinstance(value, float) else str(value)
            stderr = _lm_eval_value(metrics, key, "_stderr") if key.startswith("lm_eval:") else None
            if isinstance(stderr, float):
                cell += f" ±{stderr:.3f}"
            reference = _value(base, key) if base and name != baseline else None
            if isinstance(value, (int, float)) and isinstance(reference, (int, float)):
                cell += f" ({value - reference:+.3f})"
            row.append(cell)
        rows.append(row)
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _template(name: str, *, autoescape: bool):
    """A report template from selftune/templates (HTML escaped; markdown left as written)."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("selftune", "templates"),
        autoescape=autoescape,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    return environment.get_template(name)


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_pass_rates(results: dict, path: Path, benchmark: str | None = None) -> Path | None:
    """Strict pass rate per constraint type (eval prompts) or per instruction (a benchmark)."""

    def by_type(metrics: dict) -> dict:
        if benchmark:
            return metrics.get("benchmarks", {}).get(benchmark, {}).get("by_instruction", {})
        return metrics.get("instruction_following", {}).get("by_type", {})

    models = [n for n, m in results["models"].items() if by_type(m)]
    types = sorted({t for n in models for t in by_type(results["models"][n])})
    if not types:
        return None
    plt = _figure()
    fig, ax = plt.subplots(figsize=(max(8, len(types) * 0.45), 4.5))
    width = 0.8 / max(1, len(models))
    for k, name in enumerate(models):
        values = by_type(results["models"][name])
        ax.bar(
            [i + k * width for i in range(len(types))],
            [values.get(t, {}).get("strict", 0) for t in types],
            width,
            label=name,
        )
    ax.set_xticks(
        [i + width * (len(models) - 1) / 2 for i in range(len(types))],
        types,
        rotation=70,
        ha="right",
        fontsize=7 if benchmark else None,
    )
    ax.set_ylabel("strict pass rate")
    ax.set_title(
        f"Pass rate per instruction ({benchmark.upper()})"
        if benchmark
        else "Pass rate per constraint type (eval prompts, IFEval-style checkers)"
    )
    ax.legend()
    return _save(plt, fig, path)


# Curves drawn per training stage: (key in the Trainer's log history, label).
_CURVES = {
    "sft": [("loss", "loss"), ("eval_loss", "held-out loss")],
    "dpo": [
        ("loss", "loss"),
        ("rewards/accuracies", "reward accuracy"),
        ("rewards/margins", "reward margin"),
        ("eval_rewards/accuracies", "held-out accuracy"),
    ],
}


def plot_training(history_by_stage: dict[str, list[dict]], path: Path) -> Path | None:
    """SFT curves on the left, DPO on the right; keys are `sft`, `dpo`, or `sft-r2` for later rounds."""
    found = {}
    for name, history in history_by_stage.items():
        stage = name.split("-")[0]
        for key, label in _CURVES.get(stage, []):
            points = [(e["step"], e[key]) for e in history if key in e]
            if points:
                found[(stage, f"{name} {label}")] = points
    if not found:
        return None
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for (stage, label), points in found.items():
        ax = axes[0] if stage == "sft" else axes[1]
        ax.plot([s for s, _ in points], [v for _, v in points], marker=".", label=label)
    axes[0].set_title("SFT")
    axes[1].set_title("DPO")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_trend(results: dict, path: Path) -> Path | None:
    """Prompt-level strict accuracy per model in evaluation order (base, then each round's models)."""
    names = [n for n, m in results["models"].items() if "instruction_following" in m]
    if not names:
        return None
    plt = _figure()
    values = [results["models"][n]["instruction_following"]["prompt_strict"] for n in names]
    fig, ax = plt.subplots(figsize=(max(5, len(names) * 1.1), 3.5))
    ax.plot(names, values, marker="o")
    for x, y in zip(names, values):
        ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center")
    ax.set_ylabel("IFEval-style prompt-level strict")
    ax.set_title("Instruction following by model (eval prompts)")
    return _save(plt, fig, path)


def plot_lengths(answers: list[dict], path: Path) -> Path:
    plt = _figure()
    lengths = defaultdict(list)
    for row in answers:
        lengths[row["model"]].append(len(row["answer"].split()))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name, values in lengths.items():
        ax.hist(values, bins=20, alpha=0.5, label=name)
    ax.set_xlabel("answer length (words)")
    ax.set_ylabel("eval prompts")
    ax.set_title("Answer length distribution")
    ax.legend()
    return _save(plt, fig, path)


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def lineage_rows(run, rounds: int) -> list[list[str]]:
    """One row per stage of the run's plan (the stages `selftune run` takes for `rounds`), from
    their manifests; folders that are not stages of the plan are not read."""
    from selftune.pipeline import stage_manifests

    rows = []
    for step, manifest in stage_manifests(run, rounds):
        if step.stage == "report":
            continue
        if manifest is None:
            rows.append([f"round-{step.round_number}", step.stage, "not run", "", "", ""])
            continue
        m = manifest.metrics
        facts = []
        for key in (
            "train",
            "eval",
            "samples",
            "yield",
            "examples",
            "no_passing",
            "steps",
            "eval_loss_before",
            "eval_loss_after",
            "tokens_per_second",
        ):
            if key in m and not isinstance(m[key], dict):
                facts.append(f"{key}={m[key]:.4g}" if isinstance(m[key], float) else f"{key}={m[key]}")
        if isinstance(m.get("train"), dict):
            facts.append(f"pairs by source={m['train'].get('by_source')}")
        rows.append(
            [
                f"round-{manifest.round_number}",
                manifest.stage,
                manifest.status,
                manifest.config_hash,
                f"{manifest.seconds:.0f}s",
                ", ".join(facts),
            ]
        )
    return rows


def side_by_side(answers: list[dict], prompts: dict[str, str], count: int = 3) -> list[dict]:
    by_prompt: dict[str, dict[str, str]] = defaultdict(dict)
    for row in answers:
        by_prompt[row["prompt_id"]][row["model"]] = row["answer"]
    chosen = sorted(by_prompt)[:count]
    return [{"prompt_id": pid, "prompt": prompts.get(pid, ""), "answers": by_prompt[pid]} for pid in chosen]


def write_report(
    out: Path,
    *,
    title: str,
    results: dict,
    answers: list[dict],
    prompts: dict[str, str],
    history_by_stage: dict,
    lineage: list[list[str]],
) -> dict[str, Path]:
    """Write report.md, report.html and plots/*.png into `out`."""
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    images = {
        "accuracy by model": plot_trend(results, plots / "trend.png"),
        "pass rate per constraint type": plot_pass_rates(results, plots / "pass_rate_by_type.png"),
        "training curves": plot_training(history_by_stage, plots / "training.png"),
        "answer lengths": plot_lengths(answers, plots / "lengths.png"),
    }
    for bench in sorted({b for m in results["models"].values() for b in m.get("benchmarks", {})}):
        images[f"{bench.upper()} pass rate per instruction"] = plot_pass_rates(
            results, plots / f"{bench}_by_instruction.png", benchmark=bench
        )
    images = {k: v for k, v in images.items() if v is not None}
    header, rows = summary_table(results)
    noise_header, noise_rows = noise_table(results)
    if "reference" in results or "references" not in results:
        reference_note = f"Pair metrics use the {results.get('reference', 'SFT')} model as the reference."
    else:
        reference_note = (
            "Pair metrics use each model's own round's SFT model as the reference ("
            + ", ".join(f"{name}: {ref}" for name, ref in results["references"].items())
            + ")."
        )
    context = {
        "title": title,
        "models": {"header": header, "rows": rows},
        "noise": {"header": noise_header, "rows": noise_rows},
        "checker_note": checker_note(results),
        "reference_note": reference_note,
        "noise_note": "Paired over the same eval prompts: the interval resamples prompts; McNemar's exact test uses "
        "the prompts where the two models disagree.",
        "images": [
            {"caption": caption, "file": path.name, "base64": base64.b64encode(path.read_bytes()).decode()}
            for caption, path in images.items()
        ],
        "examples": side_by_side(answers, prompts),
        "lineage": {"header": ["round", "stage", "status", "config hash", "time", "facts"], "rows": lineage},
    }
    (out / "report.md").write_text(_template("report.md.j2", autoescape=False).render(context, md_table=markdown_table))
    (out / "report.html").write_text(_template("report.html.j2", autoescape=True).render(context))
    return {"md": out / "report.md", "html": out / "report.html", **{k: v for k, v in images.items()}}


def checker_note(results: dict) -> str:
    """What each kind of column measures, with the lm-eval settings when tasks ran."""
    note = (
        "Prompt and instruction columns without a benchmark name use selftune's IFEval-style checkers "
        "on the run's held-out prompts; IFEVAL and IFBENCH columns use those benchmarks' own prompts "
        "and reference checkers."
    )
    settings = next((m["lm_eval"]["settings"] for m in results["models"].values() if "lm_eval" in m), None)
    if settings:
        shots = "each task's own" if settings["num_fewshot"] is None else settings["num_fewshot"]
        limit = "all" if settings["limit"] is None else settings["limit"]
        note += (
            f" Task columns come from lm-evaluation-harness (few-shot: {shots}; documents per task: {limit}; "
            f"chat template: {'on' if settings['chat_template'] else 'off'}), ± its standard error."
        )
    return note


def evaluation_of(run, round_number: int) -> tuple[dict, list[dict], dict[str, str]]:
    """A run's evaluation through its lineage: results, every answer, and prompt texts by id."""
    from selftune.records import read_records

    results = json.loads(run.output_of("evaluate", "results", round_number=round_number).read_text())
    answers_path = run.output_of("evaluate", "answers", round_number=round_number)
    answers = [json.loads(line) for line in answers_path.read_text().splitlines() if line.strip()]
    prompts_path = run.output_of("prompts", "prompts", round_number=1)
    prompts = {p.id: p.messages[-1].content for p in read_records(prompts_path, "prompts")}
    return results, answers, prompts


REPORT_STAGE = StageSpec("report", output="html", reads=())  # everything it shows comes from its inputs


def report_stage(run, cfg, *, round_number: int = 1) -> Path:
    """Write the report into the report stage's folder; `RUN/report` links to it, so the report's
    path stays `RUN/report/report.html` whichever round it reports."""
    results_path = run.output_of("evaluate", "results", round_number=round_number)
    answers_path = run.output_of("evaluate", "answers", round_number=round_number)
    inputs = {"results": results_path, "answers": answers_path}
    histories = {}  # training curves, found through the training stages' manifests
    for r in range(1, round_number + 1):
        for stage in ("sft", "dpo"):
            path = run.optional_output(stage, "log_history", round_number=r)
            if path is not None:
                histories[stage if r == 1 else f"{stage}-r{r}"] = path
                inputs[f"log_history_{stage}_r{r}"] = path
    start = run.begin(REPORT_STAGE, cfg, inputs=inputs, round_number=round_number)
    if start.reused:
        _link_report(run, start.reused.parent)
        return run.root / "report" / "report.html"
    results, answers, prompts = evaluation_of(run, round_number)
    history = {name: json.loads(path.read_text()) for name, path in histories.items()}
    with start as stage:
        files = write_report(
            stage.dir,
            title=f"selftune report: {run.root.name}",
            results=results,
            answers=answers,
            prompts=prompts,
            history_by_stage=history,
            lineage=lineage_rows(run, round_number),
        )
        stage.add_output("html", files["html"])
        stage.add_output("md", files["md"])
    _link_report(run, stage.dir)
    return run.root / "report" / "report.html"


def _link_report(run, stage_dir: Path) -> None:
    """Point `RUN/report` at the report stage's folder (replaced atomically; a folder left there by
    an older version is moved aside, not deleted)."""
    import os

    link = run.root / "report"
    target = os.path.relpath(stage_dir, run.root)
    if link.is_symlink() and os.readlink(link) == target:
        return
    if link.exists() and not link.is_symlink():
        link.rename(run.root / f"report.old-{int(time.time())}")
    scratch = run.root / f".report.link-{os.getpid()}"
    scratch.unlink(missing_ok=True)
    scratch.symlink_to(target, target_is_directory=True)
    os.replace(scratch, link)


def run_results(run) -> tuple[dict, int]:
    """The evaluation results of a run's last round (as its config.yaml sets), through its lineage."""

    rounds = run.saved_config().rounds
    return json.loads(run.output_of("evaluate", "results", round_number=rounds).read_text()), rounds


def summary_table(results: dict, baseline: str = "base") -> tuple[list[str], list[list[str]]]:
    """Header and rows of the models x metrics table, deltas against `baseline`; a metric no model
    has (a judge win-rate when no judge ran) is left out."""
    header, rows = ["model"] + [title for _, title, _ in columns(results)], summary_rows(results, baseline)
    keep = [k for k in range(len(header)) if k == 0 or any(row[k] != "-" for row in rows)]
    return [header[k] for k in keep], [[row[k] for k in keep] for row in rows]


def noise_table(results: dict, baseline: str = "base") -> tuple[list[str], list[list[str]]]:
    """Each model's prompt-level strict gain over `baseline` with its paired 95% interval and
    McNemar's p (see `selftune.evaluate.paired_comparison`)."""
    header = [
        "model",
        f"prompt strict gain vs {baseline}",
        "95% CI (paired bootstrap)",
        "prompts won / lost",
        "McNemar p",
    ]
    rows = []
    for name, metrics in results["models"].items():
        found = [(name, metrics.get("vs_" + baseline))]
        found += [
            (f"{name} ({bench.upper()})", values.get("vs_" + baseline))
            for bench, values in sorted(metrics.get("benchmarks", {}).items())
        ]
        for label, versus in found:
            if versus:
                low, high = versus["ci95"]
                rows.append(
                    [
                        label,
                        f"{versus['delta']:+.3f}",
                        f"[{low:+.3f}, {high:+.3f}]",
                        f"{versus['wins']} / {versus['losses']}",
                        f"{versus['p_value']:.4f}",
                    ]
                )
    return header, rows


def compare_table(runs: list) -> tuple[list[str], list[list[str]]]:
    """One table across runs: every run's models, named run/model, deltas against the first run's base."""
    combined: dict = {"models": {}}
    for run in runs:
        results, _ = run_results(run)
        for name, metrics in results["models"].items():
            combined["models"][f"{run.root.name}/{name}"] = metrics
    return summary_table(combined, baseline=f"{runs[0].root.name}/base")
