"""How the checkers read a text: words, sentences, paragraphs, bullet lines, counts."""

from __future__ import annotations

import re

# ---------------------------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------------------------

WORD = re.compile(r"\b[\w'-]+\b")


def words(text: str) -> list[str]:
    return WORD.findall(text)


def paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def sentences(text: str) -> list[str]:
    # A sentence ends at . ! or ? followed by whitespace or the end; bullets and lines count too.
    parts = re.split(r"(?<=[.!?])\s+|\n+", text.strip())
    return [p for p in parts if re.search(r"\w", p)]


def bullet_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"^\s*[*-]\s+\S", line)]


def compare(count: int, relation: str, n: int) -> bool:
    return count >= n if relation == "at least" else count <= n


def count_word(text: str, word: str) -> int:
    return len(re.findall(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE))


def strip_code_fence(text: str) -> str:
    stripped = text.strip()
    match = re.fullmatch(r"```(?:json|JSON)?\s*\n?(.*?)\n?```", stripped, flags=re.DOTALL)
    return match.group(1) if match else stripped
