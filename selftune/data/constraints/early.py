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

from selftune.data.constraints import checkers
from selftune.data.constraints.params import (
    ExactCount,
    FirstWordParams,
    LimitParams,
    NthParagraphParams,
    PhraseParams,
    RepeatParams,
)
from selftune.data.constraints.text import (
    WORD,
    bullet_lines,
    ifeval_words,
    lines,
    numbered_items,
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


def _completed_parts(text: str, separator: str) -> list[str]:
    """The parts of `text` before its last `separator`: more text cannot change them."""
    return re.split(separator, text)[:-1]


def _early_divided_paragraphs(text: str, p: ExactCount) -> bool:
    # A completed part that is empty between two dividers fails for good; each completed
    # non-empty part is one paragraph of the final answer.
    done = _completed_parts(text, r"\s?\*\*\*\s?")
    return any(not part.strip() for part in done[1:]) or sum(1 for part in done if part.strip()) > p.n


def _early_nth_paragraph(text: str, p: NthParagraphParams) -> bool:
    done = _completed_parts(text, r"\n\n")
    if sum(1 for part in done if part.strip()) > p.num_paragraphs:
        return True
    if len(done) < p.nth_paragraph:
        return False
    # The nth part (as the reference indexes it, empty parts included) is complete: its first word is final.
    return checkers.ifeval_first_word(done[p.nth_paragraph - 1]) != p.first_word.lower()


def _early_two_answers(text: str, p) -> bool:
    done = text.split("******")[:-1]
    return any(not part.strip() for part in done[1:]) or sum(1 for part in done if part.strip()) > 2


def _early_repeat(text: str, p: RepeatParams) -> bool:
    head, target = text.lstrip().lower(), p.prompt_to_repeat.strip().lower()
    return not (target.startswith(head) or head.startswith(target))


def _early_opening(opening: str) -> Callable[[str], bool]:
    def doomed(text: str) -> bool:
        head = text.lstrip()
        return not (opening.startswith(head) or head.startswith(opening))

    return doomed


def _completed_lines(text: str) -> list[str]:
    return lines(text[: text.rfind("\n") + 1])


def _early_headline(text: str, p: LimitParams) -> bool:
    head = text.lstrip()
    if "\n" not in head:
        return len(words(_settled(head))) > p.n
    return len(words(head[: head.index("\n")])) > p.n


EARLY_FAIL: dict[str, Callable[[str, Any], bool]] = {
    "lowercase": lambda text, p: text != text.lower(),
    "uppercase": lambda text, p: text != text.upper(),
    "no_commas": lambda text, p: "," in text,
    "word_count": _early_count(lambda text, p: len(ifeval_words(_settled(text)))),
    "sentence_count": _early_count(lambda text, p: len(sentences(text))),
    "paragraph_count": _early_paragraphs,
    "divided_paragraphs": _early_divided_paragraphs,
    "nth_paragraph_first_word": _early_nth_paragraph,
    "bullet_count": lambda text, p: len(bullet_lines(text)) > p.n,
    "json_format": lambda text, p: (
        bool(text.strip()) and text.lstrip()[0] not in '{["-0123456789tfnNI`'
    ),  # NaN, Infinity: Python's json
    "quoted": lambda text, p: bool(text.strip()) and text.lstrip()[0] != '"',
    "repeat_prompt": _early_repeat,
    "start_phrase": _early_start_phrase,
    "first_word": _early_first_word,
    "forbidden_words": lambda text, p: any(
        _settled_matches(rf"\b{re.escape(k)}\b", text, re.IGNORECASE) for k in p.keywords
    ),
    # A keyword occurrence, once written, stays one (the count is of substrings, as IFEval's).
    "keyword_frequency": _early_count(lambda text, p: len(re.findall(re.escape(p.keyword), text, re.IGNORECASE))),
    "letter_frequency": _early_count(lambda text, p: text.lower().count(p.letter.lower())),
    "capital_words": _early_count(lambda text, p: sum(1 for w in words(_settled(text)) if len(w) > 1 and w.isupper())),
    "two_answers": _early_two_answers,
    "no_exclamation": lambda text, p: "!" in text,
    "tag_wrapped": lambda text, p: bool(text.strip()) and _early_opening(f"<{p.tag}>")(text),
    "numbered_list": lambda text, p: (
        numbered_items(text) != list(range(1, len(numbered_items(text)) + 1)) or len(numbered_items(text)) > p.n
    ),
    "max_sentence_words": lambda text, p: any(len(words(s)) > p.n for s in sentences(text)[:-1]),
    "word_length_limit": lambda text, p: any(len(w) > p.n for w in re.findall(r"[A-Za-z]+", _settled(text))),
    "line_count": lambda text, p: len(_completed_lines(text)) > p.n,
    "headline": _early_headline,
    "paragraph_max_sentences": lambda text, p: any(len(sentences(part)) > p.n for part in paragraphs(text)[:-1]),
    "all_sentences_end_with_period": lambda text, p: any(not s.rstrip().endswith(".") for s in sentences(text)[:-1]),
}
