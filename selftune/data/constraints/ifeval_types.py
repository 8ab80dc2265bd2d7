"""IFEval's 25 instruction types as training constraints: each checks what IFEval's reference
checker checks (`checkers.py`), in wordings and parameter values of our own. None of the
sentences is IFEval's (tests/test_leakage.py); the value pools cover IFEval's ranges and go past
them. `ifeval` names the reference instruction, `reference_kwargs` translates our parameters to
its arguments (the cross-check in tests/test_checkers_reference.py runs both)."""

from __future__ import annotations

import random
import re
from typing import Any

from selftune.data.constraints import checkers
from selftune.data.constraints.params import (
    LANGUAGES,
    CountParams,
    ExactCount,
    KeywordFrequencyParams,
    KeywordsParams,
    LanguageParams,
    LetterFrequencyParams,
    NoParams,
    NthParagraphParams,
    OptionsParams,
    PhraseParams,
    RepeatParams,
    SectionsParams,
)
from selftune.data.constraints.types import (
    CASE_TYPES,
    CLOSING_TYPES,
    LAYOUT_TYPES,
    OPENING_TYPES,
    ConstraintType,
    below,
    bounds,
    keywords_field,
    options_field,
)


def _words_draw(table: dict[str, dict[str, list[int]]]):
    return bounds(table)


def _nth_paragraph_draw(rng: random.Random, split: str) -> dict[str, Any]:
    count = rng.choice({"train": [2, 3, 4, 5, 6], "eval": [3, 4]}[split])
    words = {
        "train": ["today", "first", "imagine", "sometimes", "every", "before", "after", "finally"],
        "eval": ["meanwhile", "honestly", "overall"],
    }[split]
    return {"num_paragraphs": count, "nth_paragraph": rng.randint(1, count), "first_word": rng.choice(words)}


# Words of our task sentences that only frame the request (verbs, fillers): never forbidden. The
# rest, the topic and the kind of text asked for ("owls", "poem", "letter"), are what an answer is
# tempted to repeat, and what real requests forbid ("describe X without the word X").
_FRAMING_WORDS = frozenset(
    "write explain describe give list summarize short brief briefly some something someone related "
    "spent thinking wants learn involves interesting three whose about that with into people care "
    "inviting between long open detailed year sentences".split()
)
# Of forbidden-word constraints, the share drawn from the task's own words (besides those whose pool
# words clash with another constraint). Measured at 0.75 against 0 (docs/gain.md, "Forbidden words
# from the task"): IFEval's forbidden_words type did not move beyond noise (0.33 -> 0.41 on one
# sampling seed, 0.47 -> 0.33 on another) and the whole of IFEval fell by 0.031 and 0.018, so 0.
TASK_WORD_SHARE = 0.0


def _forbidden_task_words(
    rng: random.Random, task: str, drawn: dict[str, Any], taken: frozenset[str]
) -> dict[str, Any] | None:
    """One or two of the task's content words to forbid, whenever the pools' words clash with
    another constraint of the prompt (an end phrase "The end." with "the" forbidden), and
    `TASK_WORD_SHARE` of the other times; None: the pools' function words stand. No word another
    constraint uses is chosen, so the prompt stays satisfiable (the checks that count keywords
    count them inside longer words too, but a forbidden word is a whole word: "river" forbidden,
    "rivers" asked for can both hold)."""
    pool_clashes = any(word.lower() in taken for word in drawn["keywords"])
    if rng.random() >= TASK_WORD_SHARE and not pool_clashes:
        return None
    candidates: list[str] = []
    for word in re.findall(r"[a-z]+", task.lower()):
        if len(word) < 4 or word in _FRAMING_WORDS or word in candidates or word in taken:
            continue
        candidates.append(word)
    if not candidates:
        return None
    return {"keywords": rng.sample(candidates, min(len(candidates), rng.choice([1, 1, 2])))}


IFEVAL_TYPES = [
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
        conflicts=CASE_TYPES | {"numbered_sections", "postscript", "end_phrase", "start_phrase", "repeat_prompt"},
        ifeval="change_case:english_lowercase",
        reference_kwargs=lambda p: {},
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
        conflicts=CASE_TYPES
        | {"end_phrase", "start_phrase", "first_word", "postscript", "placeholders", "repeat_prompt"}
        | {"nth_paragraph_first_word", "tag_wrapped", "sign_off", "ends_with_word", "bracketed_word"},
        ifeval="change_case:english_capital",
        reference_kwargs=lambda p: {},
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
        draw=bounds(
            {
                "train": {"at least": [2, 3, 6, 10, 15], "at most": [1, 2, 5]},
                "eval": {"at least": [4, 12], "at most": [3]},
            }
        ),
        conflicts=CASE_TYPES,
        ifeval="change_case:capital_word_frequency",
        reference_kwargs=lambda p: dict(zip(("capital_relation", "capital_frequency"), below(p.relation, p.n))),
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
        ifeval="punctuation:no_comma",
        reference_kwargs=lambda p: {},
    ),
    ConstraintType(
        "word_count",
        CountParams,
        {
            "train": [
                "Your answer should run to {relation} {n} words.",
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
        draw=bounds(
            {
                "train": {"at least": [50, 100, 150, 200, 300, 400, 500, 600], "at most": [20, 30, 50, 70, 100, 150]},
                "eval": {"at least": [120, 250, 350], "at most": [25, 40, 60]},
            }
        ),
        conflicts=frozenset({"sentence_count"}),
        ifeval="length_constraints:number_words",
        reference_kwargs=lambda p: dict(zip(("relation", "num_words"), below(p.relation, p.n))),
        words_asked=lambda p: p.n if p.relation == "at least" else 0,
        asks_length=True,
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
        draw=bounds(
            {
                "train": {"at least": [3, 5, 8, 10, 15, 20], "at most": [2, 3, 5, 8]},
                "eval": {"at least": [12], "at most": [4, 6]},
            }
        ),
        conflicts=frozenset({"word_count"}),
        ifeval="length_constraints:number_sentences",
        reference_kwargs=lambda p: dict(zip(("relation", "num_sentences"), below(p.relation, p.n))),
        words_asked=lambda p: 15 * p.n if p.relation == "at least" else 0,
        asks_length=True,
    ),
    ConstraintType(
        "divided_paragraphs",
        ExactCount,
        {
            "train": [
                "Write exactly {n} paragraphs and put the markdown divider *** between each paragraph and the next.",
                "Your answer needs {n} paragraphs, set apart from one another by three asterisks: ***",
                "Split the response into {n} paragraphs divided by the markdown separator ***.",
            ],
            "eval": [
                "Organize the reply as {n} paragraphs, using *** as the divider between consecutive ones.",
                "Give {n} paragraphs in all, each one separated from the next by ***.",
            ],
        },
        checkers.divided_paragraphs,
        pools={"n": {"train": [2, 3, 5, 6], "eval": [4]}},
        conflicts=LAYOUT_TYPES | {"bullet_count", "numbered_list", "table_rows", "repeat_prompt", "headline"},
        ifeval="length_constraints:number_paragraphs",
        reference_kwargs=lambda p: {"num_paragraphs": p.n},
        words_asked=lambda p: 40 * p.n,
    ),
    ConstraintType(
        "nth_paragraph_first_word",
        NthParagraphParams,
        {
            "train": [
                "Write exactly {num_paragraphs} paragraphs separated by blank lines, and begin paragraph "
                '{nth_paragraph} with the word "{first_word}".',
                "Your response must contain {num_paragraphs} paragraphs with an empty line between them; the first "
                'word of paragraph number {nth_paragraph} must be "{first_word}".',
            ],
            "eval": [
                "Compose {num_paragraphs} paragraphs, one blank line apart, where paragraph {nth_paragraph} opens "
                'with "{first_word}".',
                "Use {num_paragraphs} paragraphs split by empty lines, and start paragraph {nth_paragraph} with the "
                'word "{first_word}".',
            ],
        },
        checkers.nth_paragraph_first_word,
        draw=_nth_paragraph_draw,
        conflicts=LAYOUT_TYPES | OPENING_TYPES | {"bullet_count", "numbered_list", "table_rows", "title", "code_block"},
        ifeval="length_constraints:nth_paragraph_first_word",
        reference_kwargs=lambda p: {
            "num_paragraphs": p.num_paragraphs,
            "nth_paragraph": p.nth_paragraph,
            "first_word": p.first_word,
        },
        words_asked=lambda p: 40 * p.num_paragraphs,
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
        pools={"n": {"train": [1, 2, 3, 5, 6, 8, 10], "eval": [4, 7]}},
        conflicts=frozenset({"paragraph_count", "divided_paragraphs", "nth_paragraph_first_word", "numbered_list"}),
        ifeval="detectable_format:number_bullet_lists",
        reference_kwargs=lambda p: {"num_bullets": p.n},
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
        conflicts=frozenset({"keyword_in_title", "headline"}),
        ifeval="detectable_format:title",
        reference_kwargs=lambda p: {},
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
        ifeval="detectable_format:json_format",
        reference_kwargs=lambda p: {},
    ),
    ConstraintType(
        "numbered_sections",
        SectionsParams,
        {
            "train": [
                "Your answer must have {n} sections. Mark the beginning of each section with {splitter} X, such "
                "as: {splitter} 1, {splitter} 2.",
                "Divide your answer into {n} sections, each starting with {splitter} X ({splitter} 1, {splitter} "
                "2, ...).",
                "Write {n} sections labelled {splitter} 1, {splitter} 2 and so on.",
            ],
            "eval": [
                "Organize your reply in {n} parts; start each part with {splitter} X, e.g. {splitter} 1.",
                "Your response should be split into {n} sections, each introduced by the word {splitter} "
                "followed by its number.",
            ],
        },
        checkers.numbered_sections,
        pools={
            "n": {"train": [2, 3, 5, 6], "eval": [4]},
            "splitter": {"train": ["SECTION", "Part", "CHAPTER", "Step"], "eval": ["Section", "Segment"]},
        },
        ifeval="detectable_format:multiple_sections",
        reference_kwargs=lambda p: {"section_spliter": p.splitter, "num_sections": p.n},
        words_asked=lambda p: 30 * p.n,
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
        checkers.highlighted_sections,
        pools={"n": {"train": [1, 2, 4, 5, 8], "eval": [3, 6]}},
        ifeval="detectable_format:number_highlighted_sections",
        reference_kwargs=lambda p: {"num_highlights": p.n},
    ),
    ConstraintType(
        "fixed_options",
        OptionsParams,
        {
            "train": [
                "Reply using one of these options: {options}",
                "Your answer must be one of: {options}",
                "Respond with exactly one of the following choices: {options}",
            ],
            "eval": [
                "Choose one of these responses and give it: {options}",
                "Pick exactly one of the following answers: {options}",
            ],
        },
        checkers.fixed_options,
        fields=options_field,
        pools={
            "options": {
                "train": [
                    ["Yes, definitely.", "No, not at all.", "It depends."],
                    ["I agree.", "I disagree."],
                    ["True.", "False.", "Unsure."],
                    ["My reply is yes.", "My reply is no.", "My reply is maybe."],
                ],
                "eval": [["I think yes.", "I think no.", "I am not sure."], ["Absolutely.", "Never."]],
            }
        },
        whole_answer=True,
        ifeval="detectable_format:constrained_response",
        reference_kwargs=lambda p: {},  # the reference's options are fixed: yes, no, maybe
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
        ifeval="combination:two_responses",
        reference_kwargs=lambda p: {},
    ),
    ConstraintType(
        "repeat_prompt",
        RepeatParams,
        {
            "train": [
                "Before answering, repeat everything above this sentence word for word, then give your answer.",
                "Start your reply by copying the request above exactly as it is written (not this sentence), "
                "with nothing before it; then answer it.",
                "Begin with the request itself, repeated verbatim and without this instruction, and only then answer.",
            ],
            "eval": [
                "First write out the request above again, unchanged, leaving this sentence out; then respond to it.",
                "Echo the request above exactly, as the very start of your response, then give the answer.",
            ],
        },
        checkers.repeat_prompt,
        fields=lambda p: {},
        repeats_request=True,
        conflicts=OPENING_TYPES
        | LAYOUT_TYPES
        | {"lowercase", "uppercase", "title", "keyword_in_title", "code_block", "tag_wrapped", "bullet_count"}
        | {"numbered_list", "table_rows", "max_sentence_words", "word_length_limit", "no_commas", "semicolons"},
        ifeval="combination:repeat_prompt",
        reference_kwargs=lambda p: {"prompt_to_repeat": p.prompt_to_repeat},
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
        pools={"n": {"train": [1, 2, 4, 5, 8], "eval": [3, 6]}},
        ifeval="detectable_content:number_placeholders",
        reference_kwargs=lambda p: {"num_placeholders": p.n},
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
        pools={"phrase": {"train": ["P.S.", "P.P.S", "Note:"], "eval": ["PS:", "Remember:"]}},
        conflicts=CLOSING_TYPES - {"postscript"},
        ifeval="detectable_content:postscript",
        reference_kwargs=lambda p: {"postscript_marker": p.phrase},
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
        fields=keywords_field,
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
                    ["promise", "harbor", "lantern"],
                ],
                "eval": [["silver"], ["bridge", "cloud"], ["garden", "letter"]],
            }
        },
        ifeval="keywords:existence",
        reference_kwargs=lambda p: {"keywords": p.keywords},
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
        fields=keywords_field,
        pools={
            "keywords": {
                "train": [["the"], ["and", "very"], ["is"], ["good", "great"], ["you"], ["this", "that"]],
                "eval": [["a", "of"], ["it"], ["we", "our"]],
            }
        },
        task_draw=_forbidden_task_words,
        ifeval="keywords:forbidden_words",
        reference_kwargs=lambda p: {"forbidden_words": p.keywords},
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
            "relation": {"train": ["at least", "at most"], "eval": ["at least", "at most"]},
            "n": {"train": [1, 2, 3, 5, 6], "eval": [4]},
            "keyword": {"train": ["water", "people", "good", "day", "home"], "eval": ["story", "world", "life"]},
        },
        ifeval="keywords:frequency",
        reference_kwargs=lambda p: (
            dict(zip(("relation", "frequency"), below(p.relation, p.n))) | {"keyword": p.keyword}
        ),
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
            "n": {"train": [1, 3, 5, 10, 12, 20, 30], "eval": [7, 8, 25]},
            "letter": {"train": ["z", "q", "x", "v", "w", "b", "a", "o"], "eval": ["j", "k", "y"]},
        },
        ifeval="keywords:letter_frequency",
        reference_kwargs=lambda p: (
            dict(zip(("let_relation", "let_frequency"), below(p.relation, p.n))) | {"letter": p.letter.lower()}
        ),
    ),
    ConstraintType(
        "response_language",
        LanguageParams,
        {
            "train": [
                "Write your entire answer in {language_name}; no other language is allowed.",
                "Respond only in {language_name}.",
                "Your whole reply must be written in {language_name}.",
            ],
            "eval": [
                "Use {language_name} and nothing else for your response.",
                "Compose everything in {language_name}.",
            ],
        },
        checkers.response_language,
        fields=lambda p: {"language_name": LANGUAGES[p.language]},
        pools={
            "language": {
                "train": ["fr", "es", "de", "it", "pt", "ru", "hi", "ar", "ja", "ko"],
                "eval": ["pl", "fi", "vi", "uk"],
            }
        },
        conflicts=CASE_TYPES
        | {"keyword_frequency", "include_keywords", "forbidden_words", "end_phrase", "start_phrase"}
        | {"repeat_prompt", "first_word", "nth_paragraph_first_word", "postscript", "sign_off", "ends_with_word"},
        ifeval="language:response_language",
        reference_kwargs=lambda p: {"language": p.language},
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
                "train": [
                    "That is all.",
                    "Thank you for reading.",
                    "See you soon.",
                    "The end.",
                    "Have a nice day.",
                    "Let me know if you have more questions.",
                ],
                "eval": ["Hope this helps.", "Until next time.", "Take care."],
            }
        },
        conflicts=CLOSING_TYPES - {"end_phrase"},
        ifeval="startend:end_checker",
        reference_kwargs=lambda p: {"end_phrase": p.phrase},
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
        conflicts=OPENING_TYPES | CLOSING_TYPES | {"title", "tag_wrapped", "code_block"},
        ifeval="startend:quotation",
        reference_kwargs=lambda p: {},
    ),
]
