"""The projection interface, and the text formats of values in read-model rows."""

from __future__ import annotations

import abc
import zlib
from collections.abc import Collection
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal

import asyncpg

from ledger.domain.money import currency_exponent, format_minor
from ledger.projector.events import EventBatch

__all__ = [
    "Projection",
    "advisory_lock_key",
    "decimal_text",
    "major_units_text",
    "money_text",
    "quote_identifier",
]

# Decimal context in which scaleb() never rounds.
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


class Projection(abc.ABC):
    """Writes the read-model rows of one batch of events.

    A projection's tables live in one schema: the live schema carries the
    projection's name, and a rebuild writes the same tables into another
    schema. So :meth:`apply` takes the schema name instead of assuming it.

    Attributes:
        name: Projection name, also the name of its live schema.
        topics: Event topics the projection reads. Events of other topics are
            skipped, but the checkpoint still moves past them.
    """

    name: str
    topics: Collection[str]

    @abc.abstractmethod
    async def apply(self, conn: asyncpg.Connection, schema: str, batch: EventBatch) -> None:
        """Write the rows for ``batch`` into the tables of ``schema``.

        Runs inside the batch transaction, so it either writes every row of
        the batch or, by raising, none. Each table gets at most a few
        set-based statements per batch, never one statement per event.
        """


def advisory_lock_key(namespace: int, name: str) -> tuple[int, int]:
    """Return the two int4 keys of the advisory lock ``name`` within ``namespace``.

    The second key is the CRC-32 of the name, so it is the same in every
    process and every PostgreSQL version.
    """
    return namespace, zlib.crc32(name.encode()) & 0x7FFF_FFFF


def quote_identifier(name: str) -> str:
    """Return ``name`` quoted as an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def money_text(amount_minor: int | None, currency: str) -> str | None:
    """Return minor units as a decimal string with the currency's digits, or None."""
    if amount_minor is None:
        return None
    return format_minor(amount_minor, currency)


def decimal_text(value: Decimal | None) -> str | None:
    """Return ``value`` in positional notation (never exponent notation), or None."""
    if value is None:
        return None
    return format(value, "f")


def major_units_text(value_minor: Decimal | None, currency: str) -> str | None:
    """Return a fractional count of minor units as exact major units, or None.

    No digit is rounded away: 1359.495 cents is "13.59495", and 1359.00
    cents is "13.5900".
    """
    if value_minor is None:
        return None
    if not value_minor.is_finite():
        return str(value_minor)
    # scaleb() rounds only to the context precision, which this context sets
    # to the maximum, so the shift is exact.
    shifted = value_minor.scaleb(-currency_exponent(currency), _EXACT)
    return format(shifted, "f")
