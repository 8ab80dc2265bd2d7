"""Parameter schemas of the constraint types (pydantic): what a constraint's `kwargs` may hold."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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
