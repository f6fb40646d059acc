"""The ``history`` projection: every event about a partner, in position order.

Rows cover enrollment, tier changes, earnings, reversals and adjustments.
``event_type`` is the event's class path within its aggregate, such as
``Earning.Earned``, and ``data`` contains the event's own fields as JSON, with
Decimals, dates and UUIDs as strings. The stream id, version and recorded-at
time are columns of their own and are not repeated in ``data``.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from ledger.domain.earning import Earning
from ledger.domain.partner import Partner
from ledger.projector.base import Projection
from ledger.projector.events import (
    ADJUSTMENT_RECORDED,
    EARNING_EARNED,
    EARNING_REVERSED,
    PARTNER_ENROLLED,
    PARTNER_TIER_CHANGED,
    EventBatch,
    json_text,
)

__all__ = ["HistoryProjection"]

# Event attributes that are columns or eventsourcing bookkeeping, not event data.
_METADATA_KEYS = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})


_COLUMNS = (
    "partner_id",
    "position",
    "event_type",
    "event_id",
    "event_version",
    "effective_date",
    "recorded_at",
    "actor",
    "correlation_id",
    "source_ref",
    "data",
)


class HistoryProjection(Projection):
    """One row per partner event, with the event's data as JSON."""

    name = "history"
    topics = frozenset(
        {
            PARTNER_ENROLLED,
            PARTNER_TIER_CHANGED,
            EARNING_EARNED,
            EARNING_REVERSED,
            ADJUSTMENT_RECORDED,
        }
    )

    async def apply(self, conn: asyncpg.Connection, schema: str, batch: EventBatch) -> None:
        """Write one ``partner_events`` row per event of ``batch``."""
        rows: list[tuple[Any, ...]] = []

        # Find each event's partner and source reference, then copy its fields.
        for position, event in batch.events:
            if isinstance(event, Earning.Reversed):
                earned = batch.creation_of(event)
                partner_id, source_ref = earned.partner_id, earned.source_ref
            elif isinstance(event, Partner.TierChanged):
                partner_id, source_ref = batch.creation_of(event).partner_id, ""
            else:
                partner_id, source_ref = event.partner_id, event.source_ref
            data = {
                key: value for key, value in event.__dict__.items() if key not in _METADATA_KEYS
            }
            rows.append(
                (
                    partner_id,
                    position,
                    type(event).__qualname__,
                    event.originator_id,
                    event.originator_version,
                    event.effective_date,
                    event.timestamp,
                    event.actor,
                    event.correlation_id,
                    source_ref,
                    json_text(data),
                )
            )

        if rows:
            await conn.copy_records_to_table(
                "partner_events", schema_name=schema, columns=_COLUMNS, records=rows
            )
