"""Verifiable constraints, in the style of IFEval (Zhou et al. 2023), written for selftune.

Each type has a parameter schema (`params`), several wordings of its instruction rendered from
its parameters and pools of parameter values (`types`, the data table), a checker (`checkers`)
and, where a prefix can already fail for good, an early-failure rule (`early`). Wordings and
values are split into `train` and `eval`, so that held-out prompts use values and phrasings never
seen in training. `registry` is the API the rest of selftune uses.

Usage:
    from selftune.data.constraints import check, describe, CONSTRAINTS
    describe("word_count", {"relation": "at most", "n": 50})   # 'Answer with at most 50 words.'
    describe("word_count", {"relation": "at most", "n": 50}, "eval-1")
    # 'Make sure your response contains at most 50 words.'
    check("word_count", "Two words.", {"relation": "at most", "n": 50})  # True

To add a constraint type: a parameter schema in `params` (or an existing one), a checker in
`checkers`, an entry in `types` (wordings and value pools per split), an early rule in `early`
when a prefix can fail for good, and a repair in `selftune.data.repair` when one exists.
"""

from selftune.data.constraints.early import EARLY_FAIL
from selftune.data.constraints.registry import (
    CONSTRAINTS,
    check,
    check_loose,
    compatible,
    describe,
    fails_early,
    loose_variants,
    validated_params,
)
from selftune.data.constraints.types import ConstraintType

__all__ = [
    "CONSTRAINTS",
    "EARLY_FAIL",
    "ConstraintType",
    "check",
    "check_loose",
    "compatible",
    "describe",
    "fails_early",
    "loose_variants",
    "validated_params",
]
