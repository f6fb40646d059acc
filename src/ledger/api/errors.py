"""Errors that exist only at the HTTP edge.

They extend the ledger's own errors, so the problem mapping in
:mod:`ledger.api.problems` treats them like any other ``LedgerError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ledger.api.schemas import ProjectionHealth
from ledger.errors import InvalidInputError, ProjectionLagError

__all__ = ["BadRequestError", "ProjectionsBehindError", "UnsupportedMediaTypeError"]


class BadRequestError(InvalidInputError):
    """A header or other request envelope value is missing or malformed (HTTP 400)."""


class UnsupportedMediaTypeError(InvalidInputError):
    """A request body is sent with a Content-Type other than JSON (HTTP 415)."""


class ProjectionsBehindError(ProjectionLagError):
    """The projections a read needs did not reach ``min_position`` in time.

    Attributes:
        projections: Where each projection stood when the wait ended.
    """

    def __init__(
        self,
        message: str,
        *,
        projections: Sequence[ProjectionHealth],
        field: str | None = None,
        value: Any = None,
    ) -> None:
        super().__init__(message, field=field, value=value)
        self.projections = list(projections)
