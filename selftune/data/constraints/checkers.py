"""One checker per constraint type: (text, validated params) -> passed."""

from __future__ import annotations

import json
import re

from selftune.data.constraints.params import (
    CountParams,
    ExactCount,
    FirstWordParams,
    KeywordFrequencyParams,
    KeywordsParams,
    LetterFrequencyParams,
    NoParams,
    OptionsParams,
    PhraseParams,
)
from selftune.data.constraints.text import (
    bullet_lines,
    compare,
    count_word,
    paragraphs,
    sentences,
    strip_code_fence,
    words,
)

# ---------------------------------------------------------------------------------------------
# Checkers: (text, params) -> passed
# ---------------------------------------------------------------------------------------------


def lowercase(text: str, p: NoParams) -> bool:
    return text == text.lower() and any(c.isalpha() for c in text)


def uppercase(text: str, p: NoParams) -> bool:
    return text == text.upper() and any(c.isalpha() for c in text)


def no_commas(text: str, p: NoParams) -> bool:
    return "," not in text and "，" not in text


def word_count(text: str, p: CountParams) -> bool:
    return compare(len(words(text)), p.relation, p.n)


def sentence_count(text: str, p: CountParams) -> bool:
    return compare(len(sentences(text)), p.relation, p.n)


def paragraph_count(text: str, p: ExactCount) -> bool:
    return len(paragraphs(text)) == p.n


def bullet_count(text: str, p: ExactCount) -> bool:
    return len(bullet_lines(text)) == p.n


def title(text: str, p: NoParams) -> bool:
    return re.search(r"<<[^\n<>]*\w[^\n<>]*>>", text) is not None


def json_format(text: str, p: NoParams) -> bool:
    try:
        json.loads(strip_code_fence(text))
    except ValueError:
        return False
    return True


def quoted(text: str, p: NoParams) -> bool:
    stripped = text.strip()
    return len(stripped) > 2 and stripped[0] == '"' and stripped[-1] == '"'


def end_phrase(text: str, p: PhraseParams) -> bool:
    return text.strip().endswith(p.phrase)


def start_phrase(text: str, p: PhraseParams) -> bool:
    return text.strip().startswith(p.phrase)


def first_word(text: str, p: FirstWordParams) -> bool:
    found = paragraphs(text)
    if len(found) < p.paragraph:
        return False
    first = words(found[p.paragraph - 1])
    return bool(first) and first[0].lower() == p.word.lower()


def include_keywords(text: str, p: KeywordsParams) -> bool:
    return all(count_word(text, k) > 0 for k in p.keywords)


def forbidden_words(text: str, p: KeywordsParams) -> bool:
    return all(count_word(text, k) == 0 for k in p.keywords)


def keyword_frequency(text: str, p: KeywordFrequencyParams) -> bool:
    return compare(count_word(text, p.keyword), p.relation, p.n)


def letter_frequency(text: str, p: LetterFrequencyParams) -> bool:
    return compare(text.lower().count(p.letter.lower()), p.relation, p.n)


def placeholders(text: str, p: ExactCount) -> bool:
    return len(re.findall(r"\[[^\[\]\n]+\]", text)) >= p.n


def postscript(text: str, p: PhraseParams) -> bool:
    return re.search(rf"(^|\n)\s*{re.escape(p.phrase)}\s*\S", text) is not None


def highlighted(text: str, p: ExactCount) -> bool:
    spans = re.findall(r"\*\*[^\n*]+\*\*|(?<![*\w])\*[^\n*\s][^\n*]*\*(?![*\w])", text)
    return len(spans) >= p.n


def numbered_sections(text: str, p: ExactCount) -> bool:
    found = re.findall(r"SECTION\s+(\d+)", text)
    return [int(x) for x in found] == list(range(1, p.n + 1))


def fixed_options(text: str, p: OptionsParams) -> bool:
    return sum(option in text for option in p.options) == 1


def two_answers(text: str, p: NoParams) -> bool:
    parts = [part.strip() for part in text.split("******")]
    return len(parts) == 2 and all(parts) and parts[0] != parts[1]


def capital_words(text: str, p: CountParams) -> bool:
    capitals = [w for w in words(text) if len(w) > 1 and w.isupper()]
    return compare(len(capitals), p.relation, p.n)
