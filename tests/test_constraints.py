import pytest

from selftune.data.constraints.registry import check, check_loose, compatible, describe
from selftune.data.constraints.types import CONSTRAINTS

# type -> (kwargs, passing texts, failing texts), all written by hand.
CASES = {
    "lowercase": ({}, ["all quiet here.\nno capitals at all."], ["Not lowercase.", "12345"]),
    "uppercase": ({}, ["ALL CAPS HERE, 42 TIMES."], ["MOSTLY CAPS but not all", "123"]),
    "no_commas": ({}, ["No commas here. None at all."], ["One, two."]),
    "word_count": (
        {"relation": "at most", "n": 5},
        ["Just four words here."],
        ["This sentence has far more than five words."],
    ),
    "sentence_count": ({"relation": "at least", "n": 3}, ["One. Two! Three?"], ["Only one sentence here. And two."]),
    "paragraph_count": (
        {"n": 2},
        ["First paragraph.\n\nSecond paragraph."],
        ["One paragraph.\nStill the same one.", "A.\n\nB.\n\nC."],
    ),
    "bullet_count": ({"n": 3}, ["Intro:\n* one\n* two\n- three"], ["* one\n* two", "*not a bullet\n* a\n* b"]),
    "title": ({}, ["<<The Sea>>\nIt is blue."], ["The Sea\nIt is blue.", "<<>> empty title"]),
    "json_format": ({}, ['{"a": 1}', '```json\n{"a": [1, 2]}\n```'], ["{'a': 1}", 'Here is JSON: {"a": 1}']),
    "quoted": ({}, ['"The whole answer is quoted."'], ['"Quoted" but then more.', '""']),
    "end_phrase": (
        {"phrase": "That is all."},
        ["Blue is calm. That is all.  \n"],
        ["That is all. More words.", "That is all"],
    ),
    "start_phrase": ({"phrase": "Sure thing."}, ["  Sure thing. Here it is."], ["Here it is. Sure thing."]),
    "first_word": ({"paragraph": 1, "word": "today"}, ["Today, we talk.\n\nThen more."], ["We talk today.", ""]),
    "include_keywords": (
        {"keywords": ["river", "stone"]},
        ["A Stone sat by the river."],
        ["A stone sat by the sea.", "Stones by rivers."],
    ),
    "forbidden_words": ({"keywords": ["the"]}, ["A cat sat on a mat. Theatre is fine."], ["The cat sat."]),
    "keyword_frequency": (
        {"relation": "at least", "n": 2, "keyword": "water"},
        ["Water, more water."],
        ["Water once; waterfall is another word."],
    ),
    "letter_frequency": ({"relation": "at most", "n": 1, "letter": "z"}, ["A lazy dog."], ["Zany zebras."]),
    "placeholders": ({"n": 2}, ["Send it to [name] at [address]."], ["Send it to [name].", "No brackets."]),
    "postscript": ({"phrase": "P.S."}, ["Main text.\n\nP.S. One more thing."], ["Main text. P.S.", "Main text."]),
    "highlighted_sections": (
        {"n": 2},
        ["An *important* point and **another**."],
        ["Only *one* highlight.", "Math 2 * 3 * 4."],
    ),
    "numbered_sections": (
        {"n": 2},
        ["SECTION 1\nIntro.\nSECTION 2\nEnd."],
        ["SECTION 1\nOnly one.", "Section 1\nsection 2"],
    ),
    "fixed_options": (
        {"options": ["My answer is yes.", "My answer is no."]},
        ["My answer is no."],
        ["Maybe.", "My answer is yes. My answer is no."],
    ),
    "two_answers": (
        {},
        ["First answer.\n******\nSecond answer."],
        ["Only one answer.", "Same.\n******\nSame.", "a ****** b ****** c"],
    ),
    "capital_words": ({"relation": "at least", "n": 2}, ["This is VERY IMPORTANT."], ["Only ONE stressed word. I am."]),
}


def test_at_least_twenty_types_all_tested():
    assert len(CONSTRAINTS) >= 20
    assert set(CASES) == set(CONSTRAINTS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_checker_on_hand_written_texts(name):
    kwargs, passing, failing = CASES[name]
    for text in passing:
        assert check(name, text, kwargs), f"{name} should pass: {text!r}"
    for text in failing:
        assert not check(name, text, kwargs), f"{name} should fail: {text!r}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_instruction_is_rendered_from_parameters(name):
    kwargs, _, _ = CASES[name]
    sentence = describe(name, kwargs)
    assert sentence.endswith((".", ":", "*", "P.S.", '"')) and len(sentence) > 20
    for value in kwargs.values():
        shown = value if isinstance(value, list) else [value]
        for item in shown:
            assert str(item) in sentence


def test_every_pool_and_wording_renders_in_both_splits():
    import random

    rng = random.Random(0)
    for kind in CONSTRAINTS.values():
        for split in ("train", "eval"):
            assert len(kind.wording_ids(split)) >= 2, f"{kind.name} needs several {split} wordings"
            for wording in kind.wording_ids(split):
                kwargs = kind.sample_kwargs(rng, split)
                sentence = describe(kind.name, kwargs, wording)
                assert "{" not in sentence.replace('{"', ""), sentence  # every field filled in
    with pytest.raises(ValueError, match="no wording"):
        describe("lowercase", {}, "eval-9")


def test_eval_wordings_and_values_never_occur_in_train():
    for kind in CONSTRAINTS.values():
        assert not set(kind.wordings["train"]) & set(kind.wordings["eval"]), kind.name
        for name, pool in kind.pools.items():
            if name in ("relation", "paragraph"):
                continue  # a relation or a paragraph number alone is not a value to memorise
            assert not [v for v in pool["eval"] if v in pool["train"]], f"{kind.name}.{name}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_empty_or_blank_text_never_passes(name):
    kwargs, _, _ = CASES[name]
    for text in ("", "   ", "\n\n"):
        assert not check(name, text, kwargs) and not check_loose(name, text, kwargs)


def test_parameter_schema_rejects_bad_kwargs():
    with pytest.raises(ValueError):  # pydantic's ValidationError
        check("word_count", "text", {"relation": "about", "n": 5})
    with pytest.raises(ValueError, match="unknown constraint type"):
        check("no_such", "text", {})


def test_loose_reading_forgives_a_preamble_and_markdown():
    text = "Sure! Here is my answer:\nall lowercase here"
    assert not check("lowercase", text, {}) and check_loose("lowercase", text, {})
    assert check_loose("end_phrase", "**That is all.**", {"phrase": "That is all."})
    assert not check_loose("lowercase", "Capital everywhere\nStill Capital", {})


def test_conflicting_types_are_not_combined():
    assert not compatible(["lowercase"], "uppercase")
    assert not compatible(["json_format"], "title")
    assert not compatible(["title"], "two_answers")
    assert compatible(["title"], "no_commas")
