"""The base of every config section: unknown fields are errors, assignments are validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Section"]


class Section(BaseModel):
    """A config section (and the whole :class:`~cyclealign.config.Config`): a pydantic model that
    rejects unknown fields (``extra="forbid"``: a misspelt key is an error naming it) and validates
    assignments too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
