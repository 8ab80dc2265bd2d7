"""An LLM judge with a rubric (pointwise scores, k samples averaged) and a pairwise judge for the
evaluation's win-rate (positions swapped).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from selftune.data.records import PromptRecord, message_text
from selftune.generation.types import Generator, SamplingParams
from selftune.scoring.base import ScoreResult

JUDGE_RUBRIC = """Rate how well the response follows every instruction in the request, from 0 (ignores \
them) to 10 (follows all of them exactly and answers helpfully).

[Request]
{request}

[Response]
{response}

Reply with one line of the form "Score: N" where N is an integer from 0 to 10."""


_SCORE_PATTERNS = [
    re.compile(r"score\s*[:=]\s*(\d+(?:\.\d+)?)\s*(?:/\s*(\d+))?", re.IGNORECASE),
    re.compile(r"(\d+(?:\.\d+)?)\s*/\s*(10)\b"),
    re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$", re.MULTILINE),
]


def parse_judge_score(text: str, scale: float = 10.0) -> float | None:
    """A judge's score normalised to [0, 1], or None if the text holds no readable score."""
    for pattern in _SCORE_PATTERNS:
        match = pattern.search(text)
        if match:
            value = float(match.group(1))
            out_of = float(match.group(2)) if match.lastindex and match.lastindex > 1 and match.group(2) else scale
            if out_of > 0 and 0 <= value <= out_of:
                return value / out_of
    return None


class JudgeScorer:
    """An LLM judge: k sampled verdicts per answer, unreadable ones ignored, the rest averaged."""

    name = "judge"

    def __init__(
        self,
        generator: Generator,
        *,
        samples: int = 3,
        pass_threshold: float = 0.7,
        rubric: str = JUDGE_RUBRIC,
        temperature: float = 0.7,
        seed: int = 0,
    ):
        self.generator = generator
        self.samples = samples
        self.pass_threshold = pass_threshold
        self.rubric = rubric
        self.params = SamplingParams(n=samples, temperature=temperature, max_new_tokens=32, seed=seed)

    def score(self, prompt: PromptRecord, completions: Sequence[str]) -> list[ScoreResult]:
        request = message_text(prompt.messages)
        queries = [[{"role": "user", "content": self.rubric.format(request=request, response=c)}] for c in completions]
        verdicts = self.generator.generate(queries, self.params)
        results = []
        for answers in verdicts:
            values = [v for v in (parse_judge_score(a.text) for a in answers) if v is not None]
            mean = sum(values) / len(values) if values else 0.0
            results.append(
                ScoreResult(
                    mean,
                    bool(values) and mean >= self.pass_threshold,
                    {"judge_scores": values, "unreadable": len(answers) - len(values)},
                )
            )
        return results


PAIRWISE_RUBRIC = """Which response follows every instruction in the request better? Judge only how well \
the instructions are followed and how helpful the response is, not its length.

[Request]
{request}

[Response A]
{a}

[Response B]
{b}

Reply with one line: "Winner: A", "Winner: B" or "Winner: tie"."""


_VERDICT = re.compile(r"winner[\s*:=]*(A|B|tie)\b", re.IGNORECASE)


def parse_pairwise_verdict(text: str) -> str | None:
    """'A', 'B' or 'tie' from a judge's reply; None when it names no winner."""
    match = _VERDICT.search(text)
    if match:
        return match.group(1).upper() if match.group(1).lower() != "tie" else "tie"
    bare = re.fullmatch(r"\W*(A|B)\W*", text.strip())
    return bare.group(1) if bare else None


def judge_win_rate(
    generator: Generator,
    requests: Sequence[str],
    ours: Sequence[str],
    theirs: Sequence[str],
    *,
    rubric: str = PAIRWISE_RUBRIC,
    max_new_tokens: int = 16,
) -> dict:
    """How often a judge prefers `ours` to `theirs`, each pair asked twice with the positions swapped.

    A win counts 1, a tie or an unreadable verdict 0.5, a loss 0; the rate is the mean over both
    orders, so a judge that always names the first position gives exactly 0.5. `position_bias` is
    the share of verdicts naming A.
    """
    queries, sides = [], []
    for request, a, b in zip(requests, ours, theirs):
        queries.append([{"role": "user", "content": rubric.format(request=request, a=a, b=b)}])
        sides.append("A")  # ours shown first
        queries.append([{"role": "user", "content": rubric.format(request=request, a=b, b=a)}])
        sides.append("B")  # ours shown second
    verdicts = [v[0].text for v in generator.generate(queries, SamplingParams(max_new_tokens=max_new_tokens))]
    points, named_a, unreadable = [], 0, 0
    for text, ours_side in zip(verdicts, sides):
        verdict = parse_pairwise_verdict(text)
        unreadable += verdict is None
        named_a += verdict == "A"
        points.append(0.5 if verdict in (None, "tie") else float(verdict == ours_side))
    return {
        "win_rate": round(sum(points) / max(1, len(points)), 4),
        "comparisons": len(points),
        "position_bias": round(named_a / max(1, len(points)), 4),
        "unreadable": unreadable,
    }
