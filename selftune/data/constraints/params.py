"""Parameter schemas of the constraint types (pydantic): what a constraint's `kwargs` may hold."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Relation = Literal["at least", "at most"]


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoParams(Params):
    pass


class CountParams(Params):
    relation: Relation = Field(description="Whether n is a floor or a ceiling.")
    n: int = Field(ge=0, description="The bound.")


class ExactCount(Params):
    n: int = Field(ge=1, description="The exact count required.")


class PhraseParams(Params):
    phrase: str = Field(min_length=1, description="Exact text required.")


class KeywordsParams(Params):
    keywords: list[str] = Field(min_length=1, description="Words to include or avoid.")


class KeywordFrequencyParams(CountParams):
    keyword: str = Field(min_length=1, description="The counted word.")


class LetterFrequencyParams(CountParams):
    letter: str = Field(min_length=1, max_length=1, description="The counted letter (case-insensitive).")


class FirstWordParams(Params):
    paragraph: int = Field(ge=1, description="1-based paragraph number.")
    word: str = Field(min_length=1, description="Required first word of that paragraph.")


class OptionsParams(Params):
    options: list[str] = Field(min_length=2, description="Allowed answers; exactly one must appear.")


class SectionsParams(ExactCount):
    n: int = Field(ge=1, description="The fewest sections required.")
    splitter: str = Field(
        "SECTION", pattern=r"^[A-Za-z]+$", description="The word that opens each section, followed by its number."
    )


class NthParagraphParams(Params):
    num_paragraphs: int = Field(ge=1, description="Exact number of paragraphs (separated by blank lines).")
    nth_paragraph: int = Field(ge=1, description="1-based paragraph whose first word is prescribed.")
    first_word: str = Field(min_length=1, pattern=r"^\w+$", description="Its required first word (one word).")


class RepeatParams(Params):
    prompt_to_repeat: str = Field(min_length=1, description="The request to repeat word for word first.")


# The languages IFEval's language instruction asks for (ISO 639-1 code -> name), all of which
# langdetect, the library its checker uses, recognises.
LANGUAGES = {
    "en": "English", "es": "Spanish", "pt": "Portuguese", "ar": "Arabic", "hi": "Hindi", "fr": "French",
    "ru": "Russian", "de": "German", "ja": "Japanese", "it": "Italian", "bn": "Bengali", "uk": "Ukrainian",
    "th": "Thai", "ur": "Urdu", "ta": "Tamil", "te": "Telugu", "bg": "Bulgarian", "ko": "Korean", "pl": "Polish",
    "he": "Hebrew", "fa": "Persian", "vi": "Vietnamese", "ne": "Nepali", "sw": "Swahili", "kn": "Kannada",
    "mr": "Marathi", "gu": "Gujarati", "pa": "Punjabi", "ml": "Malayalam", "fi": "Finnish",
}  # fmt: skip


class LanguageParams(Params):
    language: str = Field(description="ISO 639-1 code of the language the whole answer is written in.")

    @field_validator("language")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in LANGUAGES:
            raise ValueError(f"unknown language code {value!r}; known: {', '.join(sorted(LANGUAGES))}")
        return value


class WordParams(Params):
    word: str = Field(min_length=1, pattern=r"^[\w'-]+$", description="One word.")


class TagParams(Params):
    tag: str = Field(pattern=r"^[a-z][a-z0-9_-]*$", description="The tag name the answer is wrapped in.")


class LimitParams(Params):
    n: int = Field(ge=1, description="The limit (inclusive).")
