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

The edits themselves live in `repair_layout` (what regroups or cuts the text: sentences,
paragraphs, lists, sections, word and line limits) and `repair_marks` (what adds or rewrites marks
on it: phrases, titles, case, punctuation, wrappers); this module holds the order they run in and
the loop that applies them.

Usage:
    from selftune.data.repair import repair_answer
    fixed = repair_answer(prompt_record, "The Sea Is Blue.", siblings=[...])
    fixed.text, fixed.repaired          # 'the sea is blue.', ['lowercase']
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from selftune.data import repair_layout as layout
from selftune.data import repair_marks as marks
from selftune.data.constraints.registry import check, validated_params
from selftune.data.constraints.text import words
from selftune.data.records import PromptRecord, SampleRecord
from selftune.scoring.base import is_complete, is_looping
from selftune.scoring.constraint import ConstraintScorer, ends_answer


@dataclass(frozen=True)
class Repaired:
    text: str
    repaired: list[str]  # the checks that were repaired, in order (e.g. ["complete", "lowercase"])

    @property
    def source(self) -> str:
        return "repair:" + "+".join(self.repaired)


# Order matters: first what shortens or regroups the text, then what adds to it, then what
# rewrites every character, then what wraps the whole answer.
REPAIRS: dict[str, Callable[[str, Any, dict], str | None]] = {
    "complete": layout.complete,
    "word_count": layout.word_count,
    "sentence_count": layout.sentence_count,
    "max_sentence_words": layout.max_sentence_words,
    "word_length_limit": layout.word_length_limit,
    "paragraph_count": layout.paragraph_count,
    "divided_paragraphs": layout.divided_paragraphs,
    "nth_paragraph_first_word": layout.nth_paragraph_first_word,
    "paragraph_max_sentences": layout.paragraph_max_sentences,
    "bullet_count": layout.bullet_count,
    "numbered_list": layout.numbered_list,
    "line_count": layout.line_count,
    "table_rows": layout.table_rows,
    "numbered_sections": layout.numbered_sections,
    "markdown_headers": layout.markdown_headers,
    "two_answers": layout.two_answers,
    "fixed_options": marks.fixed_options,
    "semicolons": marks.semicolons,
    "highlighted_sections": marks.highlighted,
    "bold_words": marks.bold_words,
    "bracketed_word": marks.bracketed_word,
    "capital_words": marks.capital_words,
    "placeholders": marks.placeholders,
    "blockquote": marks.blockquote,
    "end_with_question": marks.end_with_question,
    "hashtags": marks.hashtags,
    "postscript": marks.postscript,
    "sign_off": marks.sign_off,
    "first_word": marks.first_word,
    "start_phrase": marks.start_phrase,
    "headline": layout.headline,
    "title": marks.title,
    "keyword_in_title": marks.keyword_in_title,
    "end_phrase": marks.end_phrase,
    "forbidden_words": marks.forbidden_words,
    "no_commas": marks.no_commas,
    "no_exclamation": marks.no_exclamation,
    "all_sentences_end_with_period": marks.all_sentences_end_with_period,
    "lowercase": marks.lowercase,
    "uppercase": marks.uppercase,
    "repeat_prompt": marks.repeat_prompt,
    "quoted": marks.quoted,
    "code_block": marks.code_block,
    "tag_wrapped": marks.tag_wrapped,
    "json_format": marks.json_format,
}


def repairable(constraint_type: str) -> bool:
    return constraint_type in REPAIRS


def _failing(prompt: PromptRecord, text: str) -> set[str]:
    failing = {c.type for c in prompt.constraints if not check(c.type, text, c.kwargs)}
    if not ends_answer(prompt) and not is_complete(text):
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
    if not text.strip() or is_looping(text, scorer.max_repetition):
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
