"""Deterministic aggregate ids.

Every aggregate id is a UUIDv5 of a natural key, so recording the same source
reference or idempotency key twice addresses the same stream. The event store's
primary key (originator id, version) then makes a duplicate creation fail
atomically, which is what makes retries safe without a lookup table.
"""

from __future__ import annotations

from functools import lru_cache
from uuid import UUID, uuid5

__all__ = [
    "adjustment_id",
    "earning_id",
    "partner_id_uuid",
    "program_id_uuid",
    "receipt_id",
]

# Fixed namespace for this ledger's ids; changing it orphans every stored stream.
LEDGER_NAMESPACE = UUID("5d1c7a52-3c1b-4f0e-9a4e-0b7c2f8e6a10")


def program_id_uuid(program_id: str) -> UUID:
    """Return the stream id of program ``program_id``."""
    return uuid5(LEDGER_NAMESPACE, f"program:{program_id}")


def partner_id_uuid(partner_id: str) -> UUID:
    """Return the stream id of partner ``partner_id`` (unique across programs)."""
    return uuid5(LEDGER_NAMESPACE, f"partner:{partner_id}")


# Recording a batch derives each new earning's id twice, to look it up and
# to create it. The cache turns the second derivation into a lookup.
@lru_cache(maxsize=8192)
def earning_id(program_id: str, source_ref: str) -> UUID:
    """Return the stream id of the earning for ``source_ref`` within a program."""
    return uuid5(LEDGER_NAMESPACE, f"earning:{program_id}:{source_ref}")


def adjustment_id(partner_id: str, idempotency_key: str) -> UUID:
    """Return the stream id of a partner's adjustment with ``idempotency_key``."""
    return uuid5(LEDGER_NAMESPACE, f"adjustment:{partner_id}:{idempotency_key}")


def receipt_id(partner_id: str, kind: str, idempotency_key: str) -> UUID:
    """Return the stream id of the receipt for a keyed command of ``kind``."""
    return uuid5(LEDGER_NAMESPACE, f"receipt:{partner_id}:{kind}:{idempotency_key}")
