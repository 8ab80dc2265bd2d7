"""Scorers: map (prompt record, completion) to a score in [0, 1] plus per-check details.

- `ConstraintScorer` (default): the prompt's verifiable constraints; score = share passed,
  pass = all passed.
- `JudgeScorer`: an LLM judge with a rubric, k samples averaged; the policy itself can judge
  (as in Self-Rewarding LMs) by handing it the policy's generator.
- `RewardModelScorer`: a sequence-classification reward model; sigmoid of its logit.

Usage:
    scorer = ConstraintScorer()
    [result] = scorer.score(prompt_record, ["all lowercase answer"])
    result.score, result.passed, result.checks     # 1.0, True, {'lowercase': True}
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from selftune.constraints import check
from selftune.errors import ConfigError
from selftune.generation import Generator, SamplingParams
from selftune.records import PromptRecord, SampleRecord, message_text


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
    return stripped.endswith(_TERMINAL) or re.match(r"^\s*([*-]|\d+[.)])\s+\S", last_line) is not None


def repetition_rate(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier one (0 for texts under 2n words)."""
    words = text.lower().split()
    grams = [tuple(words[k : k + n]) for k in range(len(words) - n + 1)]
    if len(words) < 2 * n:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


class ConstraintScorer:
    """The prompt's constraints plus, when `quality_checks`, two checks every answer must pass:
    `complete` (not cut off mid-sentence) and `no_repetition` (at most `max_repetition` of its
    4-grams repeat). Without them a truncated or looping answer that happens to satisfy the
    constraints would count as perfect."""

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
                checks["complete"] = is_complete(text)
                checks["no_repetition"] = repetition_rate(text) <= self.max_repetition
            passed = sum(checks.values())
            results.append(ScoreResult(passed / len(checks), passed == len(checks), checks))
        return results


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


class RewardModelScorer:
    """A sequence-classification reward model (one logit); score = sigmoid(logit)."""

    name = "reward-model"

    def __init__(self, model, tokenizer, *, pass_threshold: float = 0.5, batch_size: int = 8):
        self.model = model
        self.tokenizer = tokenizer
        self.pass_threshold = pass_threshold
        self.batch_size = batch_size
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id

    @torch.inference_mode()
    def score(self, prompt: PromptRecord, completions: Sequence[str]) -> list[ScoreResult]:
        messages = [m.model_dump() for m in prompt.messages]
        texts = [
            self.tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": c}], tokenize=False)
            for c in completions
        ]
        results = []
        device = next(self.model.parameters()).device
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            logits = self.model(**batch).logits[:, 0].float()  # (batch,)
            for logit in logits.tolist():
                value = 1 / (1 + math.exp(-logit))
                results.append(ScoreResult(value, value >= self.pass_threshold, {"reward_logit": logit}))
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


# ---------------------------------------------------------------------------------------------
# The configured scorer, and scoring a stage's answers
# ---------------------------------------------------------------------------------------------


def judges_with_policy(scorer_cfg) -> bool:
    """A judge with no model of its own judges with the policy model of the stage."""
    return scorer_cfg.kind == "judge" and scorer_cfg.judge_model is None


def make_scorer(cfg, generator: Generator | None):
    """The configured scorer; a judge without its own model judges with `generator` (the policy)."""
    scorer_cfg = cfg.sample.scorer
    if scorer_cfg.kind == "constraints":
        return contextlib.nullcontext(ConstraintScorer(quality_checks=scorer_cfg.quality_checks))
    if scorer_cfg.kind == "judge":
        if judges_with_policy(scorer_cfg):
            if generator is None:
                raise ConfigError(
                    "sample.scorer.kind=judge with no sample.scorer.judge_model judges with the policy "
                    "model, and this step has none loaded; set sample.scorer.judge_model"
                )
            return contextlib.nullcontext(
                JudgeScorer(generator, samples=scorer_cfg.judge_samples, pass_threshold=scorer_cfg.pass_threshold)
            )
        return _judge_from(scorer_cfg, cfg)
    return _reward_model_from(scorer_cfg, cfg)


@contextlib.contextmanager
def _judge_from(scorer_cfg, cfg):
    from selftune.generation import open_configured

    with open_configured(scorer_cfg.judge_model, cfg) as judge:
        yield JudgeScorer(judge, samples=scorer_cfg.judge_samples, pass_threshold=scorer_cfg.pass_threshold)


@contextlib.contextmanager
def _reward_model_from(scorer_cfg, cfg):
    from transformers import AutoModelForSequenceClassification

    from selftune.models import load_tokenizer, resolve_model_path, unload

    if not scorer_cfg.reward_model:
        raise ConfigError("sample.scorer.kind=reward-model needs sample.scorer.reward_model")
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(scorer_cfg.reward_model), use_safetensors=True, trust_remote_code=cfg.model.trust_remote_code
    )
    try:
        tokenizer = load_tokenizer(scorer_cfg.reward_model, trust_remote_code=cfg.model.trust_remote_code)
        yield RewardModelScorer(model.eval(), tokenizer, pass_threshold=scorer_cfg.pass_threshold)
    finally:
        unload(model)


def score_samples(prompts: list[PromptRecord], answers, scorer: Scorer, model_name: str) -> list[SampleRecord]:
    rows = []
    for prompt, completions in zip(prompts, answers):
        results = scorer.score(prompt, [c.text for c in completions])
        for completion, result in zip(completions, results):
            rows.append(
                SampleRecord(
                    prompt_id=prompt.id,
                    model=model_name,
                    completion=completion.text,
                    score=result.score,
                    checks=result.checks,
                    sample_index=completion.sample_index,
                    seed=completion.seed,
                    finish_reason=completion.finish_reason,
                    completion_tokens=completion.completion_tokens,
                    **({"rejected_by": completion.rejected_by} if completion.rejected_by else {}),
                )
            )
    return rows
