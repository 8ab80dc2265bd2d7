"""Evaluation metrics: instruction following (prompt and instruction level, strict and loose, per
type), a paired comparison of two models with its noise (bootstrap interval, McNemar), pair
reward margins against a reference, and answer statistics.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict

from selftune.data.benchmarks import pass_rates
from selftune.data.constraints.registry import check, check_loose
from selftune.data.records import PairRecord, PromptRecord
from selftune.scoring.base import repetition_rate


def instruction_following(prompts: list[PromptRecord], answers: list[str], verifier=None) -> tuple[dict, list[dict]]:
    """Prompt- and instruction-level accuracy, strict and loose, overall and per constraint type.
    With a `verifier` (a `FunctionScorer`), its verdict is one more instruction of every prompt
    (type `verifier`, the same strict and loose): a prompt passes when its constraints and the
    verifier pass."""
    prompt_strict = prompt_loose = 0
    instructions = strict_total = loose_total = 0
    by_type: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    details = []
    verdicts = [r.passed for r in verifier.score_many(prompts, answers)] if verifier and prompts else []
    for k, (prompt, answer) in enumerate(zip(prompts, answers)):
        strict = [check(c.type, answer, c.kwargs) for c in prompt.constraints]
        loose = [check_loose(c.type, answer, c.kwargs) for c in prompt.constraints]
        if verdicts:
            strict.append(verdicts[k])
            loose.append(verdicts[k])
            by_type["verifier"].append((verdicts[k], verdicts[k]))
        prompt_strict += all(strict)
        prompt_loose += all(loose)
        instructions += len(strict)
        strict_total += sum(strict)
        loose_total += sum(loose)
        for constraint, passed_strict, passed_loose in zip(prompt.constraints, strict, loose):
            by_type[constraint.type].append((passed_strict, passed_loose))
        details.append({"prompt_id": prompt.id, "strict": strict, "loose": loose})
    n = max(1, len(prompts))
    metrics = {
        **({"verifier": verifier.ref} if verifier else {}),
        "prompt_strict": round(prompt_strict / n, 4),
        "prompt_loose": round(prompt_loose / n, 4),
        "instruction_strict": round(strict_total / max(1, instructions), 4),
        "instruction_loose": round(loose_total / max(1, instructions), 4),
        "by_type": pass_rates(by_type),
        "prompts": len(prompts),
    }
    return metrics, details


def paired_comparison(ours: list[bool], theirs: list[bool], *, draws: int = 2000, seed: int = 0) -> dict:
    """Prompt-level accuracy difference of two models on the same prompts, with its noise.

    The prompts are the unit: a 95% paired-bootstrap interval of the difference (prompts resampled
    with replacement), and McNemar's exact test, a two-sided binomial test on the prompts where the
    two models disagree (`wins`: only ours passes; `losses`: only theirs).
    """
    if len(ours) != len(theirs) or not ours:
        raise ValueError("paired comparison needs the same, non-empty set of prompts for both models")
    n = len(ours)
    diffs = [int(a) - int(b) for a, b in zip(ours, theirs)]
    rng = random.Random(seed)
    boots = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(draws))
    wins, losses = diffs.count(1), diffs.count(-1)
    disagreements = wins + losses
    tail = sum(math.comb(disagreements, k) for k in range(min(wins, losses) + 1)) / 2**disagreements
    return {
        "delta": round(sum(diffs) / n, 4),
        "ci95": [round(boots[int(0.025 * draws)], 4), round(boots[int(0.975 * draws) - 1], 4)],
        "wins": wins,
        "losses": losses,
        "prompts": n,
        "p_value": round(min(1.0, 2 * tail), 4) if disagreements else 1.0,
    }


def pair_metrics(
    own: list[tuple[float, float, int]], reference: list[tuple[float, float, int]], pairs: list[PairRecord], beta: float
) -> dict:
    """Implicit reward accuracy and margin against a reference, overall and per negative source."""
    by_source: dict[str, list[float]] = defaultdict(list)
    # A pair either model could not mask is left out of both.
    scored = [(a, b, pair) for a, b, pair in zip(own, reference, pairs) if a is not None and b is not None]
    if not scored:
        return {"pairs": 0}
    own = [a for a, _, _ in scored]
    for (pc, pr, _), (rc, rr, _), pair in scored:
        margin = beta * ((pc - rc) - (pr - rr))
        by_source["all"].append(margin)
        by_source[pair.negative_source].append(margin)
    total_tokens = sum(n for _, _, n in own)
    return {
        "reward_accuracy": {s: round(sum(m > 0 for m in v) / len(v), 4) for s, v in sorted(by_source.items())},
        "reward_margin": {s: round(sum(v) / len(v), 4) for s, v in sorted(by_source.items())},
        "logp_chosen": round(sum(c for c, _, _ in own) / len(own), 3),
        "logp_rejected": round(sum(r for _, r, _ in own) / len(own), 3),
        "chosen_perplexity": round(math.exp(-sum(c for c, _, _ in own) / max(1, total_tokens)), 3),
        "pairs": len(scored),
    }


def answer_stats(answers: list[dict]) -> dict:
    texts = [a["text"] for a in answers]
    n = max(1, len(answers))
    return {
        "mean_length_tokens": round(sum(a["completion_tokens"] for a in answers) / n, 1),
        "truncated_share": round(sum(a["finish_reason"] == "length" for a in answers) / n, 4),
        "repetition_rate": round(sum(repetition_rate(t) for t in texts) / max(1, len(texts)), 4),
    }
