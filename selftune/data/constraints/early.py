"""Early failure: (prefix, params) -> True when no continuation of `prefix` can pass.

Sampling stops an answer as soon as its prefix fails one of these, and gives its slot to waiting
work. Each rule only looks at what more text cannot undo (a character already written, a word or
sentence already closed by what follows it), so an answer that would pass is never cut; the
property tests in tests/test_early_rejection.py check that on random texts and split points.
Types without a rule (a title, keywords to include, "at least" counts...) can always still pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from selftune.data.constraints.params import ExactCount, FirstWordParams, PhraseParams
from selftune.data.constraints.text import (
    WORD,
    bullet_lines,
    paragraphs,
    sentences,
    words,
)

# ---------------------------------------------------------------------------------------------
# Early failure: (prefix, params) -> True when no continuation of `prefix` can pass
# ---------------------------------------------------------------------------------------------
# Sampling stops an answer as soon as its prefix fails one of these, and gives its slot to waiting
# work. Each rule only looks at what more text cannot undo (a character already written, a word
# or sentence already closed by what follows it), so an answer that would pass is never cut; the
# property tests in tests/test_early_rejection.py check that on random texts and split points.
# Types without a rule (a title, keywords to include, "at least" counts...) can always still pass.


def _settled(text: str) -> str:
    """The part of `text` that more text cannot change the words of: up to its last whitespace."""
    cut = max(text.rfind(c) for c in " \t\n\r")
    return text[: cut + 1] if cut >= 0 else ""


def _settled_matches(pattern: str, text: str, flags: int = 0) -> list[re.Match]:
    """Matches of `pattern` followed by a character (so more text cannot extend or undo them)."""
    return [m for m in re.finditer(pattern, text, flags) if m.end() < len(text)]


def _early_count(count_settled: Callable[[str, Any], int]) -> Callable[[str, Any], bool]:
    """An "at most" bound fails early once the settled count exceeds it; "at least" never does."""
    return lambda text, p: getattr(p, "relation", "at most") == "at most" and count_settled(text, p) > p.n


def _early_paragraphs(text: str, p: ExactCount) -> bool:
    # Paragraphs and sentences only split further as text grows: every part of a prefix, the last
    # one too, stays at least one part of the whole answer.
    return len(paragraphs(text)) > p.n


def _early_first_word(text: str, p: FirstWordParams) -> bool:
    if p.paragraph != 1:
        return False
    stripped = text.lstrip()
    end = re.search(r"\n\s*\n", stripped)
    region = stripped[: end.start()] if end else stripped
    match = WORD.search(region)
    if match is None:
        return end is not None and bool(region.strip())  # a closed first paragraph without a word
    settled = end is not None or (match.end() < len(region) and region[match.end()].isspace())
    return settled and match.group().lower() != p.word.lower()


def _early_start_phrase(text: str, p: PhraseParams) -> bool:
    head = text.lstrip()
    return bool(head) and not (p.phrase.startswith(head) or head.startswith(p.phrase))


def _early_numbered_sections(text: str, p: ExactCount) -> bool:
    found = [int(m.group(1)) for m in _settled_matches(r"SECTION\s+(\d+)", text)]
    return found != list(range(1, len(found) + 1)) or len(found) > p.n


EARLY_FAIL: dict[str, Callable[[str, Any], bool]] = {
    "lowercase": lambda text, p: text != text.lower(),
    "uppercase": lambda text, p: text != text.upper(),
    "no_commas": lambda text, p: "," in text or "，" in text,
    "word_count": _early_count(lambda text, p: len(words(_settled(text)))),
    "sentence_count": _early_count(lambda text, p: len(sentences(text))),
    "paragraph_count": _early_paragraphs,
    "bullet_count": lambda text, p: len(bullet_lines(text)) > p.n,
    "json_format": lambda text, p: (
        bool(text.strip()) and text.lstrip()[0] not in '{["-0123456789tfnNI`'
    ),  # NaN, Infinity: Python's json
    "quoted": lambda text, p: bool(text.strip()) and text.lstrip()[0] != '"',
    "start_phrase": _early_start_phrase,
    "first_word": _early_first_word,
    "forbidden_words": lambda text, p: any(
        _settled_matches(rf"\b{re.escape(k)}\b", text, re.IGNORECASE) for k in p.keywords
    ),
    "keyword_frequency": _early_count(
        lambda text, p: len(_settled_matches(rf"\b{re.escape(p.keyword)}\b", text, re.IGNORECASE))
    ),
    "letter_frequency": _early_count(lambda text, p: text.lower().count(p.letter.lower())),
    "capital_words": _early_count(lambda text, p: sum(1 for w in words(_settled(text)) if len(w) > 1 and w.isupper())),
    "numbered_sections": _early_numbered_sections,
    "fixed_options": lambda text, p: sum(option in text for option in p.options) > 1,
    "two_answers": lambda text, p: text.count("******") > 1,
}
