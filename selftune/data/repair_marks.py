"""Repairs that add or rewrite marks on an answer: phrases, titles, case, punctuation, wrappers.

Same signature as `repair_layout`'s: (text, params, context) -> edited text or None.
"""

from __future__ import annotations

import json
import re

from selftune.data.constraints.text import count_word, words
from selftune.data.repair_layout import lower_first, sentence_list


def repeat_prompt(text: str, p, context) -> str | None:
    return f"{p.prompt_to_repeat.strip()}\n\n{text.strip()}"


def blockquote(text: str, p, context) -> str | None:
    items = sentence_list(text)
    if len(items) < 2:
        return None
    return f"> {items[0]}\n\n" + " ".join(items[1:])


def semicolons(text: str, p, context) -> str | None:
    items = sentence_list(text)
    if len(items) < p.n + 1:
        return None
    joined = items[0]
    for item in items[1 : p.n + 1]:
        joined = joined.rstrip(".!?") + "; " + lower_first(item)
    return " ".join([joined, *items[p.n + 1 :]])


_QUESTIONS = ["What do you think?", "Which part would you like to hear more about?", "Have you tried it yourself?"]


def end_with_question(text: str, p, context) -> str | None:
    return f"{text.rstrip()} {context['rng'].choice(_QUESTIONS)}"


def all_sentences_end_with_period(text: str, p, context) -> str | None:
    fixed = re.sub(r"[!?]+(?=\s|$)", ".", text)
    return "\n".join(
        line if not line.strip() or line.rstrip().endswith(".") else line.rstrip() + "." for line in fixed.split("\n")
    )


def title(text: str, p, context) -> str | None:
    head = words(text.split("\n")[0])[:5]
    if not head:
        return None
    title = " ".join(head)
    return f"<<{title[0].upper() + title[1:]}>>\n\n{text}"


def first_word(text: str, p, context) -> str | None:
    if p.paragraph != 1:
        return None
    return f"{p.word.capitalize()} {lower_first(text.lstrip())}"


def start_phrase(text: str, p, context) -> str | None:
    return f"{p.phrase} {text.lstrip()}"


def end_phrase(text: str, p, context) -> str | None:
    return f"{text.rstrip()} {p.phrase}"


def postscript(text: str, p, context) -> str | None:
    return f"{text.rstrip()}\n\n{p.phrase} More on this soon."


_PLACEHOLDERS = ["[name]", "[place]", "[date]", "[time]", "[address]"]


def placeholders(text: str, p, context) -> str | None:
    return f"{text.rstrip()}\n\nDetails: {' '.join(_PLACEHOLDERS[: p.n])}."


def _emphasized(text: str, count: int, mark: str) -> str | None:
    """`text` with its first `count` distinct long words wrapped in `mark` (* or **)."""
    chosen: list[str] = []
    for word in words(text):
        if len(word) >= 5 and word.isalpha() and word not in chosen:
            chosen.append(word)
        if len(chosen) == count:
            break
    if len(chosen) < count:
        return None
    for word in chosen:
        text = re.sub(rf"(?<![*\w]){re.escape(word)}(?![*\w])", f"{mark}{word}{mark}", text, count=1)
    return text


def highlighted(text: str, p, context) -> str | None:
    return _emphasized(text, p.n, "*")


def bold_words(text: str, p, context) -> str | None:
    return _emphasized(text, p.n, "**")


def hashtags(text: str, p, context) -> str | None:
    chosen: list[str] = []
    for word in words(text):
        if len(word) >= 4 and word.isalpha() and word.lower() not in chosen:
            chosen.append(word.lower())
    if len(chosen) < p.n:
        return None
    return f"{text.rstrip()}\n\n" + " ".join(f"#{word}" for word in chosen[: p.n])


def sign_off(text: str, p, context) -> str | None:
    return f"{text.rstrip()}\n\n{p.phrase}\nSam"


def bracketed_word(text: str, p, context) -> str | None:
    if not re.search(rf"\b{re.escape(p.word)}\b", text, flags=re.IGNORECASE):
        return None
    return re.sub(rf"\b({re.escape(p.word)})\b", r"[\1]", text, count=1, flags=re.IGNORECASE)


def keyword_in_title(text: str, p, context) -> str | None:
    head = words(text.split("\n")[0])[:3]
    return f"<<{p.word.capitalize()}: {' '.join(head)}>>\n\n{text}" if head else None


def no_exclamation(text: str, p, context) -> str | None:
    return text.replace("!", ".")


def code_block(text: str, p, context) -> str | None:
    return f"```\n{text.strip()}\n```"


def tag_wrapped(text: str, p, context) -> str | None:
    return f"<{p.tag}>\n{text.strip()}\n</{p.tag}>"


def capital_words(text: str, p, context) -> str | None:
    if p.relation != "at least":
        return None
    chosen: list[str] = []
    for word in words(text):
        if len(word) >= 4 and word.isalpha() and not word.isupper() and word.lower() not in chosen:
            chosen.append(word.lower())
        if len(chosen) >= p.n:
            break
    if len(chosen) < p.n:
        return None
    for word in chosen:
        text = re.sub(rf"\b{re.escape(word)}\b", word.upper(), text, count=1, flags=re.IGNORECASE)
    return text


def fixed_options(text: str, p, context) -> str | None:
    for option in p.options:
        text = text.replace(option, "")
    rest = text.strip()
    option = context["rng"].choice(p.options)
    return f"{option} {rest}" if rest else option


# A common-word synonym that keeps the sentence readable. A forbidden word without one (a task's
# own word: its topic, the kind of text it asks for) is not repaired: cutting a content word out
# leaves a broken sentence, so those examples come from sampling only.
_SYNONYMS = {
    "the": "this",
    "is": "seems",
    "and": "plus",
    "very": "really",
    "good": "fine",
    "great": "fine",
    "you": "one",
    "this": "it",
    "that": "it",
}


def forbidden_words(text: str, p, context) -> str | None:
    banned = {k.lower() for k in p.keywords}
    if any(k.lower() not in _SYNONYMS and count_word(text, k) for k in p.keywords):
        return None
    for keyword in p.keywords:
        substitute = _SYNONYMS.get(keyword.lower(), "")
        if substitute in banned:
            substitute = ""

        def replace(match, substitute=substitute):
            word = match.group()
            if not substitute:
                return ""
            return substitute.capitalize() if word[0].isupper() else substitute

        text = re.sub(rf"\b{re.escape(keyword)}\b", replace, text, flags=re.IGNORECASE)
    return re.sub(r"[ \t]{2,}", " ", re.sub(r" +([.,!?;:])", r"\1", text)).strip()


def no_commas(text: str, p, context) -> str | None:
    return re.sub(r",\s*", " ", text).replace(" \n", "\n").strip()


def lowercase(text: str, p, context) -> str | None:
    return text.lower()


def uppercase(text: str, p, context) -> str | None:
    return text.upper()


def quoted(text: str, p, context) -> str | None:
    return '"' + text.strip().strip('"').replace('"', "'") + '"'


def json_format(text: str, p, context) -> str | None:
    return json.dumps({"answer": text.strip()}, ensure_ascii=False)
