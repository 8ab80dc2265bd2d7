"""The default scorer: the prompt's verifiable constraints (score = share passed, pass = all),
plus the quality checks (complete, not looping).
"""

from __future__ import annotations

from collections.abc import Sequence

from selftune.data.constraints.registry import check
from selftune.data.constraints.types import ENDS_ANSWER
from selftune.data.records import PromptRecord
from selftune.scoring.base import ScoreResult, is_complete, is_looping


class ConstraintScorer:
    """The prompt's constraints plus, when `quality_checks`, two checks every answer must pass:
    `complete` (not cut off mid-sentence) and `no_repetition` (at most `max_repetition` of its
    word 4-grams repeat, and no short unit of characters repeats 12 times in a row). Without them
    a truncated or looping answer that happens to satisfy the constraints would count as perfect."""

    name = "constraints"

    def __init__(self, quality_checks: bool = True, max_repetition: float = 0.2):
        self.quality_checks = quality_checks
        self.max_repetition = max_repetition

    def score(self, prompt: PromptRecord, completions: Sequence[str]) -> list[ScoreResult]:
        if not prompt.constraints:
            raise ValueError(
                f"prompt {prompt.id} has no constraints: the constraints scorer cannot check it; "
                "use scorer kind judge or reward-model for prompts without constraints"
            )
        results = []
        for text in completions:
            # Keys carry the index so a prompt may hold two constraints of one type.
            checks = {f"{c.type}#{i}": check(c.type, text, c.kwargs) for i, c in enumerate(prompt.constraints)}
            if self.quality_checks:
                if not ends_answer(prompt):
                    checks["complete"] = is_complete(text)
                # An answer that says nothing passes nothing (it does not loop, but it is no answer).
                checks["no_repetition"] = bool(text.strip()) and not is_looping(text, self.max_repetition)
            passed = sum(checks.values())
            results.append(ScoreResult(passed / len(checks), passed == len(checks), checks))
        return results


def ends_answer(prompt: PromptRecord) -> bool:
    """Whether one of the prompt's constraints fixes how the answer ends (`ENDS_ANSWER`): then it,
    not the completeness check, judges the ending."""
    return any(c.type in ENDS_ANSWER for c in prompt.constraints)
