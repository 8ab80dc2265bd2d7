"""The base of every config section: unknown keys are errors, assignments are validated, and a
boolean given for a number is refused."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_validator


class Section(BaseModel):
    """Base of every config section: unknown keys are errors; assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data):
        # pydantic reads `true` as 1 for a number field; in a config that is always a mistake.
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                if field.annotation in (int, float) and isinstance(data.get(name), bool):
                    raise ValueError(f"{name}: a number is needed, not {str(data[name]).lower()}")
        return data
