"""The constraint API: validate a constraint's parameters, word it, check a text against it (strict
and IFEval's loose reading), and ask whether a prefix has already failed it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from selftune.data.constraints.early import EARLY_FAIL
from selftune.data.constraints.ifeval_types import IFEVAL_TYPES
from selftune.data.constraints.training_types import TRAINING_TYPES
from selftune.data.constraints.types import ConstraintType

# Every constraint type by name: IFEval's 25, then the training-only ones.
CONSTRAINTS: dict[str, ConstraintType] = {t.name: t for t in IFEVAL_TYPES + TRAINING_TYPES}


def _lookup(name: str) -> ConstraintType:
    try:
        return CONSTRAINTS[name]
    except KeyError:
        raise ValueError(f"unknown constraint type {name!r}; known: {', '.join(CONSTRAINTS)}") from None


def validated_params(name: str, kwargs: dict[str, Any]) -> BaseModel:
    """A constraint's parameters, validated against its type's schema: ValueError for an unknown
    type, pydantic's ValidationError (a ValueError too) for bad kwargs."""
    return _lookup(name).params.model_validate(kwargs)


def describe(name: str, kwargs: dict[str, Any], wording: str = "train-0") -> str:
    """The instruction sentence for a constraint, in one of its wordings (`train-K` or `eval-K`)."""
    return _lookup(name).render(validated_params(name, kwargs), wording)


def check(name: str, text: str, kwargs: dict[str, Any]) -> bool:
    """Does `text` satisfy the constraint? Empty or whitespace-only text never does (as in IFEval:
    an answer that says nothing follows no instruction, however vacuously it meets a rule)."""
    params = validated_params(name, kwargs)
    return bool(text.strip()) and _lookup(name).checker(text, params)


def fails_early(name: str, prefix: str, kwargs: dict[str, Any]) -> bool:
    """Can no continuation of `prefix` satisfy the constraint? (False when the type has no
    early-failure rule.) Used to stop doomed samples; see `EARLY_FAIL`."""
    rule = EARLY_FAIL.get(name)
    return rule is not None and rule(prefix, validated_params(name, kwargs))


def compatible(names: list[str], candidate: str) -> bool:
    """Can `candidate` join a prompt that already has constraints `names`?"""
    kind = CONSTRAINTS[candidate]
    if candidate in names:
        return False
    for other in names:
        other_kind = CONSTRAINTS[other]
        if kind.whole_answer or other_kind.whole_answer:
            return False
        if other in kind.conflicts or candidate in other_kind.conflicts:
            return False
    return True


def loose_variants(text: str) -> list[str]:
    """IFEval's loose reading: the text, without its first line, without its last line, without
    both, each also with '*' removed (markdown emphasis that a strict reader would count)."""
    lines = text.split("\n")
    bases = [text, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    variants = []
    for base in bases:
        for candidate in (base, base.replace("*", "")):
            if candidate and candidate not in variants:
                variants.append(candidate)
    return variants


def check_loose(name: str, text: str, kwargs: dict[str, Any]) -> bool:
    return any(check(name, variant, kwargs) for variant in loose_variants(text))
