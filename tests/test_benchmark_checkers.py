"""selftune's checkers of IFEval's types against the IFEval reference checkers (if-verifiable), on
hand-written edge cases for every type they share (tests/test_checkers_reference.py adds thousands
of generated texts).

`AGREE` cases must get the same verdict from both. `FORMERLY_DIFFERENT` are the cases where
selftune's checkers used to read a text otherwise than the reference (before they took IFEval's
semantics): both verdicts are pinned, and they now match.
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

# (our type, text, the reference's verdict (ours is now the same), what selftune read otherwise before).
FORMERLY_DIFFERENT = [
    ("no_commas", "One，two.", True, "selftune also forbade the full-width comma"),
    ("bullet_count", "*one\n*two", True, "selftune needed a space after the bullet marker"),
    ("bullet_count", "---\n- one", True, "selftune did not count a line of dashes as a bullet"),
    ("title", "<<a <b> c>>", True, "selftune's title could not hold angle brackets"),
    ("title", "<< !! >>", True, "selftune's title needed a word character"),
    ("quoted", '""', True, "selftune needed text between the quotes"),
    ("end_phrase", EN + ". that is all.", True, "selftune wanted the phrase's exact case"),
    ("end_phrase", EN + '. That is all."', True, "selftune did not drop a closing quote first"),
    ("include_keywords", "Rivers everywhere.", True, "selftune matched whole words only"),
    ("keyword_frequency", "boats and boats", True, "selftune counted whole words only"),
    ("placeholders", "[] and []", True, "selftune's placeholder had to hold text"),
    ("postscript", EN + ".\n\nP. S. later", True, "selftune wanted the marker as given, not 'P. S.'"),
    ("numbered_sections", "SECTION 1\nA\nSECTION 2\nB\nSECTION 3\nC", True, "selftune wanted exactly N sections"),
    ("numbered_sections", "SECTION 2\nA\nSECTION 1\nB", True, "selftune wanted the sections numbered in order"),
    ("two_answers", "a ****** b ******", True, "selftune did not allow an empty last part"),
    ("word_count_at_most", "one two three four five six", False, "(always agreed) six words fail both"),
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


@pytest.mark.parametrize("name,text,theirs,before", FORMERLY_DIFFERENT)
def test_former_differences_now_agree_with_the_reference(name, text, theirs, before):
    instruction, _, kwargs = SHARED[name]
    assert reference(instruction, kwargs, text) is theirs, before
    assert ours(name, text) is theirs, before


def test_every_shared_type_has_cases():
    assert set(AGREE) == set(SHARED)
