"""Repairs that regroup or cut an answer: sentences, paragraphs, lists, sections, limits.

Each repair takes the failing text, the check's validated params and a context (`siblings`: the
prompt's other answers, `rng`) and returns the edited text, or None when it cannot mend it. The
order they run in is `repair.REPAIRS`.
"""

from __future__ import annotations

import re

from selftune.data.constraints import checkers
from selftune.data.constraints.text import bullet_lines, ifeval_words, paragraphs, sentences, words
from selftune.scoring.base import is_complete

_SENTENCE_END = re.compile(r"[.!?][\"')\]*]*(?=\s|$)")


# ---------------------------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------------------------


def cut_to_sentences(text: str) -> str | None:
    """`text` up to the end of its last full sentence, or None when it has none."""
    ends = list(_SENTENCE_END.finditer(text))
    return text[: ends[-1].end()].rstrip() if ends else None


def sentence_list(text: str) -> list[str]:
    """Sentences of a flat reading of `text` (markup lines kept as they are)."""
    return [s.strip() for s in sentences(text) if s.strip()]


def _groups(items: list[str], count: int) -> list[list[str]]:
    """`items` in `count` consecutive groups of near-equal size (each non-empty)."""
    size, extra = divmod(len(items), count)
    out, start = [], 0
    for k in range(count):
        end = start + size + (1 if k < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def _strip_markers(text: str) -> str:
    text = re.sub(r"\b(SECTION|Section|Part|CHAPTER|Step|Segment)\s+\d+\s*", "", text)
    text = re.sub(r"^\s*\*\*\*\s*$", "", text, flags=re.MULTILINE)
    return re.sub(r"^\s*([*-]|\d+[.)])\s+", "", text, flags=re.MULTILINE)


# ---------------------------------------------------------------------------------------------
# Repairs: (text, params, context) -> repaired text or None
# ---------------------------------------------------------------------------------------------


def complete(text: str, p, context) -> str | None:
    return text if is_complete(text) else cut_to_sentences(text)


def word_count(text: str, p, context) -> str | None:
    if p.relation != "at most":
        return None
    kept, total = [], 0
    for sentence in sentence_list(text):
        count = len(ifeval_words(sentence))
        if total + count > p.n:
            break
        kept.append(sentence)
        total += count
    if not kept:
        return None
    return " ".join(kept)


def sentence_count(text: str, p, context) -> str | None:
    found = sentence_list(text)
    if p.relation != "at most" or not found:
        return None
    return " ".join(found[: p.n])


def paragraph_count(text: str, p, context) -> str | None:
    found = paragraphs(text)
    if len(found) > p.n:
        return "\n\n".join(found[: p.n])
    items = sentence_list(_strip_markers(text))
    if len(items) < p.n:
        return None
    return "\n\n".join(" ".join(group) for group in _groups(items, p.n))


def bullet_count(text: str, p, context) -> str | None:
    if len(bullet_lines(text)) > p.n:
        kept, seen = [], 0
        for line in text.splitlines():
            if bullet_lines(line):
                seen += 1
                if seen > p.n:
                    continue
            kept.append(line)
        return "\n".join(kept)
    items = sentence_list(_strip_markers(text))
    if len(items) < p.n:
        return None
    return "\n".join("* " + " ".join(group) for group in _groups(items, p.n))


def numbered_sections(text: str, p, context) -> str | None:
    items = sentence_list(_strip_markers(text))
    if len(items) < p.n:
        return None
    return "\n\n".join(f"{p.splitter} {k}\n" + " ".join(g) for k, g in enumerate(_groups(items, p.n), start=1))


def _regrouped(text: str, count: int) -> list[str] | None:
    """The answer's paragraphs when it has `count`, else its sentences in `count` groups."""
    found = paragraphs(_strip_markers(text))
    if len(found) == count:
        return [" ".join(part.split()) for part in found]
    items = sentence_list(_strip_markers(text))
    if len(items) < count:
        return None
    return [" ".join(group) for group in _groups(items, count)]


def divided_paragraphs(text: str, p, context) -> str | None:
    parts = _regrouped(text, p.n)
    return "\n\n***\n\n".join(parts) if parts else None


def nth_paragraph_first_word(text: str, p, context) -> str | None:
    parts = _regrouped(text, p.num_paragraphs)
    if not parts:
        return None
    nth = parts[p.nth_paragraph - 1]
    if (checkers.ifeval_first_word(nth) or "") != p.first_word.lower():
        parts[p.nth_paragraph - 1] = f"{p.first_word.capitalize()} {lower_first(nth)}"
    return "\n\n".join(parts)


def numbered_list(text: str, p, context) -> str | None:
    items = sentence_list(_strip_markers(text))
    if len(items) < p.n:
        return None
    return "\n".join(f"{k}. " + " ".join(group) for k, group in enumerate(_groups(items, p.n), start=1))


def line_count(text: str, p, context) -> str | None:
    items = sentence_list(_strip_markers(text))
    if len(items) < p.n:
        return None
    return "\n".join(" ".join(group) for group in _groups(items, p.n))


def _kept_sentences(text: str, keep) -> str | None:
    kept = [s for s in sentence_list(text) if keep(s)]
    return " ".join(kept) if len(kept) >= 2 else None


def max_sentence_words(text: str, p, context) -> str | None:
    return _kept_sentences(text, lambda s: len(words(s)) <= p.n)


def word_length_limit(text: str, p, context) -> str | None:
    return _kept_sentences(text, lambda s: all(len(w) <= p.n for w in re.findall(r"[A-Za-z]+", s)))


def paragraph_max_sentences(text: str, p, context) -> str | None:
    items = sentence_list(_strip_markers(text))
    groups = [items[k : k + p.n] for k in range(0, len(items), p.n)]
    return "\n\n".join(" ".join(group) for group in groups) if len(groups) >= 2 else None


def table_rows(text: str, p, context) -> str | None:
    items = [s.replace("|", "/") for s in sentence_list(_strip_markers(text))]
    if len(items) < p.n:
        return None
    rows = "\n".join(f"| {k} | {item} |" for k, item in enumerate(items, start=1))
    return f"| # | Point |\n| --- | --- |\n{rows}"


def markdown_headers(text: str, p, context) -> str | None:
    parts = _regrouped(text, p.n)
    if not parts:
        return None
    return "\n\n".join(f"## {' '.join(words(part)[:3]).title()}\n{part}" for part in parts)


def headline(text: str, p, context) -> str | None:
    head = words(sentence_list(text)[0])[: min(p.n, 5)] if sentence_list(text) else []
    if not head:
        return None
    return f"{' '.join(head).capitalize()}\n\n{text.strip()}"


def two_answers(text: str, p, context) -> str | None:
    first = text.split("******")[0].strip()
    others = [s.strip() for s in context["siblings"] if "******" not in s and s.strip() and s.strip() != first]
    others = [o for o in (cut_to_sentences(s) for s in others) if o]
    if not first or not others:
        return None
    return f"{first}\n******\n{others[0]}"


def lower_first(text: str) -> str:
    first = words(text)[:1]
    if first and (first[0] == "I" or first[0].isupper()) or not text:
        return text
    return text[0].lower() + text[1:]
