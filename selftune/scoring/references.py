"""Built-in reference-answer verifiers, named `builtin:NAME` in `scorer.function`.

Each is a TRL-style reward function (`selftune.scoring.function`) reading a reference from the
prompt record's own field, and each checks that field in every record before any model loads
(`check_columns`: a missing or unusable reference is `file: prompt ID: field: problem`):

    final_number      answer (a number)    the answer's final number: after `####`, else in the last
                                           `\\boxed{...}`, else the last number in the text; equal
                                           within a relative tolerance of 1e-6 (commas and a leading
                                           $ ignored, a fraction a/b read as its value)
    exact_match       answer (text)        the whole answer, stripped of surrounding whitespace
    normalized_match  answer (text)        the same after case folding and dropping punctuation,
                                           articles (a, an, the) and extra whitespace
    regex_match       pattern (a regex)    the stripped answer matches the whole pattern
    json_schema       schema (JSON Schema) the answer (a ```json fence allowed) is JSON valid against
                                           it (the `jsonschema` library, the schema's own draft)

Scores are 1.0 or 0.0. Repairs and early rejection stay constraint-only: a reference task is
sampled whole and kept or dropped by its verdict.

Example prompt record:
    {"id": "q1", "messages": [{"role": "user", "content": "... ?"}], "answer": "42"}
"""

from __future__ import annotations

import json
import math
import re
import string
from fractions import Fraction

# Hand-written rather than math-verify: a final number needs a few patterns, not a LaTeX parser
# and its grammar runtime in every install.
_NUMBER = r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\$?\.\d+"
_HASHES = re.compile(r"####\s*(" + _NUMBER + ")")
_BOXED = re.compile(r"\\boxed\{\s*(" + _NUMBER + r")\s*\}")
_ANY = re.compile(_NUMBER)
TOLERANCE = 1e-6


def parse_number(text) -> float | None:
    """A number written as text (`1,234`, `$5`, `-0.5`, `3/4`) or given as a JSON number."""
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text) if math.isfinite(text) else None
    if not isinstance(text, str):
        return None
    cleaned = text.strip().replace(",", "").replace("$", "")
    try:
        return float(Fraction(cleaned)) if "/" in cleaned else float(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def final_number_of(text: str) -> float | None:
    """The number an answer ends on (see the module docstring for the order of the patterns)."""
    for pattern in (_HASHES, _BOXED, _ANY):
        found = pattern.findall(text)
        if found:
            return parse_number(found[-1])
    return None


def _texts(completions) -> list[str]:
    return [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]


def _column(name: str, kwargs: dict, n: int) -> list:
    return list(kwargs.get(name) or [None] * n)


def final_number(prompts, completions, **columns) -> list[float]:
    answers = _column("answer", columns, len(completions))
    out = []
    for text, answer in zip(_texts(completions), answers):
        want, got = parse_number(answer), final_number_of(text)
        ok = want is not None and got is not None and abs(got - want) <= TOLERANCE * max(1.0, abs(want))
        out.append(1.0 if ok else 0.0)
    return out


def _needs_number(fields: dict) -> str | None:
    if fields.get("answer") is None:
        return "answer: missing (builtin:final_number compares with a reference number)"
    if parse_number(fields["answer"]) is None:
        return f"answer: {fields['answer']!r} is not a number"
    return None


final_number.check_columns = _needs_number


def exact_match(prompts, completions, **columns) -> list[float]:
    answers = _column("answer", columns, len(completions))
    return [float(a is not None and t.strip() == str(a).strip()) for t, a in zip(_texts(completions), answers)]


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """Case-folded, without punctuation, articles or extra whitespace."""
    return " ".join(_ARTICLES.sub(" ", text.casefold().translate(_PUNCTUATION)).split())


def normalized_match(prompts, completions, **columns) -> list[float]:
    answers = _column("answer", columns, len(completions))
    return [float(a is not None and normalize(t) == normalize(str(a))) for t, a in zip(_texts(completions), answers)]


def _needs_text(fields: dict) -> str | None:
    answer = fields.get("answer")
    if answer is None:
        return "answer: missing (a reference answer to compare with)"
    if not isinstance(answer, (str, int, float)) or isinstance(answer, bool) or not str(answer).strip():
        return f"answer: {answer!r} is not a non-empty text or number"
    return None


exact_match.check_columns = normalized_match.check_columns = _needs_text


def regex_match(prompts, completions, **columns) -> list[float]:
    patterns = _column("pattern", columns, len(completions))
    return [
        float(p is not None and re.fullmatch(p, t.strip(), re.DOTALL) is not None)
        for t, p in zip(_texts(completions), patterns)
    ]


def _needs_pattern(fields: dict) -> str | None:
    pattern = fields.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        return "pattern: missing (builtin:regex_match needs a regular expression)"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"pattern: {pattern!r} is not a valid regular expression ({exc})"
    return None


regex_match.check_columns = _needs_pattern

_FENCE = re.compile(r"^```(?:json)?\s*\n(.*?)\n?```$", re.DOTALL)


def _validator(schema):
    from jsonschema.validators import validator_for  # imported where used: JSON tasks only

    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def json_schema(prompts, completions, **columns) -> list[dict]:
    from jsonschema.exceptions import SchemaError

    schemas = _column("schema", columns, len(completions))
    out = []
    for text, schema in zip(_texts(completions), schemas):
        stripped = text.strip()
        fenced = _FENCE.match(stripped)
        try:
            value = json.loads(fenced.group(1) if fenced else stripped)
        except json.JSONDecodeError as exc:
            out.append({"score": 0.0, "json": f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"})
            continue
        try:
            error = next(iter(_validator(schema).iter_errors(value)), None)
        except SchemaError:
            error = "the schema is not valid"
        if error is None:
            out.append({"score": 1.0})
        else:
            where = "/".join(map(str, getattr(error, "absolute_path", []))) or "(root)"
            out.append({"score": 0.0, "json": f"{where}: {getattr(error, 'message', error)}"})
    return out


def _needs_schema(fields: dict) -> str | None:
    from jsonschema.exceptions import SchemaError

    schema = fields.get("schema")
    if not isinstance(schema, (dict, bool)):
        return "schema: missing (builtin:json_schema needs a JSON Schema object)"
    try:
        _validator(schema)
    except SchemaError as exc:
        where = "/".join(map(str, exc.absolute_path)) or "(root)"
        return f"schema: not a valid JSON Schema ({where}: {exc.message})"
    return None


json_schema.check_columns = _needs_schema

BUILTIN_VERIFIERS = {
    "final_number": final_number,
    "exact_match": exact_match,
    "normalized_match": normalized_match,
    "regex_match": regex_match,
    "json_schema": json_schema,
}
