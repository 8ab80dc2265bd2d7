"""Training-only constraint types, of our own design: more kinds of verifiable instruction than
IFEval has (openings and closings, list and table layouts, markup, sentence and word limits), so
that what the model learns is following instructions, not one benchmark's list. None implements
one of IFBench's 58 test instructions (tests/test_leakage.py lists their ids against these
names), so IFBench stays a test of generalization."""

from __future__ import annotations

from selftune.data.constraints import checkers
from selftune.data.constraints.params import (
    ExactCount,
    FirstWordParams,
    LimitParams,
    NoParams,
    PhraseParams,
    TagParams,
    WordParams,
)
from selftune.data.constraints.types import CLOSING_TYPES, LAYOUT_TYPES, OPENING_TYPES, ConstraintType

# What wraps or replaces the whole answer's shape.
_WRAPPERS = frozenset({"quoted", "tag_wrapped", "code_block", "json_format"})

TRAINING_TYPES = [
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
        conflicts=OPENING_TYPES | {"title", "tag_wrapped", "code_block"},
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
        conflicts=OPENING_TYPES | LAYOUT_TYPES | {"title", "tag_wrapped", "code_block"},
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
        conflicts=LAYOUT_TYPES | {"bullet_count", "first_word", "numbered_list", "table_rows", "headline"},
        words_asked=lambda p: 40 * p.n,
    ),
    ConstraintType(
        "end_with_question",
        NoParams,
        {
            "train": [
                "End your answer with a question.",
                "The last sentence of your response must be a question.",
                "Finish by asking the reader a question.",
            ],
            "eval": [
                "Close your reply with a question: its final sentence has to end with a question mark.",
                "Make the closing sentence of your response a question.",
            ],
        },
        checkers.end_with_question,
        conflicts=CLOSING_TYPES | _WRAPPERS | {"all_sentences_end_with_period"},
    ),
    ConstraintType(
        "bold_words",
        ExactCount,
        {
            "train": [
                "Put at least {n} words or phrases in bold using double asterisks, like **this**.",
                "Make at least {n} key terms bold with markdown (**term**).",
                "Use markdown bold (**...**) for at least {n} words.",
            ],
            "eval": [
                "Bold at least {n} important phrases by wrapping them in two asterisks on each side.",
                "At least {n} parts of your reply should be in **bold**.",
            ],
        },
        checkers.bold_words,
        pools={"n": {"train": [1, 2, 3, 4], "eval": [5]}},
    ),
    ConstraintType(
        "markdown_headers",
        ExactCount,
        {
            "train": [
                "Use at least {n} markdown headings, lines that start with # or ## and a space.",
                "Organize the answer under at least {n} markdown headers (for example '## Overview').",
                "Include {n} or more markdown headings in your response.",
            ],
            "eval": [
                "Give your reply at least {n} headings written in markdown with leading # signs.",
                "Your response should contain no fewer than {n} markdown section headings.",
            ],
        },
        checkers.markdown_headers,
        pools={"n": {"train": [1, 2, 3], "eval": [4]}},
        conflicts=_WRAPPERS | {"headline"},
        words_asked=lambda p: 40 * p.n,
    ),
    ConstraintType(
        "numbered_list",
        ExactCount,
        {
            "train": [
                "Present your answer as a numbered list of exactly {n} items (1., 2., 3., ...).",
                "Give exactly {n} points as a numbered list, starting from 1.",
                "Your response must be a numbered list with exactly {n} entries.",
            ],
            "eval": [
                "Write precisely {n} numbered items, each line starting with its number and a period.",
                "Lay out your reply as a list numbered 1 to {n}.",
            ],
        },
        checkers.numbered_list,
        pools={"n": {"train": [3, 4, 5, 6], "eval": [7]}},
        conflicts=LAYOUT_TYPES | _WRAPPERS | {"bullet_count", "table_rows"},
    ),
    ConstraintType(
        "max_sentence_words",
        LimitParams,
        {
            "train": [
                "Keep every sentence to at most {n} words.",
                "No sentence in your answer may be longer than {n} words.",
                "Write short sentences: {n} words at most each.",
            ],
            "eval": [
                "Each of your sentences should have {n} words or fewer.",
                "Limit every sentence you write to a maximum of {n} words.",
            ],
        },
        checkers.max_sentence_words,
        pools={"n": {"train": [8, 10, 12, 15], "eval": [9]}},
        conflicts=_WRAPPERS | {"table_rows"},
    ),
    ConstraintType(
        "hashtags",
        ExactCount,
        {
            "train": [
                "End your response with a line of at least {n} hashtags, such as #travel.",
                "Finish with at least {n} hashtags on the last line.",
                "Add {n} or more hashtags (like #ideas) as the final line of your answer.",
            ],
            "eval": [
                "The last line of your reply should hold at least {n} hashtags.",
                "Close with a final line of hashtags, no fewer than {n} of them.",
            ],
        },
        checkers.hashtags,
        pools={"n": {"train": [1, 2, 3], "eval": [4]}},
        conflicts=CLOSING_TYPES | _WRAPPERS,
    ),
    ConstraintType(
        "no_exclamation",
        NoParams,
        {
            "train": [
                "Do not use any exclamation marks.",
                "Your answer must not contain a single exclamation mark.",
                "Write without exclamation marks.",
            ],
            "eval": ["Avoid the exclamation mark entirely.", "There should be no exclamation points in your reply."],
        },
        checkers.no_exclamation,
        conflicts=frozenset({"start_phrase"}),
    ),
    ConstraintType(
        "code_block",
        NoParams,
        {
            "train": [
                "Include a markdown code block, fenced with ``` above and below it.",
                "Put part of your answer in a fenced code block (```).",
                "Your answer must contain a code block between triple backticks.",
            ],
            "eval": [
                "Add at least one block set off by triple backtick fences.",
                "Somewhere in your reply, include text inside a ``` fenced block.",
            ],
        },
        checkers.code_block,
        conflicts=OPENING_TYPES | CLOSING_TYPES | LAYOUT_TYPES | {"json_format", "tag_wrapped"},
    ),
    ConstraintType(
        "table_rows",
        ExactCount,
        {
            "train": [
                "Include a markdown table with a header row and at least {n} rows below it.",
                "Summarize your answer in a markdown table of at least {n} rows plus a header.",
                "Add a table in markdown (| a | b |) with a header and {n} or more rows.",
            ],
            "eval": [
                "Your reply must contain a markdown table whose body has at least {n} rows.",
                "Show the information as a table in markdown, with no fewer than {n} data rows.",
            ],
        },
        checkers.table_rows,
        pools={"n": {"train": [2, 3, 4], "eval": [5]}},
        conflicts=LAYOUT_TYPES | _WRAPPERS | {"bullet_count", "numbered_list", "max_sentence_words", "no_commas"},
    ),
    ConstraintType(
        "blockquote",
        NoParams,
        {
            "train": [
                "Include at least one line formatted as a markdown blockquote (a line starting with '> ').",
                "Quote something in a markdown blockquote, a line that begins with '> '.",
                "Add a blockquote line, starting with the > sign and a space.",
            ],
            "eval": [
                "Your reply should contain a quotation set as a markdown blockquote.",
                "Use the markdown blockquote format (> text) for at least one line.",
            ],
        },
        checkers.blockquote,
        conflicts=_WRAPPERS,
    ),
    ConstraintType(
        "line_count",
        ExactCount,
        {
            "train": [
                "Your answer must be exactly {n} lines long; empty lines do not count.",
                "Write exactly {n} non-empty lines.",
                "Use exactly {n} lines of text in your response.",
            ],
            "eval": [
                "The reply should span precisely {n} lines, not counting blank ones.",
                "Compose your response in {n} lines, no more and no fewer.",
            ],
        },
        checkers.line_count,
        pools={"n": {"train": [2, 3, 4, 5, 6], "eval": [7]}},
        conflicts=LAYOUT_TYPES
        | _WRAPPERS
        | {"bullet_count", "numbered_list", "table_rows", "hashtags", "sign_off"}
        | {"title", "headline", "markdown_headers", "postscript", "two_answers", "numbered_sections"},
    ),
    ConstraintType(
        "word_length_limit",
        LimitParams,
        {
            "train": [
                "Use no word longer than {n} letters.",
                "Every word in your answer must have at most {n} letters.",
                "Avoid long words: none may exceed {n} letters.",
            ],
            "eval": [
                "Keep all of your words to {n} letters or fewer.",
                "Do not write any word of more than {n} letters.",
            ],
        },
        checkers.word_length_limit,
        pools={"n": {"train": [7, 8, 9, 10], "eval": [11]}},
        conflicts=_WRAPPERS | {"include_keywords", "keyword_frequency", "bracketed_word", "keyword_in_title"},
    ),
    ConstraintType(
        "sign_off",
        PhraseParams,
        {
            "train": [
                'End with a sign-off line that starts with "{phrase}", followed by a name.',
                'Close your answer with "{phrase}" on a line of its own and a name after it.',
                'Sign off at the end with "{phrase}" and a name.',
            ],
            "eval": [
                'Finish the reply with a closing line beginning "{phrase}", then a name.',
                'Add a sign-off at the bottom that opens with "{phrase}".',
            ],
        },
        checkers.sign_off,
        pools={
            "phrase": {
                "train": ["Best regards,", "Cheers,", "Warmly,", "Sincerely,"],
                "eval": ["Kind wishes,", "Yours truly,"],
            }
        },
        conflicts=CLOSING_TYPES | _WRAPPERS,
    ),
    ConstraintType(
        "semicolons",
        ExactCount,
        {
            "train": [
                "Use at least {n} semicolons (;) in your answer.",
                "Join clauses with semicolons: include {n} or more of them.",
                "Your response must contain at least {n} semicolons.",
            ],
            "eval": ["Include no fewer than {n} semicolons.", "Make use of the semicolon at least {n} times."],
        },
        checkers.semicolons,
        pools={"n": {"train": [1, 2, 3], "eval": [4]}},
        conflicts=_WRAPPERS,
    ),
    ConstraintType(
        "tag_wrapped",
        TagParams,
        {
            "train": [
                "Wrap your whole answer in <{tag}> and </{tag}> tags.",
                "Put the entire response between <{tag}> and </{tag}>.",
                "Enclose everything you write in a <{tag}>...</{tag}> tag pair.",
            ],
            "eval": [
                "Your reply must start with <{tag}> and end with </{tag}>.",
                "Place all of your response inside <{tag}></{tag}> tags.",
            ],
        },
        checkers.tag_wrapped,
        pools={"tag": {"train": ["answer", "reply", "text", "response"], "eval": ["output", "final"]}},
        conflicts=OPENING_TYPES | CLOSING_TYPES | _WRAPPERS | {"title", "headline"},
    ),
    ConstraintType(
        "question_count",
        ExactCount,
        {
            "train": [
                "Ask at least {n} questions in your response.",
                "Include {n} or more questions (sentences ending with a question mark).",
                "Your answer must pose at least {n} questions.",
            ],
            "eval": ["Put no fewer than {n} questions to the reader.", "Raise at least {n} questions in your reply."],
        },
        checkers.question_count,
        pools={"n": {"train": [1, 2, 3], "eval": [4]}},
        conflicts=_WRAPPERS | {"all_sentences_end_with_period"},
    ),
    ConstraintType(
        "paragraph_max_sentences",
        LimitParams,
        {
            "train": [
                "Write at least two paragraphs separated by blank lines, none longer than {n} sentences.",
                "Use several short paragraphs, one blank line apart, each of at most {n} sentences.",
                "Break your answer into paragraphs of no more than {n} sentences, with blank lines between them.",
            ],
            "eval": [
                "Split the reply into two or more paragraphs of {n} sentences at most, separated by empty lines.",
                "Keep each paragraph to {n} sentences or fewer, with at least two paragraphs in total.",
            ],
        },
        checkers.paragraph_max_sentences,
        pools={"n": {"train": [2, 3, 4], "eval": [5]}},
        conflicts=LAYOUT_TYPES | _WRAPPERS | {"bullet_count", "numbered_list", "table_rows"},
    ),
    ConstraintType(
        "headline",
        LimitParams,
        {
            "train": [
                "Start with a headline of at most {n} words on its own line, then a blank line, then the rest.",
                "Open your answer with a short headline ({n} words or fewer) followed by an empty line.",
                "The first line must be a headline of no more than {n} words, separated from the text by a blank line.",
            ],
            "eval": [
                "Begin with a one-line heading of up to {n} words and leave a blank line after it.",
                "Put a headline of {n} words or fewer first, alone on its line, and a blank line below it.",
            ],
        },
        checkers.headline,
        pools={"n": {"train": [4, 5, 6, 8], "eval": [7]}},
        conflicts=OPENING_TYPES | _WRAPPERS | {"title", "markdown_headers", "keyword_in_title"},
    ),
    ConstraintType(
        "bracketed_word",
        WordParams,
        {
            "train": [
                'Include the word "{word}" in square brackets, like this: [{word}].',
                'Write "{word}" inside square brackets somewhere in your answer.',
                "The bracketed word [{word}] must appear in your response.",
            ],
            "eval": ['Somewhere in your reply, put "{word}" between [ and ].', 'Mark the word "{word}" as [{word}].'],
        },
        checkers.bracketed_word,
        pools={"word": {"train": ["note", "idea", "tip", "fact"], "eval": ["key", "hint"]}},
        conflicts=_WRAPPERS,
    ),
    ConstraintType(
        "keyword_in_title",
        WordParams,
        {
            "train": [
                'Give your answer a title in double angular brackets that contains the word "{word}".',
                'Start with a title wrapped in << >> that includes the word "{word}".',
                'Your response needs a title like <<...>> with the word "{word}" in it.',
            ],
            "eval": [
                'Add a title enclosed in << and >>, and use the word "{word}" in that title.',
                'Put the word "{word}" in a title written between double angle brackets.',
            ],
        },
        checkers.keyword_in_title,
        pools={"word": {"train": ["guide", "story", "notes", "journey"], "eval": ["portrait", "lesson"]}},
        conflicts=_WRAPPERS | {"title", "headline"},
    ),
    ConstraintType(
        "colon_lines",
        ExactCount,
        {
            "train": [
                "Include at least {n} lines of the form 'Label: text', each starting with a capitalized label.",
                "Write at least {n} labelled lines, each a short label, a colon and then text (e.g. 'Where: ...').",
                "Use {n} or more lines that begin with a label followed by a colon.",
            ],
            "eval": [
                "Your reply should have no fewer than {n} lines shaped like 'Name: detail'.",
                "Give at least {n} lines that each open with a capitalized label and a colon.",
            ],
        },
        checkers.colon_lines,
        pools={"n": {"train": [2, 3, 4], "eval": [5]}},
        conflicts=_WRAPPERS,
    ),
    ConstraintType(
        "ends_with_word",
        WordParams,
        {
            "train": [
                'The very last word of your answer must be "{word}".',
                'Make "{word}" the final word of your response.',
                'End your reply on the word "{word}".',
            ],
            "eval": ['Your response has to finish with the word "{word}".', 'Let "{word}" be the last word you write.'],
        },
        checkers.ends_with_word,
        pools={"word": {"train": ["today", "together", "again", "forever"], "eval": ["tomorrow", "always"]}},
        conflicts=CLOSING_TYPES | _WRAPPERS,
    ),
    ConstraintType(
        "all_sentences_end_with_period",
        NoParams,
        {
            "train": [
                "End every sentence with a period: no question marks or exclamation marks.",
                "Every sentence you write must end in a full stop.",
                "Use only statements that end with a period.",
            ],
            "eval": [
                "Each sentence of your reply should close with a period.",
                "Finish all of your sentences with full stops, never ? or !.",
            ],
        },
        checkers.all_sentences_end_with_period,
        conflicts=_WRAPPERS | {"end_with_question", "question_count", "bullet_count", "numbered_list", "table_rows"},
    ),
]
