"""Verifiable constraints, in the style of IFEval (Zhou et al. 2023), written for selftune.

Each type has a parameter schema (a pydantic model), an instruction sentence rendered from its
parameters, a checker, and pools of parameter values split into `train` and `eval` so that held-out
prompts use values never seen in training.

Usage:
    from selftune.constraints import check, describe, CONSTRAINTS
    describe("word_count", {"relation": "at most", "n": 50})   # 'Answer with at most 50 words.'
    check("word_count", "Two words.", {"relation": "at most", "n": 50})  # True
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

Relation = Literal["at least", "at most"]


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoParams(Params):
    pass


class CountParams(Params):
    relation: Relation = Field(description="Whether n is a floor or a ceiling.")
    n: int = Field(ge=0, description="The bound.")


class ExactCount(Params):
    n: int = Field(ge=1, description="The exact count required.")


class PhraseParams(Params):
    phrase: str = Field(min_length=1, description="Exact text required.")


class KeywordsParams(Params):
    keywords: list[str] = Field(min_length=1, description="Words to include or avoid.")


class KeywordFrequencyParams(CountParams):
    keyword: str = Field(min_length=1, description="The counted word.")


class LetterFrequencyParams(CountParams):
    letter: str = Field(min_length=1, max_length=1, description="The counted letter (case-insensitive).")


class FirstWordParams(Params):
    paragraph: int = Field(ge=1, description="1-based paragraph number.")
    word: str = Field(min_length=1, description="Required first word of that paragraph.")


class OptionsParams(Params):
    options: list[str] = Field(min_length=2, description="Allowed answers; exactly one must appear.")


# ---------------------------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------------------------

_WORD = re.compile(r"\b[\w'-]+\b")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def sentences(text: str) -> list[str]:
    # A sentence ends at . ! or ? followed by whitespace or the end; bullets and lines count too.
    parts = re.split(r"(?<=[.!?])\s+|\n+", text.strip())
    return [p for p in parts if re.search(r"\w", p)]


def bullet_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"^\s*[*-]\s+\S", line)]


def _compare(count: int, relation: str, n: int) -> bool:
    return count >= n if relation == "at least" else count <= n


def _count_word(text: str, word: str) -> int:
    return len(re.findall(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE))


def _strip_code_fence(text: str) -> str:
    stripped = text.strip()
    match = re.fullmatch(r"```(?:json|JSON)?\s*\n?(.*?)\n?```", stripped, flags=re.DOTALL)
    return match.group(1) if match else stripped


# ---------------------------------------------------------------------------------------------
# Checkers: (text, params) -> passed
# ---------------------------------------------------------------------------------------------


def _lowercase(text: str, p: NoParams) -> bool:
    return text == text.lower() and any(c.isalpha() for c in text)


def _uppercase(text: str, p: NoParams) -> bool:
    return text == text.upper() and any(c.isalpha() for c in text)


def _no_commas(text: str, p: NoParams) -> bool:
    return "," not in text and "，" not in text


def _word_count(text: str, p: CountParams) -> bool:
    return _compare(len(words(text)), p.relation, p.n)


def _sentence_count(text: str, p: CountParams) -> bool:
    return _compare(len(sentences(text)), p.relation, p.n)


def _paragraph_count(text: str, p: ExactCount) -> bool:
    return len(paragraphs(text)) == p.n


def _bullet_count(text: str, p: ExactCount) -> bool:
    return len(bullet_lines(text)) == p.n


def _title(text: str, p: NoParams) -> bool:
    return re.search(r"<<[^\n<>]*\w[^\n<>]*>>", text) is not None


def _json_format(text: str, p: NoParams) -> bool:
    try:
        json.loads(_strip_code_fence(text))
    except ValueError:
        return False
    return True


def _quoted(text: str, p: NoParams) -> bool:
    stripped = text.strip()
    return len(stripped) > 2 and stripped[0] == '"' and stripped[-1] == '"'


def _end_phrase(text: str, p: PhraseParams) -> bool:
    return text.strip().endswith(p.phrase)


def _start_phrase(text: str, p: PhraseParams) -> bool:
    return text.strip().startswith(p.phrase)


def _first_word(text: str, p: FirstWordParams) -> bool:
    found = paragraphs(text)
    if len(found) < p.paragraph:
        return False
    first = words(found[p.paragraph - 1])
    return bool(first) and first[0].lower() == p.word.lower()


def _include_keywords(text: str, p: KeywordsParams) -> bool:
    return all(_count_word(text, k) > 0 for k in p.keywords)


def _forbidden_words(text: str, p: KeywordsParams) -> bool:
    return all(_count_word(text, k) == 0 for k in p.keywords)


def _keyword_frequency(text: str, p: KeywordFrequencyParams) -> bool:
    return _compare(_count_word(text, p.keyword), p.relation, p.n)


def _letter_frequency(text: str, p: LetterFrequencyParams) -> bool:
    return _compare(text.lower().count(p.letter.lower()), p.relation, p.n)


def _placeholders(text: str, p: ExactCount) -> bool:
    return len(re.findall(r"\[[^\[\]\n]+\]", text)) >= p.n


def _postscript(text: str, p: PhraseParams) -> bool:
    return re.search(rf"(^|\n)\s*{re.escape(p.phrase)}\s*\S", text) is not None


def _highlighted(text: str, p: ExactCount) -> bool:
    spans = re.findall(r"\*\*[^\n*]+\*\*|(?<![*\w])\*[^\n*\s][^\n*]*\*(?![*\w])", text)
    return len(spans) >= p.n


def _numbered_sections(text: str, p: ExactCount) -> bool:
    found = re.findall(r"SECTION\s+(\d+)", text)
    return [int(x) for x in found] == list(range(1, p.n + 1))


def _fixed_options(text: str, p: OptionsParams) -> bool:
    return sum(option in text for option in p.options) == 1


def _two_answers(text: str, p: NoParams) -> bool:
    parts = [part.strip() for part in text.split("******")]
    return len(parts) == 2 and all(parts) and parts[0] != parts[1]


def _capital_words(text: str, p: CountParams) -> bool:
    capitals = [w for w in words(text) if len(w) > 1 and w.isupper()]
    return _compare(len(capitals), p.relation, p.n)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

Pools = dict[str, dict[str, list[Any]]]  # param -> split -> values


@dataclass(frozen=True)
class ConstraintType:
    name: str
    params: type[Params]
    template: Callable[[Any], str]  # params -> instruction sentence
    checker: Callable[[str, Any], bool]
    pools: Pools = field(default_factory=dict)  # values to draw per split
    conflicts: frozenset[str] = frozenset()  # types that cannot be combined with this one
    whole_answer: bool = False  # dictates the whole answer's shape: never combined

    def sample_kwargs(self, rng: random.Random, split: str) -> dict[str, Any]:
        return {name: rng.choice(values[split]) for name, values in self.pools.items()}


def _rel(pool_train: list[int], pool_eval: list[int], relation: str | None = None) -> Pools:
    relations = [relation] if relation else ["at least", "at most"]
    return {"relation": {"train": relations, "eval": relations}, "n": {"train": pool_train, "eval": pool_eval}}


_CASE = frozenset({"lowercase", "uppercase", "capital_words"})
_TYPES = [
    ConstraintType("lowercase", NoParams, lambda p: "Your entire answer must be in lowercase letters; no capital letters are allowed.", _lowercase,
                   conflicts=_CASE | {"numbered_sections", "postscript", "end_phrase", "start_phrase"}),
    ConstraintType("uppercase", NoParams, lambda p: "Your entire answer must be in English capital letters only.", _uppercase,
                   conflicts=_CASE | {"end_phrase", "start_phrase", "first_word", "postscript", "placeholders"}),
    ConstraintType("no_commas", NoParams, lambda p: "Do not use any commas in your answer.", _no_commas),
    ConstraintType("word_count", CountParams, lambda p: f"Answer with {p.relation} {p.n} words.", _word_count,
                   pools=_rel([30, 50, 80, 120], [40, 60, 100])),
    ConstraintType("sentence_count", CountParams, lambda p: f"Your answer must contain {p.relation} {p.n} sentences.", _sentence_count,
                   pools=_rel([2, 3, 5], [4, 6])),
    ConstraintType("paragraph_count", ExactCount, lambda p: f"Write exactly {p.n} paragraphs, separated from each other by a blank line.", _paragraph_count,
                   pools={"n": {"train": [2, 3], "eval": [4]}}, conflicts=frozenset({"bullet_count", "first_word"})),
    ConstraintType("bullet_count", ExactCount, lambda p: f"Your answer must contain exactly {p.n} bullet points, each on its own line starting with '* '.", _bullet_count,
                   pools={"n": {"train": [2, 3, 5], "eval": [4]}}, conflicts=frozenset({"paragraph_count"})),
    ConstraintType("title", NoParams, lambda p: "Give your answer a title wrapped in double angular brackets, such as <<my title>>.", _title),
    ConstraintType("json_format", NoParams, lambda p: "Your entire output must be valid JSON; you may wrap it in a ```json code block.", _json_format,
                   whole_answer=True),
    ConstraintType("quoted", NoParams, lambda p: "Wrap your entire answer in double quotation marks.", _quoted,
                   conflicts=frozenset({"end_phrase", "postscript", "start_phrase", "first_word", "title"})),
    ConstraintType("end_phrase", PhraseParams, lambda p: f"Finish your answer with the exact phrase \"{p.phrase}\" and write nothing after it.", _end_phrase,
                   pools={"phrase": {"train": ["Is there anything else I can help with?", "That is all.", "Thank you for reading."],
                                     "eval": ["Let me know if you have additional questions.", "Hope this helps."]}},
                   conflicts=frozenset({"postscript", "quoted"})),
    ConstraintType("start_phrase", PhraseParams, lambda p: f"Begin your answer with the exact words \"{p.phrase}\".", _start_phrase,
                   pools={"phrase": {"train": ["Sure thing.", "Here is my answer:", "Great question!"], "eval": ["Certainly.", "Of course:"]}},
                   conflicts=frozenset({"title", "quoted", "first_word"})),
    ConstraintType("first_word", FirstWordParams, lambda p: f"The first word of paragraph {p.paragraph} of your answer must be \"{p.word}\".", _first_word,
                   pools={"paragraph": {"train": [1], "eval": [1]}, "word": {"train": ["today", "first", "imagine", "yes"], "eval": ["well", "once"]}},
                   conflicts=frozenset({"start_phrase", "title", "quoted", "paragraph_count"})),
    ConstraintType("include_keywords", KeywordsParams, lambda p: "Include the keywords " + ", ".join(f"\"{k}\"" for k in p.keywords) + " in your answer.", _include_keywords,
                   pools={"keywords": {"train": [["light"], ["river", "stone"], ["friend"], ["green", "time"]], "eval": [["silver"], ["bridge", "cloud"]]}}),
    ConstraintType("forbidden_words", KeywordsParams, lambda p: "Do not include the words " + ", ".join(f"\"{k}\"" for k in p.keywords) + " in your answer.", _forbidden_words,
                   pools={"keywords": {"train": [["the"], ["and", "very"], ["is"]], "eval": [["a", "of"], ["it"]]}}),
    ConstraintType("keyword_frequency", KeywordFrequencyParams, lambda p: f"The word \"{p.keyword}\" should appear {p.relation} {p.n} times in your answer.", _keyword_frequency,
                   pools={"relation": {"train": ["at least"], "eval": ["at least"]}, "n": {"train": [2, 3], "eval": [4]},
                          "keyword": {"train": ["water", "people", "good"], "eval": ["story", "world"]}}),
    ConstraintType("letter_frequency", LetterFrequencyParams, lambda p: f"The letter \"{p.letter}\" should appear {p.relation} {p.n} times in your answer.", _letter_frequency,
                   pools={"relation": {"train": ["at least", "at most"], "eval": ["at least", "at most"]}, "n": {"train": [5, 10], "eval": [8]},
                          "letter": {"train": ["z", "q", "x"], "eval": ["j", "k"]}}),
    ConstraintType("placeholders", ExactCount, lambda p: f"Your answer must contain at least {p.n} placeholders in square brackets, such as [address].", _placeholders,
                   pools={"n": {"train": [1, 2], "eval": [3]}}),
    ConstraintType("postscript", PhraseParams, lambda p: f"At the end of your answer, add a postscript starting with {p.phrase}", _postscript,
                   pools={"phrase": {"train": ["P.S."], "eval": ["P.P.S"]}}, conflicts=frozenset({"end_phrase", "quoted"})),
    ConstraintType("highlighted_sections", ExactCount, lambda p: f"Highlight at least {p.n} sections of your answer with markdown, for example *highlighted section*.", _highlighted,
                   pools={"n": {"train": [1, 2], "eval": [3]}}),
    ConstraintType("numbered_sections", ExactCount, lambda p: f"Your answer must have {p.n} sections. Mark the beginning of each section with SECTION X, such as: SECTION 1, SECTION 2.", _numbered_sections,
                   pools={"n": {"train": [2, 3], "eval": [4]}}),
    ConstraintType("fixed_options", OptionsParams, lambda p: "Answer with one of the following options: " + ", ".join(f"\"{o}\"" for o in p.options) + ".", _fixed_options,
                   pools={"options": {"train": [["My answer is yes.", "My answer is no.", "My answer is maybe."]],
                                      "eval": [["I think yes.", "I think no.", "I am not sure."]]}}, whole_answer=True),
    ConstraintType("two_answers", NoParams, lambda p: "Give two different answers. Separate them with six asterisks, like this: ******", _two_answers,
                   whole_answer=True),
    ConstraintType("capital_words", CountParams, lambda p: f"Use words in all capital letters {p.relation} {p.n} times to stress important points.", _capital_words,
                   pools=_rel([2, 3], [4], "at least")),
]
CONSTRAINTS: dict[str, ConstraintType] = {t.name: t for t in _TYPES}


def _lookup(name: str) -> ConstraintType:
    try:
        return CONSTRAINTS[name]
    except KeyError:
        raise ValueError(f"unknown constraint type {name!r}; known: {', '.join(CONSTRAINTS)}") from None


def parse_params(name: str, kwargs: dict[str, Any]) -> Params:
    return _lookup(name).params.model_validate(kwargs)


def describe(name: str, kwargs: dict[str, Any]) -> str:
    """The instruction sentence for a constraint."""
    kind = _lookup(name)
    return kind.template(kind.params.model_validate(kwargs))


def check(name: str, text: str, kwargs: dict[str, Any]) -> bool:
    """Does `text` satisfy the constraint?"""
    kind = _lookup(name)
    return kind.checker(text, kind.params.model_validate(kwargs))


def compatible(names: list[str], candidate: str) -> bool:
    """Can `candidate` join a prompt that already has constraints `names`?"""
    kind = CONSTRAINTS[candidate]
    if candidate in names:
        return False
    for other in names:
        other_kind = CONSTRAINTS[other]
        if kind.whole_answer or other_kind.whole_answer:
            return False
        if other in kind.conflicts or candidate in other_kind.conflicts:
            return False
    return True


def loose_variants(text: str) -> list[str]:
    """IFEval's loose reading: the text, without its first line, without its last line, without
    both, each also with '*' removed (markdown emphasis that a strict reader would count)."""
    lines = text.split("\n")
    bases = [text, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    variants = []
    for base in bases:
        for candidate in (base, base.replace("*", "")):
            if candidate and candidate not in variants:
                variants.append(candidate)
    return variants


def check_loose(name: str, text: str, kwargs: dict[str, Any]) -> bool:
    return any(check(name, variant, kwargs) for variant in loose_variants(text))
