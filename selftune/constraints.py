"""Verifiable constraints, in the style of IFEval (Zhou et al. 2023), written for selftune.

Each type has a parameter schema (a pydantic model), several wordings of its instruction rendered
from its parameters, a checker, and pools of parameter values. Wordings and values are split into
`train` and `eval`, so that held-out prompts use values and phrasings never seen in training.

Usage:
    from selftune.constraints import check, describe, CONSTRAINTS
    describe("word_count", {"relation": "at most", "n": 50})   # 'Answer with at most 50 words.'
    describe("word_count", {"relation": "at most", "n": 50}, "eval-1")
    # 'Make sure your response contains at most 50 words.'
    check("word_count", "Two words.", {"relation": "at most", "n": 50})  # True
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

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
    match = _WORD.search(region)
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


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

Pools = dict[str, dict[str, list[Any]]]  # param -> split -> values
Wordings = dict[str, list[str]]  # split -> instruction templates (str.format over `fields`)


def _default_fields(p: Params) -> dict[str, Any]:
    return p.model_dump()


def _quoted_list(values: list[str]) -> str:
    return ", ".join(f'"{v}"' for v in values)


@dataclass(frozen=True)
class ConstraintType:
    name: str
    params: type[Params]
    # Several wordings of the instruction per split: `eval` wordings never occur in `train`, so a
    # gain on eval prompts shows the model follows the request however it is worded.
    wordings: Wordings
    checker: Callable[[str, Any], bool]
    pools: Pools = field(default_factory=dict)  # values to draw per split
    conflicts: frozenset[str] = frozenset()  # types that cannot be combined with this one
    whole_answer: bool = False  # dictates the whole answer's shape: never combined
    fields: Callable[[Any], dict[str, Any]] = _default_fields  # params -> template fields

    def sample_kwargs(self, rng: random.Random, split: str) -> dict[str, Any]:
        return {name: rng.choice(values[split]) for name, values in self.pools.items()}

    def wording_ids(self, split: str) -> list[str]:
        return [f"{split}-{k}" for k in range(len(self.wordings[split]))]

    def render(self, params: Params, wording: str = "train-0") -> str:
        split, _, index = wording.partition("-")
        try:
            template = self.wordings[split][int(index)]
        except (KeyError, ValueError, IndexError):
            raise ValueError(
                f"constraint {self.name}: no wording {wording!r}; known: "
                f"{', '.join(self.wording_ids('train') + self.wording_ids('eval'))}"
            ) from None
        return template.format(**self.fields(params))


def _rel(pool_train: list[int], pool_eval: list[int], relation: str | None = None) -> Pools:
    relations = [relation] if relation else ["at least", "at most"]
    return {"relation": {"train": relations, "eval": relations}, "n": {"train": pool_train, "eval": pool_eval}}


def _keywords(p: KeywordsParams) -> dict[str, Any]:
    return {"keywords": _quoted_list(p.keywords)}


def _options(p: OptionsParams) -> dict[str, Any]:
    return {"options": _quoted_list(p.options)}


# Parameter values of the eval split never occur in train (other bounds, words, phrases, letters),
# and none is copied from IFEval's own parameter values, so a gain on IFEval is not memorised.
_CASE = frozenset({"lowercase", "uppercase", "capital_words"})
_TYPES = [
    ConstraintType(
        "lowercase",
        NoParams,
        {
            "train": [
                "Your entire answer must be in lowercase letters; no capital letters are allowed.",
                "Write everything in lowercase, without a single capital letter.",
                "Use only lowercase letters in your whole response.",
                "Do not use any uppercase letters: the whole reply must be lowercase.",
            ],
            "eval": [
                "Please keep your full response in all lowercase characters, with no capitals anywhere.",
                "Every letter you write should be a small letter, never a capital one.",
            ],
        },
        _lowercase,
        conflicts=_CASE | {"numbered_sections", "postscript", "end_phrase", "start_phrase"},
    ),
    ConstraintType(
        "uppercase",
        NoParams,
        {
            "train": [
                "Your entire answer must be in English capital letters only.",
                "Write your whole response in ALL CAPS.",
                "Use only uppercase letters throughout your answer.",
                "Every letter of your reply must be a capital letter.",
            ],
            "eval": [
                "Respond entirely in capital letters, with no lowercase letters at all.",
                "Your full reply should be written in uppercase.",
            ],
        },
        _uppercase,
        conflicts=_CASE | {"end_phrase", "start_phrase", "first_word", "postscript", "placeholders"},
    ),
    ConstraintType(
        "no_commas",
        NoParams,
        {
            "train": [
                "Do not use any commas in your answer.",
                "Write your answer without a single comma.",
                "Commas are not allowed anywhere in your response.",
                "Avoid commas entirely.",
            ],
            "eval": [
                "Refrain from using any commas in your entire reply.",
                "Your response must contain no commas at all.",
            ],
        },
        _no_commas,
    ),
    ConstraintType(
        "word_count",
        CountParams,
        {
            "train": [
                "Answer with {relation} {n} words.",
                "Your response should be {relation} {n} words long.",
                "Use {relation} {n} words in your answer.",
                "Write {relation} {n} words.",
            ],
            "eval": [
                "The length of your reply must be {relation} {n} words.",
                "Make sure your response contains {relation} {n} words.",
            ],
        },
        _word_count,
        pools=_rel([15, 20, 30, 50, 70, 80], [25, 40, 60]),
    ),
    ConstraintType(
        "sentence_count",
        CountParams,
        {
            "train": [
                "Your answer must contain {relation} {n} sentences.",
                "Write {relation} {n} sentences.",
                "Use {relation} {n} sentences in your response.",
            ],
            "eval": ["Your reply should consist of {relation} {n} sentences.", "Respond in {relation} {n} sentences."],
        },
        _sentence_count,
        pools=_rel([2, 3, 5, 8], [4, 6]),
    ),
    ConstraintType(
        "paragraph_count",
        ExactCount,
        {
            "train": [
                "Write exactly {n} paragraphs, separated from each other by a blank line.",
                "Your answer must have exactly {n} paragraphs, with an empty line between paragraphs.",
                "Split your response into exactly {n} paragraphs separated by blank lines.",
            ],
            "eval": [
                "Structure your reply as precisely {n} paragraphs, leaving one blank line between "
                "consecutive paragraphs.",
                "There should be {n} paragraphs in total, divided by empty lines.",
            ],
        },
        _paragraph_count,
        pools={"n": {"train": [2, 3, 5], "eval": [4]}},
        conflicts=frozenset({"bullet_count", "first_word"}),
    ),
    ConstraintType(
        "bullet_count",
        ExactCount,
        {
            "train": [
                "Your answer must contain exactly {n} bullet points, each on its own line starting with '* '.",
                "Use exactly {n} markdown bullet points (lines starting with '* ').",
                "Give exactly {n} bullet points, each line beginning with '* '.",
            ],
            "eval": [
                "Format your reply as precisely {n} bullet points, one per line, each starting "
                "with an asterisk and a space.",
                "Your response should have {n} bullet points, no more and no fewer, written as "
                "lines that begin with '* '.",
            ],
        },
        _bullet_count,
        pools={"n": {"train": [2, 3, 5, 6], "eval": [4, 7]}},
        conflicts=frozenset({"paragraph_count"}),
    ),
    ConstraintType(
        "title",
        NoParams,
        {
            "train": [
                "Give your answer a title wrapped in double angular brackets, such as <<my title>>.",
                "Start with a title in double angular brackets, like <<a short title>>.",
                "Include a title inside double angle brackets, for example <<a day out>>.",
            ],
            "eval": [
                "Your reply must carry a title enclosed in double angular brackets, i.e. <<song of the hills>>.",
                "Put a title at the top, enclosed in << and >>.",
            ],
        },
        _title,
    ),
    ConstraintType(
        "json_format",
        NoParams,
        {
            "train": [
                "Your entire output must be valid JSON; you may wrap it in a ```json code block.",
                "Format your whole answer as JSON.",
                "Respond only with valid JSON.",
            ],
            "eval": [
                "Wrap the entire reply in JSON format.",
                "The whole response should be one valid JSON value, optionally inside markdown code ticks.",
            ],
        },
        _json_format,
        whole_answer=True,
    ),
    ConstraintType(
        "quoted",
        NoParams,
        {
            "train": [
                "Wrap your entire answer in double quotation marks.",
                "Put your whole response inside double quotes.",
                "Enclose the entire answer in double quotation marks.",
            ],
            "eval": [
                "Your full reply must begin and end with a double quotation mark.",
                "Surround everything you write with double quotes.",
            ],
        },
        _quoted,
        conflicts=frozenset({"end_phrase", "postscript", "start_phrase", "first_word", "title"}),
    ),
    ConstraintType(
        "end_phrase",
        PhraseParams,
        {
            "train": [
                'Finish your answer with the exact phrase "{phrase}" and write nothing after it.',
                'End your response with "{phrase}"; no other words should follow it.',
                'Your answer must end with the exact words "{phrase}".',
            ],
            "eval": [
                'Close your reply with this exact phrase: "{phrase}". Nothing may come after it.',
                'The very last words of your response must be "{phrase}".',
            ],
        },
        _end_phrase,
        pools={
            "phrase": {
                "train": ["That is all.", "Thank you for reading.", "See you soon.", "The end.", "Have a nice day."],
                "eval": ["Hope this helps.", "Until next time.", "Take care."],
            }
        },
        conflicts=frozenset({"postscript", "quoted"}),
    ),
    ConstraintType(
        "start_phrase",
        PhraseParams,
        {
            "train": [
                'Begin your answer with the exact words "{phrase}".',
                'Start your response with "{phrase}".',
                'The first words of your answer must be "{phrase}".',
            ],
            "eval": [
                'Open your reply with this exact phrase: "{phrase}".',
                'Your response must start with the words "{phrase}".',
            ],
        },
        _start_phrase,
        pools={
            "phrase": {
                "train": ["Sure thing.", "Here is my answer:", "Great question!", "Let me explain.", "Good morning!"],
                "eval": ["Certainly.", "Of course:", "Here goes:"],
            }
        },
        conflicts=frozenset({"title", "quoted", "first_word"}),
    ),
    ConstraintType(
        "first_word",
        FirstWordParams,
        {
            "train": [
                'The first word of paragraph {paragraph} of your answer must be "{word}".',
                'Paragraph {paragraph} must start with the word "{word}".',
            ],
            "eval": [
                'Make sure the opening word of paragraph {paragraph} is "{word}".',
                'Paragraph {paragraph} of your reply should begin with the word "{word}".',
            ],
        },
        _first_word,
        pools={
            "paragraph": {"train": [1], "eval": [1]},
            "word": {
                "train": ["today", "first", "imagine", "yes", "sometimes", "every"],
                "eval": ["well", "once", "honestly"],
            },
        },
        conflicts=frozenset({"start_phrase", "title", "quoted", "paragraph_count"}),
    ),
    ConstraintType(
        "include_keywords",
        KeywordsParams,
        {
            "train": [
                "Include the keywords {keywords} in your answer.",
                "Make sure to use the words {keywords}.",
                "Your response must mention {keywords}.",
            ],
            "eval": [
                "Be sure to incorporate the keywords {keywords} into your reply.",
                "The words {keywords} must appear in your response.",
            ],
        },
        _include_keywords,
        fields=_keywords,
        pools={
            "keywords": {
                "train": [
                    ["light"],
                    ["river", "stone"],
                    ["friend"],
                    ["green", "time"],
                    ["window"],
                    ["music", "road"],
                    ["morning"],
                ],
                "eval": [["silver"], ["bridge", "cloud"], ["garden", "letter"]],
            }
        },
    ),
    ConstraintType(
        "forbidden_words",
        KeywordsParams,
        {
            "train": [
                "Do not include the words {keywords} in your answer.",
                "Avoid using the words {keywords}.",
                "The words {keywords} must not appear in your response.",
            ],
            "eval": [
                "Never use the words {keywords} anywhere in your reply.",
                "Your response is not allowed to contain the words {keywords}.",
            ],
        },
        _forbidden_words,
        fields=_keywords,
        pools={
            "keywords": {
                "train": [["the"], ["and", "very"], ["is"], ["good", "great"], ["you"], ["this", "that"]],
                "eval": [["a", "of"], ["it"], ["we", "our"]],
            }
        },
    ),
    ConstraintType(
        "keyword_frequency",
        KeywordFrequencyParams,
        {
            "train": [
                'The word "{keyword}" should appear {relation} {n} times in your answer.',
                'Use the word "{keyword}" {relation} {n} times.',
                'Mention "{keyword}" {relation} {n} times in your response.',
            ],
            "eval": [
                'Make sure the word "{keyword}" occurs {relation} {n} times in your reply.',
                'In your response, the word "{keyword}" must appear {relation} {n} times.',
            ],
        },
        _keyword_frequency,
        pools={
            "relation": {"train": ["at least"], "eval": ["at least"]},
            "n": {"train": [2, 3, 5], "eval": [4]},
            "keyword": {"train": ["water", "people", "good", "day", "home"], "eval": ["story", "world", "life"]},
        },
    ),
    ConstraintType(
        "letter_frequency",
        LetterFrequencyParams,
        {
            "train": [
                'The letter "{letter}" should appear {relation} {n} times in your answer.',
                'Use the letter "{letter}" {relation} {n} times.',
                'Your response must contain the letter "{letter}" {relation} {n} times.',
            ],
            "eval": [
                'In your reply, the letter "{letter}" must occur {relation} {n} times.',
                'Make sure the letter "{letter}" shows up {relation} {n} times in your response.',
            ],
        },
        _letter_frequency,
        pools={
            "relation": {"train": ["at least", "at most"], "eval": ["at least", "at most"]},
            "n": {"train": [3, 5, 10, 12], "eval": [7, 8]},
            "letter": {"train": ["z", "q", "x", "v", "w", "b"], "eval": ["j", "k", "y"]},
        },
    ),
    ConstraintType(
        "placeholders",
        ExactCount,
        {
            "train": [
                "Your answer must contain at least {n} placeholders in square brackets, such as [address].",
                "Include at least {n} placeholders written in square brackets, like [name].",
                "Use at least {n} placeholders such as [date] in your response.",
            ],
            "eval": [
                "The response must have at least {n} placeholders represented by square brackets, e.g. [city].",
                "Add {n} or more placeholders in square brackets, for instance [phone number].",
            ],
        },
        _placeholders,
        pools={"n": {"train": [1, 2, 4], "eval": [3]}},
    ),
    ConstraintType(
        "postscript",
        PhraseParams,
        {
            "train": [
                "At the end of your answer, add a postscript starting with {phrase}",
                "End with a postscript that starts with {phrase}",
                "Add a postscript beginning with {phrase} after your answer.",
            ],
            "eval": [
                "Please append a postscript to the end of your reply, starting with {phrase}",
                "Finish with a note that begins with {phrase}",
            ],
        },
        _postscript,
        pools={"phrase": {"train": ["P.S.", "Note:"], "eval": ["PS:", "Remember:"]}},
        conflicts=frozenset({"end_phrase", "quoted"}),
    ),
    ConstraintType(
        "highlighted_sections",
        ExactCount,
        {
            "train": [
                "Highlight at least {n} sections of your answer with markdown, for example *highlighted section*.",
                "Use markdown to highlight at least {n} parts of your answer, like *this part*.",
                "Mark at least {n} phrases in italics using asterisks, as in *a phrase*.",
            ],
            "eval": [
                "Emphasize at least {n} sections with markdown, i.e. *key section*.",
                "Make at least {n} passages stand out by wrapping them in asterisks, e.g. *key idea*.",
            ],
        },
        _highlighted,
        pools={"n": {"train": [1, 2, 4], "eval": [3]}},
    ),
    ConstraintType(
        "numbered_sections",
        ExactCount,
        {
            "train": [
                "Your answer must have {n} sections. Mark the beginning of each section with "
                "SECTION X, such as: SECTION 1, SECTION 2.",
                "Divide your answer into {n} sections, each starting with SECTION X (SECTION 1, SECTION 2, ...).",
                "Write {n} sections labelled SECTION 1, SECTION 2 and so on.",
            ],
            "eval": [
                "Organize your reply in {n} parts; start each part with SECTION X, e.g. SECTION 1.",
                "Your response should be split into {n} sections, each introduced by the word "
                "SECTION followed by its number.",
            ],
        },
        _numbered_sections,
        pools={"n": {"train": [2, 3, 5], "eval": [4]}},
    ),
    ConstraintType(
        "fixed_options",
        OptionsParams,
        {
            "train": [
                "Answer with one of the following options: {options}",
                "Your answer must be one of: {options}",
                "Reply with exactly one of these options: {options}",
            ],
            "eval": [
                "Choose one of these responses and give it: {options}",
                "Pick exactly one of the following answers: {options}",
            ],
        },
        _fixed_options,
        fields=_options,
        pools={
            "options": {
                "train": [
                    ["Yes, definitely.", "No, not at all.", "It depends."],
                    ["I agree.", "I disagree."],
                    ["True.", "False.", "Unsure."],
                ],
                "eval": [["I think yes.", "I think no.", "I am not sure."], ["Absolutely.", "Never."]],
            }
        },
        whole_answer=True,
    ),
    ConstraintType(
        "two_answers",
        NoParams,
        {
            "train": [
                "Give two different answers. Separate them with six asterisks, like this: ******",
                "Write two different responses, separated by six asterisk symbols: ******",
                "Provide two distinct answers separated by ******",
            ],
            "eval": [
                "Please respond with two different replies, and put six asterisks (******) between them.",
                "Offer two alternative responses divided by the separator ******",
            ],
        },
        _two_answers,
        whole_answer=True,
    ),
    ConstraintType(
        "capital_words",
        CountParams,
        {
            "train": [
                "Use words in all capital letters {relation} {n} times to stress important points.",
                "Write {relation} {n} words in ALL CAPITAL LETTERS for emphasis.",
                "Include {relation} {n} fully capitalized words.",
            ],
            "eval": [
                "Stress key points by writing {relation} {n} words entirely in capitals.",
                "Your reply should contain {relation} {n} words spelled completely in uppercase.",
            ],
        },
        _capital_words,
        pools=_rel([2, 3, 6], [4, 5], "at least"),
    ),
]
CONSTRAINTS: dict[str, ConstraintType] = {t.name: t for t in _TYPES}


def _lookup(name: str) -> ConstraintType:
    try:
        return CONSTRAINTS[name]
    except KeyError:
        raise ValueError(f"unknown constraint type {name!r}; known: {', '.join(CONSTRAINTS)}") from None


def validated_params(name: str, kwargs: dict[str, Any]) -> BaseModel:
    """A constraint's parameters, validated against its type's schema: ValueError for an unknown
    type, pydantic's ValidationError (a ValueError too) for bad kwargs."""
    return _lookup(name).params.model_validate(kwargs)


def describe(name: str, kwargs: dict[str, Any], wording: str = "train-0") -> str:
    """The instruction sentence for a constraint, in one of its wordings (`train-K` or `eval-K`)."""
    return _lookup(name).render(validated_params(name, kwargs), wording)


def check(name: str, text: str, kwargs: dict[str, Any]) -> bool:
    """Does `text` satisfy the constraint? Empty or whitespace-only text never does (as in IFEval:
    an answer that says nothing follows no instruction, however vacuously it meets a rule)."""
    params = validated_params(name, kwargs)
    return bool(text.strip()) and _lookup(name).checker(text, params)


def fails_early(name: str, prefix: str, kwargs: dict[str, Any]) -> bool:
    """Can no continuation of `prefix` satisfy the constraint? (False when the type has no
    early-failure rule.) Used to stop doomed samples; see `EARLY_FAIL`."""
    rule = EARLY_FAIL.get(name)
    return rule is not None and rule(prefix, validated_params(name, kwargs))


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
