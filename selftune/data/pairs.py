"""Preference pairs with diverse negatives, each tagged with its source (used by `selftune.stages.pairs`).

Chosen: the best passing answer of the SFT model's own samples for the prompt, else the SFT
data's answer. Rejected, mixed by `pairs.sources` weights among the sources a prompt has:

    policy                     a failed sample of the SFT model on the same prompt
    base                       a failed sample of the base model (round-1 `sample` stage)
    corrupt:truncate           the chosen answer cut short
    corrupt:violate-constraint an edit of the chosen answer that breaks one of the prompt's
                               constraints (confirmed failing by the checker)
    corrupt:off-topic          a passing answer to another prompt
    corrupt:repeat             degenerate repetition of the chosen answer's opening
    corrupt:break-format       the chosen answer with its layout and markup flattened
    original                   a failing sample of the SFT model, paired under its own repair
                               (`selftune.data.repair`): a minimal contrast, the chosen side being
                               the repaired answer (`chosen_source: repair:<checks>`)

Every pair records `negative_source`, `chosen_source` (policy: the SFT model's passing sample;
sft-data: the SFT data's sampled answer; repair:<checks>: a repaired answer) and both scores; the
chosen must score higher than the rejected; pairs whose sides are near-identical (difflib ratio >=
`pairs.max_similarity`) are dropped and counted. Held-out pairs for evaluation are built the same
way from the eval prompts (sources: policy and corruptions; the base model is not sampled on eval
prompts).

Usage:
    from selftune.data.pairs import build_pairs, CORRUPTIONS
"""

from __future__ import annotations

import difflib
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from selftune.data.constraints.registry import check
from selftune.data.records import PairRecord, PromptRecord, SampleRecord
from selftune.data.repair import repair_answer, repair_candidates
from selftune.scoring.base import Scorer

Corruption = Callable[[str, PromptRecord, random.Random, dict], "str | None"]


def _truncate(text: str, prompt, rng, context) -> str | None:
    tokens = text.split(" ")
    if len(tokens) < 4:
        return None
    keep = max(1, int(len(tokens) * rng.uniform(0.2, 0.5)))
    return " ".join(tokens[:keep])


# Edits tried by violate-constraint; each keeps most of the answer but changes one property.
_EDITS: list[Callable[[str], str]] = [
    lambda t: t.upper(),
    lambda t: t.lower(),
    lambda t: t.capitalize() + " Also, Here Are Some Capitalized Words.",
    lambda t: re.sub(r"\s+", " ", t.replace(",", "")).strip(),
    lambda t: t.replace(". ", ", ").replace("\n", ", "),
    lambda t: t + "\n\nOne more thing, and another, and the end.",
    lambda t: "Well, here goes.\n\n" + t,
    lambda t: " ".join(t.split()[: max(1, len(t.split()) // 3)]),
    lambda t: (t + " ") * 3,
    lambda t: re.sub(r"[*<>\[\]\"{}]|SECTION \d+|P\.P?\.S\.?|\*{6}", "", t),
    lambda t: "\n".join(line for line in t.splitlines() if not re.match(r"^\s*[*-]\s", line)),
    lambda t: t + " the and is a of it very",
    lambda t: re.sub(r"[zqxjk]", "", t, flags=re.IGNORECASE),
    lambda t: t + " zzz qqq xxx jjj kkk zzz qqq xxx jjj kkk",
]


def _violate_constraint(text: str, prompt: PromptRecord, rng, context) -> str | None:
    constraints = list(prompt.constraints)
    rng.shuffle(constraints)
    edits = list(_EDITS)
    rng.shuffle(edits)
    for constraint in constraints:
        if not check(constraint.type, text, constraint.kwargs):
            continue
        for edit in edits:
            edited = edit(text)
            if edited.strip() and edited != text and not check(constraint.type, edited, constraint.kwargs):
                context["violated"] = constraint.type
                return edited
    return None


def _off_topic(text: str, prompt: PromptRecord, rng, context) -> str | None:
    others = [answer for pid, answer in context.get("passing_answers", {}).items() if pid != prompt.id]
    return rng.choice(others) if others else None


def _repeat(text: str, prompt, rng, context) -> str | None:
    words = text.split()
    if not words:
        return None
    opening = " ".join(words[: rng.randint(min(2, len(words)), min(6, len(words)))])  # a one-word answer too
    return " ".join([opening] * rng.randint(8, 16))


def _break_format(text: str, prompt, rng, context) -> str | None:
    """Flatten layout, markup and sentence punctuation into one run-on line."""
    flat = re.sub(r"[*#<>\[\]\"{}.,!?;:]|^\s*[-*]\s+", "", text, flags=re.MULTILINE)
    flat = re.sub(r"\s+", " ", flat).strip()
    return flat if flat and flat != text.strip() else None


_LAST_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?!.*\d)", re.DOTALL)


def _change_number(text: str, prompt, rng, context) -> str | None:
    """The same answer with its last number changed (a wrong final answer, everything else kept)."""
    found = _LAST_NUMBER.search(text)
    if found is None:
        return None
    value = float(found.group())
    changed = value + rng.choice([-1, 1]) * rng.randint(1, max(2, int(abs(value) // 4) or 2))
    written = str(int(changed)) if value.is_integer() and "." not in found.group() else f"{changed:.2f}"
    return text[: found.start()] + written + text[found.end() :]


# Negatives that differ from their chosen answer on purpose in one place (the scorer still has to
# score them lower): kept however similar the two texts are.
MINIMAL_CONTRASTS = ("original", "corrupt:change-number")

CORRUPTIONS: dict[str, Corruption] = {
    "truncate": _truncate,
    "violate-constraint": _violate_constraint,
    "off-topic": _off_topic,
    "repeat": _repeat,
    "break-format": _break_format,
    "change-number": _change_number,
}


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def prompt_messages(prompt: PromptRecord) -> list[dict]:
    return [m.model_dump() for m in prompt.messages]


@dataclass(frozen=True)
class Chosen:
    """A prompt's chosen answer and where it came from (`sample`, `sft-data`, `repair:<checks>`)."""

    text: str
    source: str


@dataclass(frozen=True)
class Contrast:
    """A failing answer and its repair: the minimal-contrast pair (repair over original)."""

    repaired: str
    source: str  # repair:<checks>
    original: str
    original_score: float


def contrasts_for(prompt: PromptRecord, failures: list[SampleRecord], limit: int, seed: int) -> list[Contrast]:
    """Up to `limit` minimal contrasts from a prompt's failing samples (`selftune.data.repair`)."""

    out: list[Contrast] = []
    texts = [s.completion for s in failures]
    for sample in repair_candidates(failures):
        if len(out) >= limit:
            break
        fixed = repair_answer(
            prompt, sample.completion, siblings=[t for t in texts if t != sample.completion], seed=seed
        )
        if fixed is not None:
            out.append(Contrast(fixed.text, fixed.source, sample.completion, sample.score))
    return out


NEGATIVE_SOURCES = ("policy", "base", "original")


def check_sources(weights: dict[str, float]) -> dict[str, float]:
    """`weights` unchanged, or ValueError naming unknown negative sources (also the config's check)."""
    unknown = [s for s in weights if s not in NEGATIVE_SOURCES and s.removeprefix("corrupt:") not in CORRUPTIONS]
    if unknown:
        raise ValueError(
            f"unknown negative sources {unknown}; known: {', '.join(NEGATIVE_SOURCES)}, "
            + ", ".join(f"corrupt:{name}" for name in CORRUPTIONS)
        )
    return weights


def build_pairs(
    prompts: list[PromptRecord],
    *,
    chosen: dict[str, Chosen],
    policy_failures: dict[str, list[SampleRecord]],
    base_failures: dict[str, list[SampleRecord]],
    scorer: Scorer,
    weights: dict[str, float],
    pairs_per_prompt: int,
    max_similarity: float,
    seed: int,
    contrasts: dict[str, list[Contrast]] | None = None,
) -> tuple[list[PairRecord], dict]:
    """Pairs for `prompts` with the given chosen answers and negative pools; returns (pairs, counts).

    Source `original` pairs a repaired answer over the failing answer it was repaired from
    (`contrasts`); every other source pairs the prompt's chosen answer over a negative. A prompt
    without a chosen answer falls back to its first contrast's repair."""
    check_sources(weights)
    contrasts = contrasts or {}
    rng = random.Random(seed)
    chosen = dict(chosen)
    for pid, pool in contrasts.items():
        if pid not in chosen and pool:
            chosen[pid] = Chosen(pool[0].repaired, pool[0].source)
    context: dict = {"passing_answers": {pid: c.text for pid, c in chosen.items()}}
    pairs: list[PairRecord] = []
    counts: Counter = Counter()
    chosen_counts: Counter = Counter()
    dropped: Counter = Counter()
    for prompt in prompts:
        if prompt.id not in chosen:
            dropped["no_chosen"] += 1
            continue
        main = chosen[prompt.id]
        [main_score] = scorer.score(prompt, [main.text])
        pools = {
            "policy": list(policy_failures.get(prompt.id, [])),
            "base": list(base_failures.get(prompt.id, [])),
            "original": list(contrasts.get(prompt.id, [])),
        }
        available = dict(weights)
        made = 0
        while made < pairs_per_prompt and available:
            names = list(available)
            source = rng.choices(names, [available[n] for n in names])[0]
            good, good_source, good_score = main.text, main.source, main_score.score
            if source in pools:
                if not pools[source]:
                    del available[source]
                    continue
                item = pools[source].pop(rng.randrange(len(pools[source])))
                if source == "original":
                    good, good_source, good_score = item.repaired, item.source, 1.0
                    bad, bad_score = item.original, item.original_score
                else:
                    bad, bad_score = item.completion, item.score
            else:
                del available[source]  # one pair per corruption per prompt
                bad = CORRUPTIONS[source.removeprefix("corrupt:")](good, prompt, rng, context)
                if bad is None:
                    dropped[f"{source}:not_applicable"] += 1
                    continue
                bad_score = scorer.score(prompt, [bad])[0].score
            if similarity(good.strip(), bad.strip()) >= max_similarity and source not in MINIMAL_CONTRASTS:
                dropped["near_identical"] += 1
                continue
            if good.strip() == bad.strip() or not good_score > bad_score:
                dropped["rejected_not_worse"] += 1
                continue
            pairs.append(
                PairRecord(
                    id=f"{prompt.id}-{made}",
                    prompt=prompt_messages(prompt),
                    chosen=[{"role": "assistant", "content": good}],
                    rejected=[{"role": "assistant", "content": bad}],
                    negative_source=source,
                    chosen_source=good_source,
                    chosen_score=good_score,
                    rejected_score=bad_score,
                )
            )
            counts[source] += 1
            chosen_counts[good_source.split(":")[0]] += 1
            made += 1
    return pairs, {
        "pairs": len(pairs),
        "by_source": dict(sorted(counts.items())),
        "by_chosen_source": dict(sorted(chosen_counts.items())),
        "dropped": dict(sorted(dropped.items())),
    }
