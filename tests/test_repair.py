import pytest

from selftune.data.constraints.registry import CONSTRAINTS, check
from selftune.data.records import PromptRecord
from selftune.data.repair import REPAIRS, repair_answer
from selftune.scoring.constraint import ConstraintScorer

ANSWER = (
    "The ocean is deep and wide, and it covers most of the planet. Waves roll in every day. "
    "Sailors have crossed it for centuries. Fish of every color live in it. It still hides many secrets!"
)


def prompt(*constraints) -> PromptRecord:
    return PromptRecord(
        id="p",
        messages=[{"role": "user", "content": "Write about the ocean."}],
        constraints=[{"type": t, "kwargs": k} for t, k in constraints],
    )


# type -> kwargs whose repair is expected to succeed on ANSWER (which fails each of them)
CASES = {
    "lowercase": {},
    "uppercase": {},
    "no_commas": {},
    "word_count": {"relation": "at most", "n": 20},
    "sentence_count": {"relation": "at most", "n": 2},
    "paragraph_count": {"n": 3},
    "bullet_count": {"n": 4},
    "numbered_sections": {"n": 2},
    "title": {},
    "json_format": {},
    "quoted": {},
    "end_phrase": {"phrase": "That is all."},
    "start_phrase": {"phrase": "Here goes:"},
    "first_word": {"paragraph": 1, "word": "imagine"},
    "forbidden_words": {"keywords": ["the", "is"]},
    "placeholders": {"n": 2},
    "postscript": {"phrase": "P.S."},
    "highlighted_sections": {"n": 2},
    "fixed_options": {"options": ["I agree.", "I disagree."]},
    "two_answers": {},
    "capital_words": {"relation": "at least", "n": 3},
    "divided_paragraphs": {"n": 3},
    "nth_paragraph_first_word": {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "finally"},
    "repeat_prompt": {"prompt_to_repeat": "Write about the ocean."},
    "numbered_list": {"n": 3},
    "line_count": {"n": 2},
    "max_sentence_words": {"n": 6},
    "word_length_limit": {"n": 8},
    "paragraph_max_sentences": {"n": 2},
    "table_rows": {"n": 3},
    "markdown_headers": {"n": 2},
    "headline": {"n": 4},
    "blockquote": {},
    "semicolons": {"n": 2},
    "end_with_question": {},
    "bold_words": {"n": 2},
    "hashtags": {"n": 2},
    "sign_off": {"phrase": "Cheers,"},
    "bracketed_word": {"word": "ocean"},
    "keyword_in_title": {"word": "guide"},
    "no_exclamation": {},
    "code_block": {},
    "tag_wrapped": {"tag": "answer"},
    "all_sentences_end_with_period": {},
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_repair_makes_a_failing_answer_pass(kind):
    kwargs = CASES[kind]
    record = prompt((kind, kwargs))
    assert not check(kind, ANSWER, kwargs)
    fixed = repair_answer(record, ANSWER, siblings=["A second, different answer about the sea."])
    assert fixed is not None, kind
    assert fixed.repaired == [kind] and fixed.source == f"repair:{kind}"
    assert ConstraintScorer().score(record, [fixed.text])[0].passed
    # The model's own words stay: most of the answer's words are still there.
    kept = {w.lower() for w in ANSWER.split()} & {w.lower().strip('*"') for w in fixed.text.split()}
    assert len(kept) >= 8, fixed.text


def test_every_repair_is_tested_or_is_the_completeness_repair():
    assert set(REPAIRS) - set(CASES) == {"complete"}
    assert set(REPAIRS) - {"complete"} <= set(CONSTRAINTS)


def test_a_cut_off_answer_is_trimmed_to_its_last_sentence_then_repaired():
    record = prompt(("lowercase", {}))
    fixed = repair_answer(record, "The Sea is calm. Boats Drift slowly. Then the wind")
    assert fixed.text == "the sea is calm. boats drift slowly." and fixed.repaired == ["complete", "lowercase"]


def test_several_failing_checks_are_repaired_together():
    record = prompt(("lowercase", {}), ("title", {}), ("word_count", {"relation": "at most", "n": 25}))
    fixed = repair_answer(record, ANSWER)
    assert fixed is not None and set(fixed.repaired) == {"lowercase", "title", "word_count"}
    assert fixed.text.startswith("<<") and fixed.text == fixed.text.lower()


def test_no_repair_when_a_failing_check_has_none_or_the_answer_loops():
    assert repair_answer(prompt(("letter_frequency", {"relation": "at least", "n": 30, "letter": "z"})), ANSWER) is None
    assert repair_answer(prompt(("word_count", {"relation": "at least", "n": 500})), ANSWER) is None
    looping = "the sea the sea the sea " * 10
    assert repair_answer(prompt(("uppercase", {})), looping) is None
    # A passing answer needs no repair.
    assert repair_answer(prompt(("title", {})), "<<Sea>> The sea is wide.") is None


def test_a_forbidden_content_word_is_not_cut_out_of_the_answer():
    # Function words get a synonym; a topic word has none, and cutting it would break the sentence.
    assert repair_answer(prompt(("forbidden_words", {"keywords": ["ocean"]})), ANSWER) is None
    fixed = repair_answer(
        prompt(("forbidden_words", {"keywords": ["is", "planet"]})), ANSWER.replace("planet", "world")
    )
    assert fixed is not None and " is " not in fixed.text and "seems" in fixed.text


def test_two_answers_needs_a_different_sibling():
    record = prompt(("two_answers", {}))
    assert repair_answer(record, ANSWER, siblings=[ANSWER]) is None
    fixed = repair_answer(record, ANSWER, siblings=["Another view: the sea is a road."])
    assert fixed.text.count("******") == 1
