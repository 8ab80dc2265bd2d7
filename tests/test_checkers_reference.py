"""Our checkers of IFEval's types check what IFEval's reference checker checks: both run on the same
generated texts (passing, failing and edge cases, built from fragments that carry each type's
markers and parameter values) and must agree on every one. The agreement per type is printed
(`pytest -s`). Sentence and capital-word counts are not compared: the reference reads them with
nltk's punkt data, which cannot be installed here (selftune counts them with rules of its own,
docs/data.md says how)."""

from __future__ import annotations

import random

import pytest

from selftune.data.constraints.registry import CONSTRAINTS, check, validated_params

registry = pytest.importorskip("if_verifiable.ifeval.instructions_registry").INSTRUCTION_DICT
NEEDS_PUNKT = {"sentence_count", "capital_words"}
IFEVAL_TYPES = sorted(name for name, kind in CONSTRAINTS.items() if kind.ifeval)

COMMON = [
    "The", "the", "sea", "is", "blue", "calm", "water", "Water", "story", "today", "Today", "finally", "Finally",
    " ", " ", " ", "\n", "\n\n", "\n\n\n", ",", ".", "!", "?", ":", ";", "'", '"', "*", "**", "* ", "- ", "-", "---",
    "[x]", "[", "]", "[]", "<<", ">>", "<<A title>>", "<< >>", "***", "******", "1", "2", "3", "{", "}",
    '{"a": 1}', "```json", "```", "WORD", "CAPS", "é", "Ünï", "P.S.", "p.s.", "P.P.S", "PS:", "Note:",
]  # fmt: skip
SENTENCES = [
    "the tide comes in slowly over the sand and the gulls follow it along the shore",
    "we walked to the old mill by the river and sat there until the sun went down",
    "every morning the baker opens the shop before the first bus arrives in town",
    "a small garden can feed a family if it gets enough water and patient care",
    "the library keeps its oldest maps in a cool room where the light is always low",
]
# Edge cases every type sees: empty markers, separators at the ends, quotes, fences.
EDGES = [
    "x",
    '"x"',
    '""',
    "***\nA\n***\nB\n***",
    "A\n***\n***\nB",
    "******\nA\n******\nB\n******",
    "A ****** ****** B",
    '```json\n{"a": [1, 2]}\n```',
    "```\n[1]\n```",
    "<<>> and <<real>>",
    "* one\n*two\n**no**\n- three\n---",
    "An *a* and **b** and * * and ** **.",
    "SECTION 1 a SECTION 2 b",
    "Section1 x Section 2 y",
    "P.S. yes",
    "text p. s. here",
    "text. P.P.S later",
    "first\n\nsecond\n\n\nthird",
]


def fragments(name: str, kwargs: dict) -> list[str]:
    """The common fragments plus this constraint's own values (keywords, phrases, markers)."""
    own: list[str] = []
    for value in kwargs.values():
        own += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    if name == "fixed_options":
        own += [o.upper() for o in kwargs["options"]]
    if name == "repeat_prompt":
        request = kwargs["prompt_to_repeat"]
        own += [request, request.lower(), request.upper(), request[:8]]
    return COMMON + own * 4


def texts(name: str, kwargs: dict, count: int, seed: int) -> list[str]:
    rng = random.Random(f"{name}-{seed}")
    pieces = fragments(name, kwargs)
    out = list(EDGES)
    for _ in range(count):
        out.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 30))))
    if name == "repeat_prompt":  # half of them open with the request, in some case
        request = kwargs["prompt_to_repeat"]
        out += [rng.choice([request, request.lower(), request.upper()]) + text for text in out[: count // 2]]
    if name in ("uppercase", "lowercase"):  # whole sentences, in one case or nearly
        out += [rng.choice([str.upper, str.lower])(s) + rng.choice(["", "", "x", "X", " 1"]) for s in SENTENCES]
    if name == "nth_paragraph_first_word":  # paragraph layouts, the nth one opening with the word or not
        for _ in range(count):
            parts = [rng.choice(SENTENCES) for _ in range(rng.randint(1, 7))]
            nth = rng.randint(1, len(parts))
            opener = rng.choice(
                [kwargs["first_word"], kwargs["first_word"].title(), "other", '"' + kwargs["first_word"]]
            )
            parts[nth - 1] = opener + rng.choice([" ", ", ", ". ", ": ", "! "]) + parts[nth - 1]
            out.append(rng.choice(["\n\n", "\n\n", "\n\n\n", "\n"]).join(parts))
    return [text for text in out if text.strip()]  # a blank answer follows no instruction, in both


def parameter_sets(name: str) -> list[dict]:
    kind = CONSTRAINTS[name]
    drawn = [
        kind.sample_kwargs(random.Random(seed), split, request="Write a short poem about tea, please.")
        for seed in range(4)
        for split in ("train", "eval")
    ]
    if name == "fixed_options":  # the reference's options are fixed
        drawn = [{"options": ["My answer is yes.", "My answer is no.", "My answer is maybe."]}]
    unique = []
    for kwargs in drawn:
        if kwargs not in unique:
            unique.append(kwargs)
    return unique


def reference(name: str, kwargs: dict):
    kind = CONSTRAINTS[name]
    instruction = registry[kind.ifeval](kind.ifeval)
    instruction.build_description(**kind.reference_kwargs(validated_params(name, kwargs)))
    return instruction


@pytest.mark.parametrize("name", IFEVAL_TYPES)
def test_our_checker_agrees_with_the_reference_on_generated_texts(name):
    if name in NEEDS_PUNKT:
        pytest.skip(f"{name}: the reference needs nltk's punkt data, not installable offline")
    compared = disagreements = passed = 0
    examples = []
    for kwargs in parameter_sets(name):
        checker = reference(name, kwargs)
        for text in texts(name, kwargs, count=250, seed=len(examples)):
            ours, theirs = check(name, text, kwargs), bool(checker.check_following(text))
            compared += 1
            passed += ours
            if ours != theirs:
                disagreements += 1
                examples.append((kwargs, text, ours, theirs))
    print(f"\n{name:28s} {CONSTRAINTS[name].ifeval:45s} {compared - disagreements}/{compared} agree, {passed} pass")
    assert passed and passed < compared, f"{name}: the texts should hold passing and failing cases"
    assert not examples, f"{name}: {len(examples)} disagreements, e.g. {examples[:3]}"


def test_every_ifeval_instruction_has_exactly_one_type():
    implemented = [kind.ifeval for kind in CONSTRAINTS.values() if kind.ifeval]
    assert sorted(implemented) == sorted(set(implemented))
    assert set(implemented) == set(registry), sorted(set(registry) ^ set(implemented))
