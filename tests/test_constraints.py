import pytest

from selftune.data.constraints.registry import CONSTRAINTS, check, check_loose, compatible, describe

# type -> (kwargs, passing texts, failing texts), all written by hand. Where a type is one of
# IFEval's, the texts follow the reference checker's reading (noted where it surprises).
CASES = {
    "lowercase": (
        {},
        ["all quiet here.\nno capitals at all, just lower case words in english."],
        ["Not lowercase.", "12345"],
    ),
    "uppercase": (
        {},
        ["THIS WHOLE ANSWER IS WRITTEN IN CAPITAL LETTERS, FROM THE FIRST WORD TO THE LAST ONE."],
        ["MOSTLY CAPS but not all", "123"],
    ),
    "no_commas": ({}, ["No commas here. None at all."], ["One, two."]),
    "word_count": (
        {"relation": "at most", "n": 5},
        ["Just four words here."],
        ["This sentence has far more than five words.", "don't won't can't"],  # IFEval counts \w+ runs: 6
    ),
    "sentence_count": ({"relation": "at least", "n": 3}, ["One. Two! Three?"], ["Only one sentence here. And two."]),
    "paragraph_count": (
        {"n": 2},
        ["First paragraph.\n\nSecond paragraph."],
        ["One paragraph.\nStill the same one.", "A.\n\nB.\n\nC."],
    ),
    "divided_paragraphs": (
        {"n": 2},
        ["First part.\n\n***\n\nSecond part.", "***\nFirst.\n***\nSecond.\n***"],  # empty ends do not count
        ["One part only.", "A.\n***\n***\nB.", "A.\n***\nB.\n***\nC."],
    ),
    "nth_paragraph_first_word": (
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "finally"},
        ['Intro here.\n\n"Finally, the end.', "Intro.\n\nfinally, done."],
        ["Intro.\n\nAt last, finally.", "Intro.\n\nFinally.\n\nMore.", "Only one.\n\n", "Intro.\n\nfinally: done."],
    ),
    "bullet_count": (
        {"n": 3},
        ["Intro:\n* one\n* two\n- three", "*one\n*two\n*three"],  # IFEval: a star and any non-star
        ["* one\n* two", "**not a bullet**\n* a\n* b", "* a\n* b\n* c\n---"],  # a line of dashes is one
    ),
    "title": ({}, ["<<The Sea>>\nIt is blue."], ["The Sea\nIt is blue.", "<<>> empty title", "<<  >> blank"]),
    "json_format": ({}, ['{"a": 1}', '```json\n{"a": [1, 2]}\n```'], ["{'a': 1}", 'Here is JSON: {"a": 1}']),
    "quoted": ({}, ['"The whole answer is quoted."', '""'], ['"Quoted" but then more.', '"']),
    "repeat_prompt": (
        {"prompt_to_repeat": "Write a poem about tea."},
        ["write a poem about tea.\n\nLeaves in hot water.", "  Write a poem about tea. Steam rises."],
        ["Here: Write a poem about tea.", "Write a poem about coffee."],
    ),
    "end_phrase": (
        {"phrase": "That is all."},
        ["Blue is calm. That is all.  \n", 'Blue is calm. THAT IS ALL."'],  # IFEval: case and a quote ignored
        ["That is all. More words.", "That is all"],
    ),
    "start_phrase": ({"phrase": "Sure thing."}, ["  Sure thing. Here it is."], ["Here it is. Sure thing."]),
    "first_word": ({"paragraph": 1, "word": "today"}, ["Today, we talk.\n\nThen more."], ["We talk today.", ""]),
    "include_keywords": (
        {"keywords": ["river", "stone"]},
        ["A Stone sat by the river.", "Stones by rivers."],  # IFEval: a keyword inside a word counts
        ["A stone sat by the sea.", "A pebble by the sea."],
    ),
    "forbidden_words": ({"keywords": ["the"]}, ["A cat sat on a mat. Theatre is fine."], ["The cat sat."]),
    "keyword_frequency": (
        {"relation": "at least", "n": 2, "keyword": "water"},
        ["Water, more water.", "Water and a waterfall."],  # IFEval counts the keyword inside words too
        ["Water once, then rain."],
    ),
    "letter_frequency": ({"relation": "at most", "n": 1, "letter": "z"}, ["A lazy dog."], ["Zany zebras."]),
    "placeholders": ({"n": 2}, ["Send it to [name] at [address].", "Call [] and [x]."], ["Send it to [name].", "No."]),
    "postscript": (
        {"phrase": "P.S."},
        ["Main text.\n\nP.S. One more thing.", "Main text. p. s. also"],
        ["Main text. PS yes.", "Main text."],
    ),
    "highlighted_sections": (
        {"n": 2},
        ["An *important* point and **another**."],
        ["Only *one* highlight.", "Math 2 * 3 * 4.", "Empty ** and * * here."],
    ),
    "numbered_sections": (
        {"n": 2, "splitter": "Section"},
        ["Section 1\nIntro.\nSection 2\nEnd.", "Section 1 a Section 2 b Section 3 c"],  # IFEval: at least n
        ["Section 1\nOnly one.", "SECTION 1\nSECTION 2"],
    ),
    "fixed_options": (
        {"options": ["My answer is yes.", "My answer is no."]},
        ["My answer is no.", "Well... My answer is yes. Because."],  # IFEval: an option appears
        ["Maybe.", "my answer is yes."],
    ),
    "two_answers": (
        {},
        ["First answer.\n******\nSecond answer.", "******\nA.\n******\nB.\n******"],
        ["Only one answer.", "Same.\n******\nSame.", "a ****** b ****** c", "a ****** ****** b"],
    ),
    "capital_words": ({"relation": "at least", "n": 2}, ["This is VERY IMPORTANT."], ["Only ONE stressed word. I am."]),
    "response_language": (
        {"language": "fr"},
        ["Bonjour à tous, je suis très heureux de vous présenter ce petit texte en français aujourd'hui."],
        ["Hello everyone, I am very happy to present this short text in English today."],
    ),
    "end_with_question": ({}, ["It is late. Shall we go?", "Ready?**"], ["Is it late? We go.", "Done."]),
    "bold_words": ({"n": 2}, ["A **bold** and a **brave** one."], ["Only **one** here.", "Stars * not * bold."]),
    "markdown_headers": ({"n": 2}, ["# Start\ntext\n## Next\nmore"], ["#notaheader\n## One", "Plain text."]),
    "numbered_list": (
        {"n": 3},
        ["1. a\n2. b\n3. c", "Intro\n1) one\n2) two\n3) three"],
        ["1. a\n3. b\n2. c", "1. a\n2. b"],
    ),
    "max_sentence_words": ({"n": 4}, ["Short one here. Also short."], ["This sentence is far too long for it.", ""]),
    "hashtags": ({"n": 2}, ["A post.\n\n#sea #sun"], ["#sea #sun\nA post after them.", "A post. #sea"]),
    "no_exclamation": ({}, ["Calm words only."], ["Wow! Great."]),
    "code_block": ({}, ["Here:\n```\nprint(1)\n```"], ["Inline `code` only.", "```\n```"]),
    "table_rows": (
        {"n": 2},
        ["| a | b |\n| --- | --- |\n| 1 | 2 |\n| 3 | 4 |"],
        ["| a | b |\n| --- | --- |\n| 1 | 2 |", "| a | b |\n| 1 | 2 |\n| 3 | 4 |"],
    ),
    "blockquote": ({}, ["He said:\n> Stay calm.\nThen left."], ["He said > stay calm.", ">no space"]),
    "line_count": ({"n": 2}, ["One line.\n\nTwo lines."], ["One line.", "A\nB\nC"]),
    "word_length_limit": ({"n": 5}, ["A cat sat on a mat."], ["Extraordinary cats.", ""]),
    "sign_off": ({"phrase": "Cheers,"}, ["Thanks.\n\nCheers,\nSam"], ["Cheers, Sam", "Cheers,\nSam\nand more\nlines"]),
    "semicolons": ({"n": 2}, ["One; two; three."], ["One; two."]),
    "tag_wrapped": ({"tag": "answer"}, ["<answer>\nYes.\n</answer>"], ["<answer></answer>", "Yes. <answer>x</answer>"]),
    "question_count": ({"n": 2}, ["Why? How? Because."], ["Why? Because."]),
    "paragraph_max_sentences": (
        {"n": 2},
        ["A. B.\n\nC."],
        ["A. B. C.\n\nD.", "A. B."],  # one paragraph is not enough
    ),
    "headline": ({"n": 3}, ["Tea Time Today\n\nThe text."], ["A much too long headline here\n\nText.", "No break."]),
    "bracketed_word": ({"word": "note"}, ["Take a [note] here.", "A [Note]."], ["Take a note.", "[notes]"]),
    "keyword_in_title": ({"word": "guide"}, ["<<A Guide to Tea>>\nText."], ["<<Tea>> a guide.", "A guide."]),
    "colon_lines": ({"n": 2}, ["Where: here\nWhen: now"], ["where: here\nwhen: now", "Where: here"]),
    "ends_with_word": ({"word": "today"}, ["We start today.", "Now, TODAY!"], ["Today we start.", "today's"]),
    "all_sentences_end_with_period": ({}, ["One. Two."], ["One? Two.", "A line\nwithout a stop."]),
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
    kind = CONSTRAINTS[name]
    for value in kind.fields(kind.params.model_validate(kwargs)).values():
        assert str(value) in sentence


def test_every_pool_and_wording_renders_in_both_splits():
    import random

    rng = random.Random(0)
    for kind in CONSTRAINTS.values():
        for split in ("train", "eval"):
            assert len(kind.wording_ids(split)) >= 2, f"{kind.name} needs several {split} wordings"
            for wording in kind.wording_ids(split):
                kwargs = kind.sample_kwargs(rng, split, request="Write a note about tea.")
                sentence = describe(kind.name, kwargs, wording)
                assert "{" not in sentence.replace('{"', ""), sentence  # every field filled in
    with pytest.raises(ValueError, match="no wording"):
        describe("lowercase", {}, "eval-9")


def test_eval_wordings_and_values_never_occur_in_train():
    import random

    for kind in CONSTRAINTS.values():
        assert not set(kind.wordings["train"]) & set(kind.wordings["eval"]), kind.name
        for name, pool in kind.pools.items():
            if name in ("relation", "paragraph"):
                continue  # a relation or a paragraph number alone is not a value to memorise
            assert not [v for v in pool["eval"] if v in pool["train"]], f"{kind.name}.{name}"
        if kind.draw is not None:  # parameters drawn jointly: what a prompt asks, relation and value together
            drawn = {
                split: {tuple(sorted(kind.sample_kwargs(random.Random(seed), split).items())) for seed in range(200)}
                for split in ("train", "eval")
            }
            shared = {
                item
                for item in drawn["eval"] & drawn["train"]
                if not set(dict(item)) <= {"nth_paragraph", "num_paragraphs"}
            }
            assert not shared, f"{kind.name}: {sorted(shared)[:3]}"


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
