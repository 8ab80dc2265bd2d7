"""Results as tables: models x metrics with deltas against base, the gain with its noise, and the
comparison across runs.
"""

from __future__ import annotations

import json

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
    own = COLUMNS
    if any("verifier" in m.get("instruction_following", {}) for m in results["models"].values()):
        # Eval prompts judged by a verifier function (a reference-answer task, say) are not IFEval-style.
        own = [(key, title.replace("IFEval-style", "eval (verifier)"), better) for key, title, better in COLUMNS]
    return (
        own
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


def checker_note(results: dict) -> str:
    """What each kind of column measures, with the lm-eval settings when tasks ran."""
    verifier = next(
        (
            m["instruction_following"]["verifier"]
            for m in results["models"].values()
            if "verifier" in m.get("instruction_following", {})
        ),
        None,
    )
    note = (
        "Prompt and instruction columns without a benchmark name use selftune's IFEval-style checkers "
        + (f"and the verifier {verifier} (one more instruction of every prompt) " if verifier else "")
        + "on the run's held-out prompts; IFEVAL and IFBENCH columns use those benchmarks' own prompts "
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
    McNemar's p (see `selftune.evaluation.metrics.paired_comparison`)."""
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


def round_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Whether rounds keep paying: each round's DPO model (`dpo-rK`, or `dpo` for one round) and,
    when the run trains one, its grpo model, with its prompt-level strict accuracy on the eval
    prompts and each benchmark, and its paired gain (interval, won / lost, McNemar p) over the
    previous round's final model (the base for round 1); a grpo model's gain is over its round's DPO model."""
    names = list(results["models"])
    finals = [name for name in names if name in ("dpo", "grpo") or name.startswith(("dpo-r", "grpo-r"))]
    benches = sorted({bench for name in finals for bench in results["models"][name].get("benchmarks", {})})
    measures = [("eval prompts", None)] + [(bench.upper(), bench) for bench in benches]
    header = ["round"]
    for label, _ in measures:
        header += [f"{label} strict", f"{label} vs previous [95% CI] won/lost p"]
    rows = []
    for name in finals:
        metrics = results["models"][name]
        number = name.partition("-r")[2] or "1"
        # A grpo model is compared with the DPO model it started from (the round's previous step).
        row = [f"{number} ({name}{', vs dpo' if name.startswith('grpo') else ''})"]
        for _, bench in measures:
            # The eval prompts' accuracy sits under instruction_following, their comparisons beside
            # it; a benchmark holds both.
            compared = metrics["benchmarks"].get(bench, {}) if bench else metrics
            values = compared if bench else metrics.get("instruction_following", {})
            versus = compared.get("vs_dpo") or compared.get("vs_previous") or compared.get("vs_base")
            row.append(f"{values['prompt_strict']:.3f}" if "prompt_strict" in values else "-")
            row.append(
                f"{versus['delta']:+.3f} [{versus['ci95'][0]:+.3f}, {versus['ci95'][1]:+.3f}] "
                f"{versus['wins']}/{versus['losses']} p={versus['p_value']:.4f}"
                if versus
                else "-"
            )
        rows.append(row)
    return header, rows
