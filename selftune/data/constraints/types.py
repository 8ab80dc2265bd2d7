"""What a constraint type is (`ConstraintType`), and the helpers its data tables share.

A type has a parameter schema, several wordings of its instruction per split, a checker and
pools of parameter values per split; the tables are `ifeval_types.py` (IFEval's 25 instruction
types, with the reference checker's semantics) and `training_types.py` (training-only types of our
own, none an IFBench test instruction). `registry.CONSTRAINTS` holds both.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from selftune.data.constraints.params import KeywordsParams, OptionsParams, Params

Pools = dict[str, dict[str, list[Any]]]  # param -> split -> values
Wordings = dict[str, list[str]]  # split -> instruction templates (str.format over `fields`)
Draw = Callable[[random.Random, str], dict[str, Any]]  # (rng, split) -> kwargs
# (rng, the task, the kwargs the pools gave, words the prompt's other constraints use) -> kwargs
# from the task, or None to keep the pools'
TaskDraw = Callable[[random.Random, str, dict[str, Any], frozenset[str]], "dict[str, Any] | None"]


def _default_fields(p: Params) -> dict[str, Any]:
    return p.model_dump()


def quoted_list(values: list[str]) -> str:
    return ", ".join(f'"{v}"' for v in values)


# Groups of types that fix the same part of an answer, so at most one of each can be asked:
# The whole answer's case: the answer is all one case, or capital words are counted.
CASE_TYPES = frozenset({"lowercase", "uppercase", "capital_words"})
# What fixes the answer's opening: a quoted, repeated or prescribed start.
OPENING_TYPES = frozenset(
    {"quoted", "repeat_prompt", "start_phrase", "first_word", "nth_paragraph_first_word", "headline"}
)
# What fixes the answer's layout into parts or lines.
LAYOUT_TYPES = frozenset(
    {"paragraph_count", "divided_paragraphs", "nth_paragraph_first_word", "line_count", "paragraph_max_sentences"}
)
# What fixes the answer's closing.
# Types whose check fixes the answer's very last characters: a cut-off answer cannot pass them, so
# they, not the generic completeness check, decide how the answer may end (a sign-off ends on a
# name, hashtags on a tag).
ENDS_ANSWER = frozenset({"end_phrase", "hashtags", "sign_off", "ends_with_word"})
CLOSING_TYPES = frozenset(
    {"end_phrase", "postscript", "quoted", "end_with_question", "hashtags", "sign_off", "ends_with_word"}
)


@dataclass(frozen=True)
class ConstraintType:
    name: str
    params: type[Params]
    # Several wordings of the instruction per split: `eval` wordings never occur in `train`, so a
    # gain on eval prompts shows the model follows the request however it is worded.
    wordings: Wordings
    checker: Callable[[str, Any], bool]
    pools: Pools = field(default_factory=dict)  # values to draw per split
    conflicts: frozenset[str] = frozenset()  # types that cannot be combined with this one
    whole_answer: bool = False  # dictates the whole answer's shape: never combined
    fields: Callable[[Any], dict[str, Any]] = _default_fields  # params -> template fields
    draw: Draw | None = None  # draws the kwargs jointly when they depend on each other
    # The IFEval instruction this type implements (`category:name`), and the kwargs its reference
    # checker takes for our parameters; None for a training-only type.
    ifeval: str | None = None
    reference_kwargs: Callable[[Any], dict[str, Any]] | None = None
    # Answer length the constraint asks for, in words (a per-prompt answer cap follows from it).
    words_asked: Callable[[Any], int] | None = None
    # The instruction states the length itself (a word or sentence count), so a run whose answers
    # cannot hold it never asks for it; the others' `words_asked` is room for their structure only.
    asks_length: bool = False
    # Its parameter is the request itself (what precedes the instruction): the prompt builder
    # fills it and places the instruction last.
    repeats_request: bool = False
    # Draws its parameters from the task's own words, some of the time (None: the pools' draw
    # stands); the prompt builder calls it once the prompt's constraints are drawn.
    task_draw: TaskDraw | None = None

    def sample_kwargs(self, rng: random.Random, split: str, request: str = "") -> dict[str, Any]:
        """Parameters drawn from the split's pools; `request` (what precedes the instruction) for a
        type that repeats it."""
        if self.repeats_request:
            return {"prompt_to_repeat": request}
        if self.draw is not None:
            return self.draw(rng, split)
        return {name: rng.choice(values[split]) for name, values in self.pools.items()}

    def wording_ids(self, split: str) -> list[str]:
        return [f"{split}-{k}" for k in range(len(self.wordings[split]))]

    def render(self, params: Params, wording: str = "train-0") -> str:
        split, _, index = wording.partition("-")
        try:
            template = self.wordings[split][int(index)]
        except (KeyError, ValueError, IndexError):
            raise ValueError(
                f"constraint {self.name}: no wording {wording!r}; known: "
                f"{', '.join(self.wording_ids('train') + self.wording_ids('eval'))}"
            ) from None
        return template.format(**self.fields(params))


def relation_pools(pool_train: list[int], pool_eval: list[int], relation: str | None = None) -> Pools:
    relations = [relation] if relation else ["at least", "at most"]
    return {"relation": {"train": relations, "eval": relations}, "n": {"train": pool_train, "eval": pool_eval}}


def bounds(table: dict[str, dict[str, list[int]]]) -> Draw:
    """Draw (relation, n) from per-split, per-relation values: a floor and a ceiling want other
    ranges ("at least 15 words" and "at most 600 words" ask for nothing)."""

    def draw(rng: random.Random, split: str) -> dict[str, Any]:
        relation = rng.choice(sorted(table[split]))
        return {"relation": relation, "n": rng.choice(table[split][relation])}

    return draw


def below(relation: str, n: int) -> tuple[str, int]:
    """Our relation and bound as IFEval's (`at most n` is its `less than n + 1`)."""
    return ("at least", n) if relation == "at least" else ("less than", n + 1)


def keywords_field(p: KeywordsParams) -> dict[str, Any]:
    return {"keywords": quoted_list(p.keywords)}


def options_field(p: OptionsParams) -> dict[str, Any]:
    return {"options": quoted_list(p.options)}
