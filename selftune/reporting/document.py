"""report.md and a self-contained report.html (images embedded) for a run.

Contents: a table of models x metrics with deltas against base; plots (pass rate per constraint
type by model, SFT and DPO training curves, answer length distributions); a few answers side by
side for the same prompts; the run's lineage (stages, config hashes, record counts, yield, pairs
per negative source).
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from pathlib import Path

import jinja2

from selftune.data.records import read_records
from selftune.reporting.plots import plot_lengths, plot_pass_rates, plot_training, plot_trend
from selftune.reporting.tables import checker_note, markdown_table, noise_table, round_table, summary_table
from selftune.run.plan import stage_manifests


def _template(name: str, *, autoescape: bool):
    """A report template from selftune/templates (HTML escaped; markdown left as written)."""

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
# The report
# ---------------------------------------------------------------------------------------------


def lineage_rows(run, rounds: int, *, fresh: bool = False, grpo: bool = False) -> list[list[str]]:
    """One row per stage of the run's plan (the stages `selftune run` takes for `rounds`, with each
    round's prompts when `fresh`), from their manifests; folders not in the plan are not read."""

    rows = []
    for step, manifest in stage_manifests(run, rounds, fresh=fresh, grpo=grpo):
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
    round_header, round_rows = round_table(results)
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
        # Shown from two rounds on: does each round beat the one before it?
        "rounds": {"header": round_header, "rows": round_rows if len(round_rows) > 1 else []},
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


def evaluation_of(run, round_number: int) -> tuple[dict, list[dict], dict[str, str]]:
    """A run's evaluation through its lineage: results, every answer, and prompt texts by id."""

    results = json.loads(run.output_of("evaluate", "results", round_number=round_number).read_text())
    answers_path = run.output_of("evaluate", "answers", round_number=round_number)
    answers = [json.loads(line) for line in answers_path.read_text().splitlines() if line.strip()]
    prompts_path = run.output_of("prompts", "prompts", round_number=1)
    prompts = {p.id: p.messages[-1].content for p in read_records(prompts_path, "prompts")}
    return results, answers, prompts
