"""Early rejection never cuts an answer that would pass: for every constraint type with an
early-failure rule, no prefix of a passing text is ever judged doomed (random texts and split
points), and the rule does fire on the prefixes it exists for."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selftune.data.constraints.early import EARLY_FAIL
from selftune.data.constraints.registry import CONSTRAINTS, check, fails_early

# Characters the rules look at: cases, commas, sentence and paragraph breaks, bullets, quotes,
# brackets, stars, digits, and the words and phrases the parameters use.
PIECES = [
    "a",
    "B",
    "the",
    "The",
    "THE",
    " ",
    " ",
    "\n",
    "\n\n",
    ",",
    ".",
    "!",
    "?",
    "*",
    "* ",
    "- ",
    '"',
    "{",
    "}",
    "[",
    "]",
    "1",
    "2",
    "SECTION 1",
    "SECTION 2",
    "SECTION 3",
    "******",
    "***",
    "<answer>",
    "</answer>",
    "1. ",
    "2. ",
    "3) ",
    "finally",
    "Finally",
    "Write a poem.",
    "Write",
    "write a",
    "Sure thing.",
    "supercalifragilistic",
    "today",
    "Today",
    "water",
    "z",
    "Sure thing.",
    "Sure",
    "I agree.",
    "I disagree.",
    "'",
    "-",
    "é",
    "É",
    "ß",
    "\t",
]
texts = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)

# Parameters per type: the pools of both splits plus hand-picked edges.
PARAMS = {
    name: [kind.sample_kwargs(random.Random(seed), split) for seed in range(6) for split in ("train", "eval")]
    for name, kind in CONSTRAINTS.items()
    if name in EARLY_FAIL
}
PARAMS["word_count"] += [{"relation": "at most", "n": 1}, {"relation": "at most", "n": 3}]
PARAMS["sentence_count"] += [{"relation": "at most", "n": 1}, {"relation": "at most", "n": 2}]
PARAMS["paragraph_count"] += [{"n": 1}, {"n": 2}]
PARAMS["bullet_count"] += [{"n": 1}, {"n": 2}]
PARAMS["start_phrase"] += [{"phrase": "Sure thing."}]
PARAMS["first_word"] += [{"paragraph": 1, "word": "today"}]
PARAMS["forbidden_words"] += [{"keywords": ["the"]}]
PARAMS["keyword_frequency"] += [{"relation": "at most", "n": 1, "keyword": "water"}]
PARAMS["letter_frequency"] += [{"relation": "at most", "n": 2, "letter": "z"}]
PARAMS["capital_words"] += [{"relation": "at most", "n": 1}]
PARAMS["divided_paragraphs"] += [{"n": 1}, {"n": 2}]
PARAMS["nth_paragraph_first_word"] += [
    {"num_paragraphs": 1, "nth_paragraph": 1, "first_word": "finally"},
    {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "today"},
]
PARAMS["repeat_prompt"] = [{"prompt_to_repeat": "Write a poem."}, {"prompt_to_repeat": "write a"}]
PARAMS["tag_wrapped"] += [{"tag": "answer"}]
PARAMS["numbered_list"] += [{"n": 1}, {"n": 2}]
PARAMS["max_sentence_words"] += [{"n": 1}, {"n": 2}]
PARAMS["word_length_limit"] += [{"n": 3}, {"n": 5}]
PARAMS["line_count"] += [{"n": 1}, {"n": 2}]
PARAMS["headline"] += [{"n": 1}, {"n": 2}]
PARAMS["paragraph_max_sentences"] += [{"n": 1}]


@pytest.mark.parametrize("name", sorted(EARLY_FAIL))
@settings(max_examples=300, deadline=None)
@given(text=texts, data=st.data())
def test_no_prefix_of_a_passing_text_is_doomed(name, text, data):
    kwargs = data.draw(st.sampled_from(PARAMS[name]))
    if not check(name, text, kwargs):
        return
    for cut in range(len(text) + 1):
        assert not fails_early(name, text[:cut], kwargs), (name, kwargs, text, cut)


@pytest.mark.parametrize("name", sorted(EARLY_FAIL))
@settings(max_examples=200, deadline=None)
@given(text=texts, data=st.data())
def test_a_doomed_prefix_fails_whatever_follows(name, text, data):
    kwargs = data.draw(st.sampled_from(PARAMS[name]))
    cut = data.draw(st.integers(0, len(text)))
    if fails_early(name, text[:cut], kwargs):
        assert not check(name, text, kwargs), (name, kwargs, text, cut)


# Each rule fires where it should: a prefix that cannot recover (hand-written).
DOOMED = {
    "lowercase": ({}, "The"),
    "uppercase": ({}, "HELLo"),
    "no_commas": ({}, "One, two"),
    "word_count": ({"relation": "at most", "n": 2}, "one two three four"),
    "sentence_count": ({"relation": "at most", "n": 1}, "One. Two. Thr"),
    "paragraph_count": ({"n": 1}, "One.\n\nTwo.\n\nThr"),
    "bullet_count": ({"n": 1}, "* one\n* two"),
    "json_format": ({}, "Here is"),
    "quoted": ({}, "  Hello"),
    "start_phrase": ({"phrase": "Sure thing."}, "Sure thin "),
    "first_word": ({"paragraph": 1, "word": "today"}, "Tomorrow we"),
    "forbidden_words": ({"keywords": ["the"]}, "In the "),
    "keyword_frequency": ({"relation": "at most", "n": 1, "keyword": "water"}, "water and water."),
    "letter_frequency": ({"relation": "at most", "n": 1, "letter": "z"}, "zz"),
    "capital_words": ({"relation": "at most", "n": 1}, "VERY VERY "),
    "two_answers": ({}, "a ****** b ****** c ******"),
    "divided_paragraphs": ({"n": 1}, "One.\n***\nTwo.\n***"),
    "nth_paragraph_first_word": (
        {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "finally"},
        "At last.\n\nMore",
    ),
    "repeat_prompt": ({"prompt_to_repeat": "Write a poem."}, "Here is"),
    "no_exclamation": ({}, "Wow!"),
    "tag_wrapped": ({"tag": "answer"}, "Yes"),
    "numbered_list": ({"n": 2}, "1. a\n3. b"),
    "max_sentence_words": ({"n": 2}, "One two three. Next"),
    "word_length_limit": ({"n": 3}, "extraordinary "),
    "line_count": ({"n": 1}, "a\nb\n"),
    "headline": ({"n": 2}, "A very long headline\n"),
    "paragraph_max_sentences": ({"n": 1}, "One. Two.\n\nThree"),
    "all_sentences_end_with_period": ({}, "Why? Because"),
}
# ...and does not fire on a prefix that can still pass.
ALIVE = {
    "word_count": ({"relation": "at least", "n": 2}, "one two three"),
    "start_phrase": ({"phrase": "Sure thing."}, "  Sure th"),
    "first_word": ({"paragraph": 1, "word": "today"}, "Today"),  # may still become "Todays"? no: a word ends at a space
    "forbidden_words": ({"keywords": ["the"]}, "In the"),  # "theatre" may follow
    "two_answers": ({}, "a ****** b ******"),  # an empty last part is allowed
    "repeat_prompt": ({"prompt_to_repeat": "Write a poem."}, "  write a po"),
    "tag_wrapped": ({"tag": "answer"}, " <ans"),
    "json_format": ({}, "```json\n"),
}


def test_every_rule_has_a_doomed_case():
    assert set(DOOMED) == set(EARLY_FAIL)


@pytest.mark.parametrize("name", sorted(DOOMED))
def test_rule_fires_on_a_doomed_prefix(name):
    kwargs, prefix = DOOMED[name]
    assert fails_early(name, prefix, kwargs)


@pytest.mark.parametrize("name", sorted(ALIVE))
def test_rule_waits_on_a_prefix_that_can_still_pass(name):
    kwargs, prefix = ALIVE[name]
    assert not fails_early(name, prefix, kwargs)


def test_types_without_a_rule_never_fail_early():
    assert not fails_early("title", "No title here at all.\n\n", {})
    assert not fails_early("include_keywords", "nothing", {"keywords": ["river"]})


def test_hook_keeps_whole_answers_whichever_sample_fails_first():
    from selftune.data.early_rejection import EarlyRejection
    from selftune.data.records import PromptRecord

    lower = PromptRecord(
        id="p", messages=[{"role": "user", "content": "x"}], constraints=[{"type": "lowercase", "kwargs": {}}]
    )
    hook = EarlyRejection([lower, lower], full_samples=1, answers=2)
    # Prompt 0: the second answer fails first and is cut; the first must then run whole.
    assert hook(0, 1, "Upper") == "lowercase#0"
    assert hook(0, 0, "Upper") is None
    # Prompt 1 counts on its own: its first answer fails first and is cut, the second runs whole.
    assert hook(1, 0, "Upper") == "lowercase#0"
    assert hook(1, 1, "Upper") is None
    assert hook(1, 1, "still fine") is None
    with pytest.raises(ValueError):
        EarlyRejection([lower], full_samples=1)  # how many answers a prompt has is needed


def test_a_check_no_repair_fixes_is_cut_even_when_the_answer_would_be_kept_whole():
    from selftune.data.early_rejection import EarlyRejection
    from selftune.data.records import PromptRecord
    from selftune.data.repair import repairable

    assert not repairable("letter_frequency") and repairable("lowercase")
    prompt = PromptRecord(
        id="p",
        messages=[{"role": "user", "content": "x"}],
        constraints=[
            {"type": "lowercase", "kwargs": {}},
            {"type": "letter_frequency", "kwargs": {"letter": "z", "relation": "at most", "n": 1}},
        ],
    )
    hook = EarlyRejection([prompt], full_samples=1, answers=1)
    assert hook(0, 0, "Upper") is None  # the only answer: kept whole for a repair
    # Two z's cannot be repaired: nothing is lost by cutting, and the check named is that one.
    assert hook(0, 0, "Upper zz ") == "letter_frequency#1"
