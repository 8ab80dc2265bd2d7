"""The constraint types as data: for each, its parameter schema, its instruction wordings (train and
eval), its checker, its parameter value pools (train and eval) and the types it conflicts with.
`CONSTRAINTS` maps a type's name to it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from selftune.data.constraints import checkers
from selftune.data.constraints.params import (
    CountParams,
    ExactCount,
    FirstWordParams,
    KeywordFrequencyParams,
    KeywordsParams,
    LetterFrequencyParams,
    NoParams,
    OptionsParams,
    Params,
    PhraseParams,
)

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
        checkers.lowercase,
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
        checkers.uppercase,
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
        checkers.no_commas,
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
        checkers.word_count,
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
        checkers.sentence_count,
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
        checkers.paragraph_count,
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
        checkers.bullet_count,
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
        checkers.title,
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
        checkers.json_format,
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
        checkers.quoted,
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
        checkers.end_phrase,
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
        checkers.start_phrase,
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
        checkers.first_word,
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
        checkers.include_keywords,
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
        checkers.forbidden_words,
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
        checkers.keyword_frequency,
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
        checkers.letter_frequency,
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
        checkers.placeholders,
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
        checkers.postscript,
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
        checkers.highlighted,
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
        checkers.numbered_sections,
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
        checkers.fixed_options,
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
        checkers.two_answers,
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
        checkers.capital_words,
        pools=_rel([2, 3, 6], [4, 5], "at least"),
    ),
]


CONSTRAINTS: dict[str, ConstraintType] = {t.name: t for t in _TYPES}
