"""What every response model shares: no unknown fields, and the non-negative counter."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

NonNegative = Field(ge=0)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
