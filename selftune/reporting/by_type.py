"""Why a run's model improved, per constraint type: the table `docs/gain.md` keeps.

For each constraint type of a run's prompts: how often the base model's samples passed it, how
many SFT examples and preference pairs of round 1 carry it (and where their chosen answers came
from), and the held-out pass rate of every evaluated model. Everything is read through the run's
lineage (manifests and the files they record).

Usage:
    selftune inspect types runs/demo            # a markdown table
    from selftune.reporting.by_type import type_table
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

from selftune.data.records import read_records


def _types_by_prompt(run, round_number: int = 1) -> dict[str, list[str]]:
    """Constraint types by prompt id: round 1's prompts (train and eval), and the round's own
    train prompts where it built fresh ones (their ids differ from round 1's)."""
    rounds = [1] + ([round_number] if round_number > 1 and run.manifest("prompts", round_number) else [])
    return {
        p.id: [c.type for c in p.constraints]
        for r in rounds
        for p in read_records(run.output_of("prompts", "prompts", round_number=r), "prompts")
    }


def type_table(run, round_number: int = 1, eval_round: int = 1) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per constraint type. Samples, SFT data and pairs are counted in
    `round_number`; eval pass rates come from `eval_round` (the run's last: evaluate runs once)."""
    types = _types_by_prompt(run, round_number)
    sample = run.manifest("sample", round_number)
    sample_rates = sample.metrics.get("pass_rate_by_type", {}) if sample else {}
    sft: dict[str, Counter] = defaultdict(Counter)
    if run.manifest("sft-data", round_number):
        for record in read_records(run.output_of("sft-data", "sft", round_number=round_number), "sft"):
            source = getattr(record, "chosen_source", "sample").split(":")[0]
            for kind in types.get(record.id, []):
                sft[kind][source] += 1
    pairs: dict[str, Counter] = defaultdict(Counter)
    if run.manifest("pairs", round_number):
        for pair in read_records(run.output_of("pairs", "pairs", round_number=round_number), "pairs"):
            prompt_id = pair.id.rsplit("-", 1)[0]
            for kind in types.get(prompt_id, []):
                pairs[kind][pair.negative_source] += 1
    evaluated: dict[str, dict] = {}
    if run.manifest("evaluate", eval_round):
        results = json.loads(run.output_of("evaluate", "results", round_number=eval_round).read_text())
        for name in results.get("order", results["models"]):
            evaluated[name] = results["models"][name]["instruction_following"]["by_type"]
    sampler = "base" if round_number == 1 else f"round {round_number - 1}'s model"
    header = [
        "type",
        f"samples pass ({sampler})",
        "SFT examples (sampled + repaired)",
        "pairs (original / policy / other)",
    ]
    header += [f"eval {name}" for name in evaluated]
    rows = []
    for kind in sorted({k for kinds in types.values() for k in kinds}):
        counts = pairs[kind]
        other = sum(v for s, v in counts.items() if s not in ("original", "policy"))
        row = [
            kind,
            f"{sample_rates[kind]:.2f}" if kind in sample_rates else "-",
            f"{sft[kind]['sample']} + {sft[kind]['repair']}",
            f"{counts['original']} / {counts['policy']} / {other}",
        ]
        for by_type in evaluated.values():
            entry = by_type.get(kind)
            row.append(f"{entry['strict']:.2f} (n={entry['n']})" if entry else "-")
        rows.append(row)
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _mix(counts: dict) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def data_mix(run, rounds: int = 1) -> list[str]:
    """One line per round: where the SFT examples and the pairs' chosen and negative answers came
    from, as the sft-data and pairs manifests counted them (printed with the run's summary)."""
    lines = []
    for round_number in range(1, rounds + 1):
        parts = []
        sft = run.manifest("sft-data", round_number)
        if sft and "examples" in sft.metrics:
            parts.append(f"SFT {sft.metrics['examples']} examples ({_mix(sft.metrics.get('by_source', {}))})")
        pairs = run.manifest("pairs", round_number)
        if pairs and "train" in pairs.metrics:
            train = pairs.metrics["train"]
            parts.append(
                f"pairs {train['pairs']} (chosen: {_mix(train.get('by_chosen_source', {}))}; "
                f"negatives: {_mix(train.get('by_source', {}))})"
            )
        if parts:
            lines.append(f"round {round_number} data: " + "; ".join(parts))
    return lines
