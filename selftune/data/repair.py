"""Deterministic repairs: edit the model's own failing answer until every check passes.

A 135M model never writes some formats on its own (all lowercase, a quoted answer, two answers
split by `******`...), so rejection sampling alone yields no example of them and nothing teaches
them. A repair keeps the model's own words and changes only what a failed check names: it
lowercases, cuts an answer back to its last full sentence, wraps it in quotes, adds the asked-for
title, phrase or postscript, regroups its sentences into the asked-for paragraphs, bullets or
sections. The result is scored again and kept only when every check (quality checks included)
passes. A repaired answer is tagged with its origin (`chosen_source: repair:<checks>`) in the SFT
data and the pairs, and as a pair it makes a minimal contrast: chosen = the repair, rejected = the
failing original (`negative_source: original`).

Types whose repair would mostly produce odd text (letter counts, keyword counts, keywords to
include) have none; their examples come from sampling only.

Usage:
    from selftune.data.repair import repair_answer
    fixed = repair_answer(prompt_record, "The Sea Is Blue.", siblings=[...])
    fixed.text, fixed.repaired          # 'the sea is blue.', ['lowercase']
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from selftune.data.constraints.registry import check, validated_params
from selftune.data.constraints.text import bullet_lines, paragraphs, sentences, words
from selftune.data.records import PromptRecord, SampleRecord
from selftune.scoring.base import is_complete, repetition_rate
from selftune.scoring.constraint import ConstraintScorer

_SENTENCE_END = re.compile(r"[.!?][\"')\]*]*(?=\s|$)")


@dataclass(frozen=True)
class Repaired:
    text: str
    repaired: list[str]  # the checks that were repaired, in order (e.g. ["complete", "lowercase"])

    @property
    def source(self) -> str:
        return "repair:" + "+".join(self.repaired)


# ---------------------------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------------------------


def _cut_to_sentences(text: str) -> str | None:
    """`text` up to the end of its last full sentence, or None when it has none."""
    ends = list(_SENTENCE_END.finditer(text))
    return text[: ends[-1].end()].rstrip() if ends else None


def _sentence_list(text: str) -> list[str]:
    """Sentences of a flat reading of `text` (markup lines kept as they are)."""
    return [s.strip() for s in sentences(text) if s.strip()]


def _groups(items: list[str], count: int) -> list[list[str]]:
    """`items` in `count` consecutive groups of near-equal size (each non-empty)."""
    size, extra = divmod(len(items), count)
    out, start = [], 0
    for k in range(count):
        end = start + size + (1 if k < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def _strip_markers(text: str) -> str:
    text = re.sub(r"SECTION\s+\d+\s*", "", text)
    return re.sub(r"^\s*[*-]\s+", "", text, flags=re.MULTILINE)


# ---------------------------------------------------------------------------------------------
# Repairs: (text, params, context) -> repaired text or None
# ---------------------------------------------------------------------------------------------


def _complete(text: str, p, context) -> str | None:
    return text if is_complete(text) else _cut_to_sentences(text)


def _word_count(text: str, p, context) -> str | None:
    if p.relation != "at most":
        return None
    kept, total = [], 0
    for sentence in _sentence_list(text):
        count = len(words(sentence))
        if total + count > p.n:
            break
        kept.append(sentence)
        total += count
    if not kept:
        return None
    return " ".join(kept)


def _sentence_count(text: str, p, context) -> str | None:
    found = _sentence_list(text)
    if p.relation != "at most" or not found:
        return None
    return " ".join(found[: p.n])


def _paragraph_count(text: str, p, context) -> str | None:
    found = paragraphs(text)
    if len(found) > p.n:
        return "\n\n".join(found[: p.n])
    items = _sentence_list(_strip_markers(text))
    if len(items) < p.n:
        return None
    return "\n\n".join(" ".join(group) for group in _groups(items, p.n))


def _bullet_count(text: str, p, context) -> str | None:
    if len(bullet_lines(text)) > p.n:
        kept, seen = [], 0
        for line in text.splitlines():
            if re.match(r"^\s*[*-]\s+\S", line):
                seen += 1
                if seen > p.n:
                    continue
            kept.append(line)
        return "\n".join(kept)
    items = _sentence_list(_strip_markers(text))
    if len(items) < p.n:
        return None
    return "\n".join("* " + " ".join(group) for group in _groups(items, p.n))


def _numbered_sections(text: str, p, context) -> str | None:
    items = _sentence_list(_strip_markers(text))
    if len(items) < p.n:
        return None
    return "\n\n".join(f"SECTION {k}\n" + " ".join(group) for k, group in enumerate(_groups(items, p.n), start=1))


def _two_answers(text: str, p, context) -> str | None:
    first = text.split("******")[0].strip()
    others = [s.strip() for s in context["siblings"] if "******" not in s and s.strip() and s.strip() != first]
    others = [o for o in (_cut_to_sentences(s) for s in others) if o]
    if not first or not others:
        return None
    return f"{first}\n******\n{others[0]}"


def _title(text: str, p, context) -> str | None:
    head = words(text.split("\n")[0])[:5]
    if not head:
        return None
    title = " ".join(head)
    return f"<<{title[0].upper() + title[1:]}>>\n\n{text}"


def _lower_first(text: str) -> str:
    first = words(text)[:1]
    if first and (first[0] == "I" or first[0].isupper()) or not text:
        return text
    return text[0].lower() + text[1:]


def _first_word(text: str, p, context) -> str | None:
    if p.paragraph != 1:
        return None
    return f"{p.word.capitalize()} {_lower_first(text.lstrip())}"


def _start_phrase(text: str, p, context) -> str | None:
    return f"{p.phrase} {text.lstrip()}"


def _end_phrase(text: str, p, context) -> str | None:
    return f"{text.rstrip()} {p.phrase}"


def _postscript(text: str, p, context) -> str | None:
    return f"{text.rstrip()}\n\n{p.phrase} More on this soon."


_PLACEHOLDERS = ["[name]", "[place]", "[date]", "[time]", "[address]"]


def _placeholders(text: str, p, context) -> str | None:
    return f"{text.rstrip()}\n\nDetails: {' '.join(_PLACEHOLDERS[: p.n])}."


def _highlighted(text: str, p, context) -> str | None:
    chosen: list[str] = []
    for word in words(text):
        if len(word) >= 5 and word.isalpha() and word not in chosen:
            chosen.append(word)
        if len(chosen) == p.n:
            break
    if len(chosen) < p.n:
        return None
    for word in chosen:
        text = re.sub(rf"(?<![*\w]){re.escape(word)}(?![*\w])", f"*{word}*", text, count=1)
    return text


def _capital_words(text: str, p, context) -> str | None:
    if p.relation != "at least":
        return None
    chosen: list[str] = []
    for word in words(text):
        if len(word) >= 4 and word.isalpha() and not word.isupper() and word.lower() not in chosen:
            chosen.append(word.lower())
        if len(chosen) >= p.n:
            break
    if len(chosen) < p.n:
        return None
    for word in chosen:
        text = re.sub(rf"\b{re.escape(word)}\b", word.upper(), text, count=1, flags=re.IGNORECASE)
    return text


def _fixed_options(text: str, p, context) -> str | None:
    for option in p.options:
        text = text.replace(option, "")
    rest = text.strip()
    option = context["rng"].choice(p.options)
    return f"{option} {rest}" if rest else option


# A common-word synonym that keeps the sentence readable, where one exists; otherwise the word goes.
_SYNONYMS = {
    "the": "this",
    "is": "seems",
    "and": "plus",
    "very": "really",
    "good": "fine",
    "great": "fine",
    "you": "one",
    "this": "it",
    "that": "it",
}


def _forbidden_words(text: str, p, context) -> str | None:
    banned = {k.lower() for k in p.keywords}
    for keyword in p.keywords:
        substitute = _SYNONYMS.get(keyword.lower(), "")
        if substitute in banned:
            substitute = ""

        def replace(match, substitute=substitute):
            word = match.group()
            if not substitute:
                return ""
            return substitute.capitalize() if word[0].isupper() else substitute

        text = re.sub(rf"\b{re.escape(keyword)}\b", replace, text, flags=re.IGNORECASE)
    return re.sub(r"[ \t]{2,}", " ", re.sub(r" +([.,!?;:])", r"\1", text)).strip()


def _no_commas(text: str, p, context) -> str | None:
    return re.sub(r"[,，]\s*", " ", text).replace(" \n", "\n").strip()


def _lowercase(text: str, p, context) -> str | None:
    return text.lower()


def _uppercase(text: str, p, context) -> str | None:
    return text.upper()


def _quoted(text: str, p, context) -> str | None:
    return '"' + text.strip().strip('"').replace('"', "'") + '"'


def _json_format(text: str, p, context) -> str | None:
    return json.dumps({"answer": text.strip()}, ensure_ascii=False)


# Order matters: first what shortens or regroups the text, then what adds to it, then what
# rewrites every character, then what wraps the whole answer.
REPAIRS: dict[str, Callable[[str, Any, dict], str | None]] = {
    "complete": _complete,
    "word_count": _word_count,
    "sentence_count": _sentence_count,
    "paragraph_count": _paragraph_count,
    "bullet_count": _bullet_count,
    "numbered_sections": _numbered_sections,
    "two_answers": _two_answers,
    "fixed_options": _fixed_options,
    "highlighted_sections": _highlighted,
    "capital_words": _capital_words,
    "placeholders": _placeholders,
    "postscript": _postscript,
    "first_word": _first_word,
    "start_phrase": _start_phrase,
    "title": _title,
    "end_phrase": _end_phrase,
    "forbidden_words": _forbidden_words,
    "no_commas": _no_commas,
    "lowercase": _lowercase,
    "uppercase": _uppercase,
    "quoted": _quoted,
    "json_format": _json_format,
}


def repairable(constraint_type: str) -> bool:
    return constraint_type in REPAIRS


def _failing(prompt: PromptRecord, text: str) -> set[str]:
    failing = {c.type for c in prompt.constraints if not check(c.type, text, c.kwargs)}
    if not is_complete(text):
        failing.add("complete")
    return failing


def repair_answer(
    prompt: PromptRecord,
    text: str,
    *,
    siblings: list[str] = (),
    seed: int = 0,
    scorer: ConstraintScorer | None = None,
    passes: int = 3,
) -> Repaired | None:
    """The answer with every failing check repaired, or None when some failing check has no repair
    or the text still fails after `passes` rounds of repairs (a repair can break a check that
    passed before, e.g. a title pushing an answer over its word limit; the next round mends it).
    Every check, the quality checks included, is run on the result."""
    scorer = scorer or ConstraintScorer()
    if not text.strip() or repetition_rate(text) > scorer.max_repetition:
        return None
    context = {"siblings": list(siblings), "rng": random.Random(f"{seed}-{prompt.id}")}
    params = {c.type: validated_params(c.type, c.kwargs) for c in prompt.constraints}
    done: list[str] = []
    for _ in range(passes):
        failing = _failing(prompt, text)
        if not failing:
            break
        if not all(repairable(kind) for kind in failing):
            return None
        for kind, repair in REPAIRS.items():
            if kind not in failing:
                continue
            edited = repair(text, params.get(kind), context)
            if not edited or not edited.strip():
                return None
            text = edited
            if kind not in done:
                done.append(kind)
    if not done:
        return None
    [result] = scorer.score(prompt, [text])
    if not result.passed or len(words(text)) < 3:
        return None
    return Repaired(text, done)


def repair_candidates(samples: list[SampleRecord]) -> list[SampleRecord]:
    """A prompt's failing samples in the order repairs are tried: best score first, whole answers
    before cut ones, then shortest."""
    return sorted(
        samples,
        key=lambda s: (-s.score, getattr(s, "finish_reason", "stop") != "stop", len(s.completion), s.sample_index),
    )
