"""How the checkers read a text: words, sentences, paragraphs, lines, bullets, counts.

Where IFEval's reference checker reads a text a certain way, so do these: `ifeval_words` is its
word tokenisation (`\\w+`, as nltk's RegexpTokenizer), `bullet_lines` its two bullet patterns,
`strip_code_fence` its removal of markdown code fences around JSON.
"""

from __future__ import annotations

import re

WORD = re.compile(r"\b[\w'-]+\b")


def words(text: str) -> list[str]:
    """Words as people count them: "don't" and "well-known" are one word each."""
    return WORD.findall(text)


def ifeval_words(text: str) -> list[str]:
    """Words as IFEval counts them (runs of letters, digits and underscores)."""
    return re.findall(r"\w+", text)


def paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def lines(text: str) -> list[str]:
    """The non-empty lines."""
    return [line for line in text.splitlines() if line.strip()]


def sentences(text: str) -> list[str]:
    # A sentence ends at . ! or ? followed by whitespace or the end; bullets and lines count too.
    parts = re.split(r"(?<=[.!?])\s+|\n+", text.strip())
    return [p for p in parts if re.search(r"\w", p)]


def bullet_lines(text: str) -> list[str]:
    """IFEval's bullets: lines starting with `*` (not `**`) or with `-`."""
    return re.findall(r"^\s*\*[^\*].*$", text, flags=re.MULTILINE) + re.findall(r"^\s*-.*$", text, flags=re.MULTILINE)


def numbered_items(text: str) -> list[int]:
    """The numbers of the lines that start a numbered list item (`1. `, `2) `), in order."""
    return [int(found) for found in re.findall(r"^\s*(\d+)[.)] \S", text, flags=re.MULTILINE)]


def compare(count: int, relation: str, n: int) -> bool:
    return count >= n if relation == "at least" else count <= n


def count_word(text: str, word: str) -> int:
    return len(re.findall(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE))


def strip_code_fence(text: str) -> str:
    stripped = text.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        stripped = stripped.removeprefix(fence)
    return stripped.removesuffix("```").strip()
