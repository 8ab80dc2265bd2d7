"""The report's plots: pass rate per constraint type by model, training curves, the per-round trend
and answer lengths (matplotlib, imported when a plot is drawn).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

# matplotlib (0.5 s) is imported when a plot is drawn.

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
    "grpo": [
        ("reward", "reward"),
        ("rewards/passed/mean", "pass rate"),
        ("frac_reward_zero_std", "zero-variance groups"),
        ("kl", "KL"),
    ],
}
_TITLES = {"sft": "SFT", "dpo": "DPO", "grpo": "GRPO"}


def plot_training(history_by_stage: dict[str, list[dict]], path: Path) -> Path | None:
    """One panel per training stage (SFT, DPO, and GRPO when it ran); keys are `sft`, `dpo`,
    `grpo`, or `sft-r2` for later rounds."""
    found = {}
    for name, history in history_by_stage.items():
        stage = name.split("-")[0]
        for key, label in _CURVES.get(stage, []):
            points = [(e["step"], e[key]) for e in history if key in e]
            if points:
                found[(stage, f"{name} {label}")] = points
    if not found:
        return None
    panels = [stage for stage in _TITLES if stage == "sft" or stage == "dpo" or any(s == stage for s, _ in found)]
    plt = _figure()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8))
    for (stage, label), points in found.items():
        ax = axes[panels.index(stage)]
        ax.plot([s for s, _ in points], [v for _, v in points], marker=".", label=label)
    for ax, stage in zip(axes, panels):
        ax.set_title(_TITLES[stage])
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
