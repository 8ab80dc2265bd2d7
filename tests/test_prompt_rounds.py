"""Prompts as users write them and rounds that see new ones: 1 to 5 constraints per train prompt,
long-form tasks with their word count, an eval split of IFEval's shape, a request repeated word for
word, answer budgets that follow the length asked, and each round's fresh train prompts."""

from __future__ import annotations

import collections
import re

from selftune.data.constraints import ifeval_types
from selftune.data.constraints.registry import CONSTRAINTS, check, fails_early
from selftune.data.prompts import LONG_FORMS, answer_tokens, build_prompts, words_asked, words_fitting
from selftune.generation.budget import generate_with_budgets
from selftune.generation.types import SamplingParams
from tests.conftest import MockGenerator


def test_train_prompts_carry_one_to_five_constraints_and_eval_prompts_one_to_three():
    records = build_prompts(400, 200, max_constraints=5, seed=0)
    train = collections.Counter(len(r.constraints) for r in records if r.split == "train")
    held_out = collections.Counter(len(r.constraints) for r in records if r.split == "eval")
    assert set(train) == {1, 2, 3, 4, 5} and set(held_out) == {1, 2, 3}
    assert all(len(r.constraints) <= 2 for r in build_prompts(100, 0, max_constraints=2, seed=0))
    # The held-out split uses IFEval's types only: it is the measure that should predict IFEval.
    assert {c.type for r in records if r.split == "eval" for c in r.constraints} == {
        name for name, kind in CONSTRAINTS.items() if kind.ifeval
    }


def test_long_form_tasks_ask_for_their_length_and_get_the_budget_for_it():
    records = build_prompts(300, 0, seed=0, long_form_share=0.5)
    long = [r for r in records if any(r.messages[0].content.startswith(f.split("{")[0]) for f in LONG_FORMS["train"])]
    assert 0.35 < len(long) / len(records) < 0.65
    for record in long:
        [asked] = [c.kwargs["n"] for c in record.constraints if c.type == "word_count"]
        assert 100 <= asked <= 600
        # The word count's need at least (another constraint may ask for more), never past the cap.
        assert min(768, int(asked * 1.4) + 64) <= answer_tokens(record, 256, 768) <= 768
    short = [r for r in records if r not in long and all(c.type != "word_count" for c in r.constraints)]
    assert short and all(answer_tokens(r, 256, 768) in range(256, 769) for r in short)
    assert all(answer_tokens(r, 128, 128) == 128 for r in records)  # a cap at the base: one budget for all


def test_no_train_prompt_asks_for_more_words_than_its_answer_cap_holds():
    for cap in (128, 256, 640):
        records = build_prompts(400, 100, seed=0, long_form_share=0.5, answer_cap=cap)
        train = [r for r in records if r.split == "train"]
        # No stated length is longer than the cap holds: no answer is cut short of the length asked.
        stated = [
            words_asked(c.type, c.kwargs) for r in train for c in r.constraints if CONSTRAINTS[c.type].asks_length
        ]
        assert max(stated) <= words_fitting(cap) and max(stated) > words_fitting(cap) * 0.6
        # Types that only need room for their structure (paragraphs, sections) are still drawn.
        assert {"nth_paragraph_first_word", "paragraph_count", "numbered_sections"} <= {
            c.type for r in train for c in r.constraints
        }
        long = [r for r in train if any(r.messages[0].content.startswith(f.split("{")[0]) for f in LONG_FORMS["train"])]
        asked = {c.kwargs["n"] for r in long for c in r.constraints if c.type == "word_count"}
        # At 128 tokens no long form's length fits; at 256 only the shortest (100 words); at 640 up to 400.
        assert (len(long) > 150, asked) == {
            128: (False, set()),
            256: (True, {100}),
            640: (True, {100, 150, 200, 300, 400}),
        }[cap]
    # The eval split does not depend on the train cap: only on its own (the evaluation's answer cap).
    held_out = {
        caps: [
            r for r in build_prompts(10, 100, seed=0, answer_cap=caps[0], eval_answer_cap=caps[1]) if r.split == "eval"
        ]
        for caps in ((128, None), (None, None), (128, 256))
    }
    assert [r.model_dump() for r in held_out[128, None]] == [r.model_dump() for r in held_out[None, None]]
    assert max(answer_tokens(r, 0, 10_000) for r in held_out[None, None]) > 256
    stated = [
        words_asked(c.type, c.kwargs)
        for r in held_out[128, 256]
        for c in r.constraints
        if CONSTRAINTS[c.type].asks_length
    ]
    assert max(stated) <= words_fitting(256)


def test_a_repeated_request_is_everything_before_its_instruction():
    records = [r for r in build_prompts(1000, 0, seed=3) if any(c.type == "repeat_prompt" for c in r.constraints)]
    assert records
    for record in records:
        assert record.constraints[-1].type == "repeat_prompt"  # placed last
        request = record.constraints[-1].kwargs["prompt_to_repeat"]
        text = record.messages[0].content
        assert text.startswith(request + " ") and len(request) < len(text)
        assert check("repeat_prompt", f"{request}\n\nThe answer.", record.constraints[-1].kwargs)


def test_no_repeated_request_already_breaks_another_constraint_of_its_prompt():
    # A request that quotes its forbidden words, or has more words than the answer may, cannot be
    # repeated by a passing answer: such a repeat is left out (2,200 prompts held 41 before).
    records = [r for seed in (0, 1) for r in build_prompts(2000, 200, seed=seed)]
    repeats = [r for r in records if r.constraints[-1].type == "repeat_prompt"]
    assert len(repeats) > 50
    for record in repeats:
        request = record.constraints[-1].kwargs["prompt_to_repeat"]
        assert not any(fails_early(c.type, request, c.kwargs) for c in record.constraints[:-1])


def _forbidden(records):
    """(prompt, its forbidden words) for each prompt that forbids words; no forbidden word is one
    another constraint of its prompt needs."""
    out = []
    for record in records:
        for constraint in record.constraints:
            if constraint.type == "forbidden_words":
                others = " ".join(str(c.kwargs) for c in record.constraints if c is not constraint).lower()
                assert not any(re.search(rf"\b{w}\b", others) for w in constraint.kwargs["keywords"]), record
                out.append((record, constraint.kwargs["keywords"]))
    return out


def test_forbidden_words_never_clash_with_another_constraint_and_may_come_from_the_task(monkeypatch):
    pools = CONSTRAINTS["forbidden_words"].pools["keywords"]
    pool_words = {w for split in pools.values() for words in split for w in words}

    def task_share(records) -> float:
        drawn = _forbidden(records)
        for record, banned in drawn:  # a word not from the pools is one of the task's own
            task = record.messages[0].content.split(". ")[0].lower()
            assert all(w in pool_words or re.search(rf"\b{w}\b", task) for w in banned)
        return sum(not set(banned) <= pool_words for _, banned in drawn) / len(drawn)

    default = build_prompts(2000, 200, seed=0)
    # TASK_WORD_SHARE is 0: task words only where the pools' words clash ("the" beside "The end.").
    assert 0 < task_share(default) < 0.05
    monkeypatch.setattr(ifeval_types, "TASK_WORD_SHARE", 0.75)
    shared = build_prompts(2000, 200, seed=0)
    assert 0.6 < task_share(shared) < 0.9
    # Seeded by the prompt itself: the share changes the prompts that forbid words, and no other.
    changed = [b for b, a in zip(default, shared, strict=True) if b.model_dump() != a.model_dump()]
    assert changed and all(any(c.type == "forbidden_words" for c in b.constraints) for b in changed)


def test_each_round_gets_fresh_train_prompts_and_the_stream_is_stable():
    rounds = {r: build_prompts(120, 50, seed=0, round_number=r) for r in (1, 2, 3)}
    texts = {r: {p.messages[0].content for p in records if p.split == "train"} for r, records in rounds.items()}
    assert not texts[1] & texts[2] and not texts[2] & texts[3] and not texts[1] & texts[3]
    assert all(p.split == "train" and p.id.startswith(f"train-r{r}-") for r in (2, 3) for p in rounds[r])
    # Round r's prompts are the same whatever the number of rounds asked for (the stream continues).
    again = build_prompts(120, 50, seed=0, round_number=2)
    assert [p.model_dump() for p in again] == [p.model_dump() for p in rounds[2]]
    # Tasks do not repeat across rounds until the task pool is used up.
    tasks = {r: {p.messages[0].content.split(". ")[0] for p in rounds[r]} for r in (1, 2)}
    assert len(tasks[1] & tasks[2]) < 5


def test_eval_prompts_do_not_depend_on_the_train_settings():
    base = [r.model_dump() for r in build_prompts(50, 80, seed=0) if r.split == "eval"]
    other = build_prompts(300, 80, max_constraints=2, seed=0, long_form_share=0.9, type_weights={"title": 0})
    assert [r.model_dump() for r in other if r.split == "eval"] == base


def test_budgets_group_prompts_and_keep_the_callers_order_and_indices():
    seen = []

    def stop_when(prompt_index, sample_index, text):
        seen.append(prompt_index)
        return None

    generator = MockGenerator(lambda i: [f"answer {i}"])
    prompts = ["a", "b", "c", "d"]
    answers = generate_with_budgets(generator, prompts, SamplingParams(n=1), [300, 100, 300, 200], stop_when=stop_when)
    assert [call[1].max_new_tokens for call in generator.calls] == [100, 200, 300]
    assert [call[0] for call in generator.calls] == [["b"], ["d"], ["a", "c"]]
    assert [a[0].prompt_index for a in answers] == [0, 1, 2, 3]
    assert sorted(seen) == [0, 1, 2, 3]  # early rejection hears the caller's indices
