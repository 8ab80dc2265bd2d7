"""selftune's IFEval-style checkers against the IFEval reference checkers (if-verifiable), on
hand-written edge cases for every type they share.

`AGREE` cases must get the same verdict from both. `DIFFER` cases pin each deliberate difference
(docs/data.md names them): the reference verdict and ours are both asserted, so a change on either
side shows up here.
"""

import pytest

from selftune.data.constraints.registry import check

pytest.importorskip("if_verifiable")

EN = "The river runs past the old mill and the children watch the boats go by"

# our type -> (IFEval instruction id, our kwargs, the reference's kwargs)
SHARED = {
    "lowercase": ("change_case:english_lowercase", {}, {}),
    "uppercase": ("change_case:english_capital", {}, {}),
    "no_commas": ("punctuation:no_comma", {}, {}),
    "word_count": (
        "length_constraints:number_words",
        {"relation": "at least", "n": 5},
        {"relation": "at least", "num_words": 5},
    ),
    "word_count_at_most": (
        "length_constraints:number_words",
        {"relation": "at most", "n": 5},
        {"relation": "less than", "num_words": 6},
    ),
    "bullet_count": ("detectable_format:number_bullet_lists", {"n": 2}, {"num_bullets": 2}),
    "title": ("detectable_format:title", {}, {}),
    "json_format": ("detectable_format:json_format", {}, {}),
    "quoted": ("startend:quotation", {}, {}),
    "end_phrase": ("startend:end_checker", {"phrase": "That is all."}, {"end_phrase": "That is all."}),
    "include_keywords": ("keywords:existence", {"keywords": ["river"]}, {"keywords": ["river"]}),
    "forbidden_words": ("keywords:forbidden_words", {"keywords": ["mill"]}, {"forbidden_words": ["mill"]}),
    "keyword_frequency": (
        "keywords:frequency",
        {"relation": "at least", "n": 2, "keyword": "boat"},
        {"relation": "at least", "frequency": 2, "keyword": "boat"},
    ),
    "letter_frequency": (
        "keywords:letter_frequency",
        {"relation": "at least", "n": 3, "letter": "z"},
        {"let_relation": "at least", "let_frequency": 3, "letter": "z"},
    ),
    "placeholders": ("detectable_content:number_placeholders", {"n": 2}, {"num_placeholders": 2}),
    "postscript": ("detectable_content:postscript", {"phrase": "P.S."}, {"postscript_marker": "P.S."}),
    "highlighted_sections": ("detectable_format:number_highlighted_sections", {"n": 2}, {"num_highlights": 2}),
    "numbered_sections": (
        "detectable_format:multiple_sections",
        {"n": 2},
        {"section_spliter": "SECTION", "num_sections": 2},
    ),
    "two_answers": ("combination:two_responses", {}, {}),
}

AGREE = {
    "lowercase": [EN.lower() + ".", EN + ".", ""],
    "uppercase": [EN.upper() + ".", EN + ".", EN.upper() + " and then some lower words."],
    "no_commas": [EN + ".", EN + ", and more.", ""],
    "word_count": ["one two three four five", "one two three four", "one-two three four five six", ""],
    "word_count_at_most": ["one two three", "one two three four five", "one two three four five six", ""],
    "bullet_count": ["* one\n* two", "- one\n- two", "* one\n- two", "* one", "* a\n* b\n* c", "", "text only"],
    "title": ["<<A Title>>\nText.", "No title here.", "<<>> empty", "", "<<the river>>"],
    "json_format": ['{"a": 1}', '```json\n{"a": [1, 2]}\n```', "{'a': 1}", 'Here: {"a": 1}', "", "[1, 2]"],
    "quoted": ['"' + EN + '"', EN, '"open only', ""],
    "end_phrase": [EN + ". That is all.", "That is all. " + EN, EN + ". That is all", ""],
    "include_keywords": [EN, "The sea.", "A River.", ""],
    "forbidden_words": [EN, "A stone.", "MILL!", "millstone", ""],
    "keyword_frequency": ["boat, boat", "one boat", ""],
    "letter_frequency": ["zzz", "zz", "Zebra, lazy, fuzz", ""],
    "placeholders": ["[name] and [address]", "[name]", "none", ""],
    "postscript": [EN + ".\n\nP.S. More later.", EN + ".", ""],
    "highlighted_sections": ["*one* and *two*", "*one* only", "**bold** and *it*", ""],
    "numbered_sections": ["SECTION 1\nA\nSECTION 2\nB", "SECTION 1\nonly one", ""],
    "two_answers": ["First.\n******\nSecond.", "Only one.", "Same.\n******\nSame.", ""],
}

# Deliberate differences: (our type, text, reference verdict, our verdict, why).
DIFFER = [
    ("no_commas", "One，two.", True, False, "selftune also forbids the full-width comma"),
    ("bullet_count", "*one\n*two", True, False, "selftune needs a space after the bullet marker"),
    ("bullet_count", "---\n- one", True, False, "the reference counts any line starting with '-' (a rule) as a bullet"),
    ("title", "<<a <b> c>>", True, False, "selftune's title may not hold angle brackets"),
    ("title", "<< !! >>", True, False, "selftune's title needs a word character"),
    ("quoted", '""', True, False, "selftune needs text between the quotes"),
    ("end_phrase", EN + ". that is all.", True, False, "the reference ignores case; selftune wants the exact phrase"),
    ("end_phrase", EN + '. That is all."', True, False, "the reference strips closing quotes first"),
    ("include_keywords", "Rivers everywhere.", True, False, "the reference matches a substring; selftune a whole word"),
    ("keyword_frequency", "boats and boats", True, False, "the reference counts substrings; selftune whole words"),
    ("placeholders", "[] and []", True, False, "selftune's placeholder must hold text"),
    (
        "postscript",
        EN + ".\n\nP. S. later",
        True,
        False,
        "the reference accepts 'P. S.'; selftune wants the marker as given",
    ),
    (
        "numbered_sections",
        "SECTION 1\nA\nSECTION 2\nB\nSECTION 3\nC",
        True,
        False,
        "the reference wants at least N sections; selftune exactly SECTION 1..N in order",
    ),
    ("numbered_sections", "SECTION 2\nA\nSECTION 1\nB", True, False, "selftune wants the sections numbered in order"),
    (
        "two_answers",
        "a ****** b ******",
        True,
        False,
        "the reference ignores an empty last part; selftune wants exactly two",
    ),
    ("word_count_at_most", "one two three four five six", False, False, "(agree) six words fail both"),
]


def reference(instruction: str, kwargs: dict, text: str) -> bool:
    import langdetect

    from selftune.data.benchmarks import _registry

    langdetect.DetectorFactory.seed = 0
    checker = _registry("ifeval")[instruction](instruction)
    checker.build_description(**kwargs)
    return bool(text.strip()) and bool(checker.check_following(text))


def ours(name: str, text: str) -> bool:
    kind = "word_count" if name == "word_count_at_most" else name
    return check(kind, text, SHARED[name][1])


@pytest.mark.parametrize("name", sorted(AGREE))
def test_selftune_agrees_with_the_reference(name):
    instruction, _, kwargs = SHARED[name]
    for text in AGREE[name]:
        assert ours(name, text) == reference(instruction, kwargs, text), (name, text)


@pytest.mark.parametrize("name,text,theirs,mine,why", DIFFER)
def test_deliberate_differences_are_pinned(name, text, theirs, mine, why):
    instruction, _, kwargs = SHARED[name]
    assert reference(instruction, kwargs, text) is theirs, why
    assert ours(name, text) is mine, why


def test_every_shared_type_has_cases():
    assert set(AGREE) == set(SHARED)
