"""Errors raised by the ledger.

Every error derives from :class:`LedgerError`. Each subclass names the rule it
protects, and every message names the offending value and how to fix it. The
HTTP layer maps these classes to RFC 9457 problem documents; nothing below the
API package depends on HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "ConflictError",
    "InvalidInputError",
    "LedgerError",
    "NotFoundError",
    "ProjectionLagError",
    "RuleNotFoundError",
    "StoreUnavailableError",
]


class LedgerError(Exception):
    """Root of every error the ledger raises on purpose.

    Attributes:
        message: A sentence naming the value that failed and the fix.
        field: Dotted path of the input field at fault, when one is.
        value: The rejected value, rendered as text, when there is one.
    """

    def __init__(self, message: str, *, field: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.value = None if value is None else str(value)


class InvalidInputError(LedgerError):
    """Input breaks a domain rule: bad currency, negative base, unknown attribute, etc."""


class NotFoundError(LedgerError):
    """A program, partner or earning that the request names does not exist."""


class RuleNotFoundError(InvalidInputError):
    """No rule in the rule set in force on the effective date rewards the activity."""


class ConflictError(LedgerError):
    """A source reference or idempotency key was reused with different content.

    Attributes:
        differences: Field name to ``(stored, requested)`` for each field that differs.
    """

    def __init__(
        self,
        message: str,
        *,
        differences: Mapping[str, tuple[Any, Any]] | None = None,
        field: str | None = None,
        value: Any = None,
    ) -> None:
        super().__init__(message, field=field, value=value)
        self.differences = dict(differences or {})


class ProjectionLagError(LedgerError):
    """A read asked for ``min_position`` that the projections did not reach in time."""


class StoreUnavailableError(LedgerError):
    """The database could not be reached or refused the connection."""
