"""One checker per constraint type: (text, validated params) -> passed.

The types that IFEval also has check what IFEval's reference checker checks (Zhou et al. 2023,
Google's `instructions.py` as the `if-verifiable` package ships it), written here again so that
training needs no benchmark code: the same word tokenisation (`\\w+`), the same regular
expressions for bullets, highlights, titles, sections, dividers and postscripts, the same
case-insensitive substring counts for keywords. `tests/test_checkers_reference.py` runs both on
generated texts and reports the agreement per type; the two known differences are sentence and
capital-word counts, which the reference takes from nltk's punkt data, not installable here.
"""

from __future__ import annotations

import json
import re

import langdetect

from selftune.data.constraints.params import (
    CountParams,
    ExactCount,
    FirstWordParams,
    KeywordFrequencyParams,
    KeywordsParams,
    LanguageParams,
    LetterFrequencyParams,
    LimitParams,
    NoParams,
    NthParagraphParams,
    OptionsParams,
    PhraseParams,
    RepeatParams,
    SectionsParams,
    TagParams,
    WordParams,
)
from selftune.data.constraints.text import (
    bullet_lines,
    compare,
    count_word,
    ifeval_words,
    lines,
    numbered_items,
    paragraphs,
    sentences,
    strip_code_fence,
    words,
)

# langdetect draws at random unless seeded; the reference checker seeds it the same way.
langdetect.DetectorFactory.seed = 0


def _language(text: str) -> str | None:
    """langdetect's language code for `text`, None when it cannot tell (the reference then passes)."""
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return None


# ---------------------------------------------------------------------------------------------
# IFEval's types
# ---------------------------------------------------------------------------------------------


def lowercase(text: str, p: NoParams) -> bool:
    # IFEval: all cased characters lowercase, and the answer in English.
    return text.islower() and _language(text) in ("en", None)


def uppercase(text: str, p: NoParams) -> bool:
    return text.isupper() and _language(text) in ("en", None)


def capital_words(text: str, p: CountParams) -> bool:
    # IFEval counts nltk word tokens in capitals; here words of two or more letters.
    capitals = [w for w in words(text) if len(w) > 1 and w.isupper()]
    return compare(len(capitals), p.relation, p.n)


def no_commas(text: str, p: NoParams) -> bool:
    return "," not in text


def word_count(text: str, p: CountParams) -> bool:
    return compare(len(ifeval_words(text)), p.relation, p.n)


def sentence_count(text: str, p: CountParams) -> bool:
    # IFEval counts sentences with nltk's punkt tokenizer; here with a rule of our own (`sentences`).
    return compare(len(sentences(text)), p.relation, p.n)


def divided_paragraphs(text: str, p: ExactCount) -> bool:
    # IFEval number_paragraphs: parts split by the markdown divider ***; an empty part only at an end.
    parts = re.split(r"\s?\*\*\*\s?", text)
    count = len(parts)
    for index, part in enumerate(parts):
        if not part.strip():
            if index in (0, len(parts) - 1):
                count -= 1
            else:
                return False
    return count == p.n


def nth_paragraph_first_word(text: str, p: NthParagraphParams) -> bool:
    # IFEval: paragraphs split by "\n\n", exactly num_paragraphs non-empty ones, and the nth one's
    # first word (leading quotes dropped, cut at punctuation, lowercased) is the given word.
    parts = re.split(r"\n\n", text)
    count = sum(1 for part in parts if part.strip())
    if p.nth_paragraph > count:
        return False
    first = ifeval_first_word(parts[p.nth_paragraph - 1])
    return count == p.num_paragraphs and first is not None and first == p.first_word.lower()


def ifeval_first_word(paragraph: str) -> str | None:
    """A paragraph's first word as IFEval reads it (leading quotes dropped, cut at the first
    punctuation mark, lowercased); None for an empty paragraph."""
    if not paragraph.strip():
        return None
    word = paragraph.strip().split()[0].strip().lstrip("'").lstrip('"')
    first = ""
    for letter in word:
        if letter in {".", ",", "?", "!", "'", '"'}:
            break
        first += letter.lower()
    return first


def bullet_count(text: str, p: ExactCount) -> bool:
    return len(bullet_lines(text)) == p.n


def title(text: str, p: NoParams) -> bool:
    return any(found.lstrip("<").rstrip(">").strip() for found in re.findall(r"<<[^\n]+>>", text))


def json_format(text: str, p: NoParams) -> bool:
    try:
        json.loads(strip_code_fence(text))
    except ValueError:
        return False
    return True


def numbered_sections(text: str, p: SectionsParams) -> bool:
    # IFEval multiple_sections: at least n sections opened by the splitter word and a number.
    return len(re.split(r"\s?" + re.escape(p.splitter) + r"\s?\d+\s?", text)) - 1 >= p.n


def highlighted_sections(text: str, p: ExactCount) -> bool:
    single = [h for h in re.findall(r"\*[^\n\*]*\*", text) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", text) if h.removeprefix("**").removesuffix("**").strip()]
    return len(single) + len(double) >= p.n


def fixed_options(text: str, p: OptionsParams) -> bool:
    # IFEval constrained_response: the answer contains one of the options.
    return any(option in text.strip() for option in p.options)


def two_answers(text: str, p: NoParams) -> bool:
    parts = text.split("******")
    answers = []
    for index, part in enumerate(parts):
        if part.strip():
            answers.append(part)
        elif index not in (0, len(parts) - 1):
            return False
    return len(answers) == 2 and answers[0].strip() != answers[1].strip()


def repeat_prompt(text: str, p: RepeatParams) -> bool:
    return text.strip().lower().startswith(p.prompt_to_repeat.strip().lower())


def placeholders(text: str, p: ExactCount) -> bool:
    return len(re.findall(r"\[.*?\]", text)) >= p.n


def postscript(text: str, p: PhraseParams) -> bool:
    marker = p.phrase
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return bool(re.findall(pattern, text.lower(), flags=re.MULTILINE))


def include_keywords(text: str, p: KeywordsParams) -> bool:
    return all(re.search(re.escape(k), text, flags=re.IGNORECASE) for k in p.keywords)


def forbidden_words(text: str, p: KeywordsParams) -> bool:
    return all(count_word(text, k) == 0 for k in p.keywords)


def keyword_frequency(text: str, p: KeywordFrequencyParams) -> bool:
    return compare(len(re.findall(re.escape(p.keyword), text, flags=re.IGNORECASE)), p.relation, p.n)


def letter_frequency(text: str, p: LetterFrequencyParams) -> bool:
    return compare(text.lower().count(p.letter.lower()), p.relation, p.n)


def response_language(text: str, p: LanguageParams) -> bool:
    return _language(text) in (p.language, None)


def end_phrase(text: str, p: PhraseParams) -> bool:
    return text.strip().strip('"').lower().endswith(p.phrase.strip().lower())


def quoted(text: str, p: NoParams) -> bool:
    stripped = text.strip()
    return len(stripped) > 1 and stripped[0] == '"' and stripped[-1] == '"'


# ---------------------------------------------------------------------------------------------
# Training-only types (none is an IFBench test instruction: tests/test_leakage.py)
# ---------------------------------------------------------------------------------------------


def start_phrase(text: str, p: PhraseParams) -> bool:
    return text.strip().startswith(p.phrase)


def first_word(text: str, p: FirstWordParams) -> bool:
    found = paragraphs(text)
    if len(found) < p.paragraph:
        return False
    first = words(found[p.paragraph - 1])
    return bool(first) and first[0].lower() == p.word.lower()


def paragraph_count(text: str, p: ExactCount) -> bool:
    return len(paragraphs(text)) == p.n


def end_with_question(text: str, p: NoParams) -> bool:
    return text.rstrip().rstrip("*_\"')").endswith("?")


def bold_words(text: str, p: ExactCount) -> bool:
    return len([b for b in re.findall(r"\*\*([^\n*]+)\*\*", text) if b.strip()]) >= p.n


def markdown_headers(text: str, p: ExactCount) -> bool:
    return len(re.findall(r"^#{1,3} \S", text, flags=re.MULTILINE)) >= p.n


def numbered_list(text: str, p: ExactCount) -> bool:
    return numbered_items(text) == list(range(1, p.n + 1))


def max_sentence_words(text: str, p: LimitParams) -> bool:
    found = sentences(text)
    return bool(found) and all(len(words(s)) <= p.n for s in found)


def hashtags(text: str, p: ExactCount) -> bool:
    last = [line for line in lines(text)][-1:] or [""]
    return len(re.findall(r"(?<!\w)#[A-Za-z]\w*", last[0])) >= p.n


def no_exclamation(text: str, p: NoParams) -> bool:
    return "!" not in text


def code_block(text: str, p: NoParams) -> bool:
    return re.search(r"```[\w-]*\n.*?\S.*?\n```", text, flags=re.DOTALL) is not None


def table_rows(text: str, p: ExactCount) -> bool:
    rows = [line for line in lines(text) if re.match(r"^\s*\|.*\|\s*$", line)]
    separators = [row for row in rows if re.match(r"^\s*\|[\s:|-]+\|\s*$", row) and "-" in row]
    return len(separators) >= 1 and len(rows) - len(separators) - 1 >= p.n  # rows past the header


def blockquote(text: str, p: NoParams) -> bool:
    return re.search(r"^> \S", text, flags=re.MULTILINE) is not None


def line_count(text: str, p: ExactCount) -> bool:
    return len(lines(text)) == p.n


def word_length_limit(text: str, p: LimitParams) -> bool:
    return bool(words(text)) and all(len(w) <= p.n for w in re.findall(r"[A-Za-z]+", text))


def sign_off(text: str, p: PhraseParams) -> bool:
    found = lines(text)
    return len(found) >= 2 and any(line.strip().startswith(p.phrase) for line in found[-2:])


def semicolons(text: str, p: ExactCount) -> bool:
    return text.count(";") >= p.n


def tag_wrapped(text: str, p: TagParams) -> bool:
    stripped = text.strip()
    inner = stripped.removeprefix(f"<{p.tag}>").removesuffix(f"</{p.tag}>")
    return stripped.startswith(f"<{p.tag}>") and stripped.endswith(f"</{p.tag}>") and bool(inner.strip())


def question_count(text: str, p: ExactCount) -> bool:
    return sum(1 for s in sentences(text) if s.rstrip().rstrip("*_\"')").endswith("?")) >= p.n


def paragraph_max_sentences(text: str, p: LimitParams) -> bool:
    found = paragraphs(text)
    return len(found) >= 2 and all(len(sentences(part)) <= p.n for part in found)


def headline(text: str, p: LimitParams) -> bool:
    parts = paragraphs(text)
    if len(parts) < 2 or "\n" in parts[0].strip():
        return False
    return 1 <= len(words(parts[0])) <= p.n


def bracketed_word(text: str, p: WordParams) -> bool:
    return re.search(r"\[" + re.escape(p.word) + r"\]", text, flags=re.IGNORECASE) is not None


def keyword_in_title(text: str, p: WordParams) -> bool:
    return any(count_word(found, p.word) for found in re.findall(r"<<([^\n]+)>>", text))


def colon_lines(text: str, p: ExactCount) -> bool:
    return len([line for line in lines(text) if re.match(r"^[A-Z][\w ]{0,30}: \S", line.strip())]) >= p.n


def ends_with_word(text: str, p: WordParams) -> bool:
    found = re.findall(r"[\w'-]+", text)
    return bool(found) and found[-1].lower() == p.word.lower()


def all_sentences_end_with_period(text: str, p: NoParams) -> bool:
    found = sentences(text)
    return bool(found) and all(s.rstrip().endswith(".") for s in found)
