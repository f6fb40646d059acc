"""The ``history`` projection: every event about a partner, in position order.

Rows cover enrollment, tier changes, earnings, reversals and adjustments.
``event_type`` is the event's class path within its aggregate, such as
``Earning.Earned``. The stream id, version and recorded-at time are columns of
their own and are not repeated in ``data``.

``data`` contains the event's own fields as JSON, with dates and UUIDs as
strings, and with money rendered as the API renders it:

* each money field becomes an object ``{"amount": "5.00", "currency": "USD"}``
  with exactly the currency's digits, named without the ``_minor`` suffix of
  the stored field: ``amount``, ``base`` and ``fixed``. The separate
  ``currency`` field is dropped, because every money object carries it;
* ``rate`` stays a decimal string (``"0.045"``), and ``unrounded`` is the
  exact result before rounding as a decimal string in major units
  (``"13.59495"`` USD), as statement explanations show it;
* ``amount`` is the event's signed effect on the partner's balance, as
  statement lines show it: positive for an earning, negative for a reversal
  (the stored event contains the amount reversed, which is positive), and signed
  for an adjustment. A reversal's ``base`` and ``unrounded`` describe the part
  clawed back and stay positive, as in the statement explanation.

For example, a reversal of 4.50 USD of a 4.5% earning reads::

    {"amount": {"amount": "-4.50", "currency": "USD"},
     "base": {"amount": "100.00", "currency": "USD"},
     "unrounded": "4.50000", "effective_date": "2024-03-01", "reason": "refund", ...}

NOTE: ``ledger status`` reports a changed ``projections/history.sql`` but not
a change to the shape of ``data`` made here. After such a change, run
``ledger rebuild history`` so that older rows get the new shape too.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from ledger.domain.adjustment import Adjustment
from ledger.domain.earning import Earning
from ledger.domain.money import format_minor
from ledger.domain.partner import Partner
from ledger.projector.base import Projection, major_units_text
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

# Stored money fields in minor units and their names in ``data``.
_MONEY_FIELDS = {"amount_minor": "amount", "base_minor": "base", "fixed_minor": "fixed"}


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

        # Find each event's partner, source reference and currency, then render its fields.
        for position, event in batch.events:
            currency: str | None = None
            if isinstance(event, Earning.Reversed):
                earned = batch.creation_of(event)
                partner_id, source_ref, currency = (
                    earned.partner_id,
                    earned.source_ref,
                    earned.currency,
                )
            elif isinstance(event, Partner.TierChanged):
                partner_id, source_ref = batch.creation_of(event).partner_id, ""
            else:
                partner_id, source_ref = event.partner_id, event.source_ref
                if isinstance(event, Earning.Earned | Adjustment.Recorded):
                    currency = event.currency
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
                    json_text(_event_data(event, currency)),
                )
            )

        if rows:
            await conn.copy_records_to_table(
                "partner_events", schema_name=schema, columns=_COLUMNS, records=rows
            )


def _event_data(event: Any, currency: str | None) -> dict[str, Any]:
    """Return the ``data`` of ``event``: its fields with money rendered for the API.

    ``currency`` is the currency of the event's money fields, None for an
    event without money. Field order follows the event's.
    """
    # A reversal stores the amount reversed, so its effect on the balance is the negation.
    sign = -1 if isinstance(event, Earning.Reversed) else 1
    data: dict[str, Any] = {}
    for key, value in event.__dict__.items():
        if key in _METADATA_KEYS:
            continue
        if currency is None:
            data[key] = value
        elif key == "currency":
            continue
        elif key in _MONEY_FIELDS:
            amount = value if key != "amount_minor" else sign * value
            data[_MONEY_FIELDS[key]] = _money_json(amount, currency)
        elif key == "unrounded_minor":
            data["unrounded"] = major_units_text(value, currency)
        else:
            data[key] = value
    return data


def _money_json(amount_minor: int | None, currency: str) -> dict[str, str] | None:
    """Return money as ``{"amount": "5.00", "currency": "USD"}``, or None for no amount."""
    if amount_minor is None:
        return None
    return {"amount": format_minor(amount_minor, currency), "currency": currency}
