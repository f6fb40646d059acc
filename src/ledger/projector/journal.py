"""The ``journal`` projection: a double-entry journal of every money event.

Each earning, reversal and adjustment is one entry with two legs, in minor
units, debits positive and credits negative. Leg 1 posts to
``reward_expense:<program>`` and leg 2 to ``partner_payable:<partner>``:

* earning: leg 1 ``+amount``, leg 2 ``-amount``;
* reversal: leg 1 ``-amount``, leg 2 ``+amount``;
* adjustment: like an earning, with the adjustment's signed amount.

So the sum of a partner's ``partner_payable`` postings is minus what the
ledger owes the partner. A statement-level trigger rejects an insert whose
legs do not sum to zero per entry and currency, which is why all legs of a
batch go in one statement.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from ledger.domain.adjustment import Adjustment
from ledger.domain.earning import Earning
from ledger.projector.base import Projection
from ledger.projector.events import (
    ADJUSTMENT_RECORDED,
    EARNING_EARNED,
    EARNING_REVERSED,
    EventBatch,
)

__all__ = ["JournalProjection"]


_ENTRY_COLUMNS = (
    "position",
    "event_id",
    "event_version",
    "program_id",
    "partner_id",
    "kind",
    "source_ref",
    "effective_date",
    "recorded_at",
    "memo",
)
_POSTING_COLUMNS = ("position", "leg", "account", "currency", "amount_minor")


class JournalProjection(Projection):
    """Journal entries and their balanced postings."""

    name = "journal"
    topics = frozenset({EARNING_EARNED, EARNING_REVERSED, ADJUSTMENT_RECORDED})

    async def apply(self, conn: asyncpg.Connection, schema: str, batch: EventBatch) -> None:
        """Write one entry and two postings per money event of ``batch``."""
        entries: list[tuple[Any, ...]] = []
        postings: list[tuple[Any, ...]] = []

        # Turn each money event into an entry and the expense side of its legs.
        for position, event in batch.events:
            if isinstance(event, Earning.Earned):
                program_id, partner_id = event.program_id, event.partner_id
                kind, source_ref, currency = "earning", event.source_ref, event.currency
                expense = event.amount_minor
                memo = (
                    f"{event.activity_type} priced by rule {event.rule_id} "
                    f"of rule set {event.rule_set_version}"
                )
            elif isinstance(event, Earning.Reversed):
                earned = batch.creation_of(event)
                program_id, partner_id = earned.program_id, earned.partner_id
                kind, source_ref, currency = "reversal", earned.source_ref, earned.currency
                expense = -event.amount_minor
                memo = event.reason
            elif isinstance(event, Adjustment.Recorded):
                program_id, partner_id = event.program_id, event.partner_id
                kind, source_ref, currency = "adjustment", event.source_ref, event.currency
                expense = event.amount_minor
                memo = event.reason
            else:
                continue
            entries.append(
                (
                    position,
                    event.originator_id,
                    event.originator_version,
                    program_id,
                    partner_id,
                    kind,
                    source_ref,
                    event.effective_date,
                    event.timestamp,
                    memo,
                )
            )
            postings.append((position, 1, f"reward_expense:{program_id}", currency, expense))
            postings.append((position, 2, f"partner_payable:{partner_id}", currency, -expense))

        # Entries first, because every posting references its entry. One COPY
        # carries every leg, and the balance trigger checks them all at once.
        if entries:
            await conn.copy_records_to_table(
                "entries", schema_name=schema, columns=_ENTRY_COLUMNS, records=entries
            )
            await conn.copy_records_to_table(
                "postings", schema_name=schema, columns=_POSTING_COLUMNS, records=postings
            )
