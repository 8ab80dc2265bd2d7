"""What every scorer is (`Scorer`, `ScoreResult`) and the answer-quality checks they share
(complete, not looping).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from selftune.data.records import PromptRecord


@dataclass(frozen=True)
class ScoreResult:
    score: float  # in [0, 1]
    passed: bool
    checks: dict = field(default_factory=dict)


class Scorer(Protocol):
    name: str

    def score(self, prompt: PromptRecord, completions: Sequence[str]) -> list[ScoreResult]: ...


_TERMINAL = tuple(".!?\"')]}*>`:;")


def is_complete(text: str) -> bool:
    """The answer ends like a finished text: terminal punctuation or markup, or a list line."""
    stripped = text.rstrip()
    if not stripped:
        return False
    last_line = stripped.splitlines()[-1]
    if stripped.endswith(_TERMINAL) or re.match(r"^\s*\|.*\|$", last_line):  # punctuation, markup, a table row
        return True
    return re.match(r"^\s*([*-]|\d+[.)])\s+\S", last_line) is not None


# A unit of 1-4 visible characters 12 or more times in a row ("<<<<<<<<<<<<", twelve emoji, ";;;;..."):
# a loop inside one word, which the word n-grams of `repetition_rate` cannot see. Runs made only of
# rule characters are markdown rules, underlines and table borders (---, ===, ***, |---|---|), not loops.
_CHARACTER_LOOP = re.compile(r"(\S{1,4}?)\1{11,}")
_RULE_CHARACTERS = frozenset("-=_*~#.|:+")


def has_character_loop(text: str) -> bool:
    """Whether the text repeats a short unit of characters 12 or more times in a row (rules aside)."""
    return any(set(m.group(1)) - _RULE_CHARACTERS for m in _CHARACTER_LOOP.finditer(text))


def is_looping(text: str, max_repetition: float) -> bool:
    """More than `max_repetition` of the word 4-grams repeat, or a run of characters loops."""
    return repetition_rate(text) > max_repetition or has_character_loop(text)


def repetition_rate(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier one (0 for texts under 2n words)."""
    words = text.lower().split()
    grams = [tuple(words[k : k + n]) for k in range(len(words) - n + 1)]
    if len(words) < 2 * n:
        return 0.0
    return 1 - len(set(grams)) / len(grams)
