"""The ``statements`` projection: programs, partners, balances and statement lines.

Each money event becomes one statement line with a signed amount and an
``explanation`` that lets a statement show how the amount came about:

* an earning (kind ``earning``, amount positive) carries the activity, the
  rule set version and rule that priced it, the base, the rate or fixed
  amount, the unrounded result in major units and the rounding mode;
* a reversal (kind ``reversal``, amount negative) carries the reason, the part
  of the base clawed back, the earning's frozen rate, the unrounded result and
  the earning's rule, and repeats the earning's ``source_ref``;
* an adjustment (kind ``adjustment``, amount signed) carries the reason.

Money in explanations is a decimal string with exactly the currency's digits,
for example "60.40" USD, "5" JPY or "1.250" BHD.

``balances`` keeps running totals per partner and currency, all in minor
units: ``earned_minor`` and ``reversed_minor`` are sums of positive amounts,
``adjusted_minor`` is the signed sum of adjustments, and ``balance_minor`` is
``earned - reversed + adjusted``. A partner has no balances row until its
first money event. ``period_totals`` sums the signed line amounts per calendar
month of the effective date.
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache
from typing import Any

import asyncpg

from ledger.domain.adjustment import Adjustment
from ledger.domain.earning import Earning
from ledger.domain.partner import Partner
from ledger.domain.program import Program
from ledger.projector.base import (
    Projection,
    decimal_text,
    major_units_text,
    money_text,
    quote_identifier,
)
from ledger.projector.events import (
    ADJUSTMENT_RECORDED,
    EARNING_EARNED,
    EARNING_REVERSED,
    PARTNER_ENROLLED,
    PARTNER_TIER_CHANGED,
    PROGRAM_CREATED,
    PROGRAM_RULE_SET_PUBLISHED,
    EventBatch,
    json_text,
)

__all__ = ["StatementsProjection"]


@lru_cache(maxsize=16)
def _statements(schema: str) -> dict[str, str]:
    s = quote_identifier(schema)
    return {
        "insert_programs": f"""
            INSERT INTO {s}.programs
                (program_id, name, currency, time_zone, rounding, rule_sets, position, tiers)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::jsonb[], $7::bigint[], $8::jsonb[])
        """,
        "append_rule_sets": f"""
            UPDATE {s}.programs AS p
               SET rule_sets = p.rule_sets || u.rule_sets, position = u.position
              FROM unnest($1::text[], $2::jsonb[], $3::bigint[]) AS u(program_id, rule_sets, position)
             WHERE p.program_id = u.program_id
        """,
        "insert_partners": f"""
            INSERT INTO {s}.partners
                (partner_id, program_id, display_name, region, channel_manager, tier,
                 enrolled_on, enrolled_at, position)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::text[], $7::date[], $8::timestamptz[], $9::bigint[])
        """,
        "change_tiers": f"""
            UPDATE {s}.partners AS p
               SET tier = u.tier, position = u.position
              FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(partner_id, tier, position)
             WHERE p.partner_id = u.partner_id
        """,
        "upsert_balances": f"""
            INSERT INTO {s}.balances AS b
                (partner_id, currency, earned_minor, reversed_minor, adjusted_minor,
                 balance_minor, line_count, position)
            SELECT * FROM unnest($1::text[], $2::text[], $3::numeric[], $4::numeric[],
                                 $5::numeric[], $6::numeric[], $7::bigint[], $8::bigint[])
            ON CONFLICT (partner_id, currency) DO UPDATE SET
                earned_minor = b.earned_minor + EXCLUDED.earned_minor,
                reversed_minor = b.reversed_minor + EXCLUDED.reversed_minor,
                adjusted_minor = b.adjusted_minor + EXCLUDED.adjusted_minor,
                balance_minor = b.balance_minor + EXCLUDED.balance_minor,
                line_count = b.line_count + EXCLUDED.line_count,
                position = EXCLUDED.position
        """,
        "upsert_periods": f"""
            INSERT INTO {s}.period_totals AS t (partner_id, currency, period, amount_minor)
            SELECT * FROM unnest($1::text[], $2::text[], $3::date[], $4::numeric[])
            ON CONFLICT (partner_id, currency, period) DO UPDATE SET
                amount_minor = t.amount_minor + EXCLUDED.amount_minor
        """,
    }


_LINE_COLUMNS = (
    "position",
    "partner_id",
    "program_id",
    "currency",
    "effective_date",
    "kind",
    "source_ref",
    "amount_minor",
    "explanation",
    "recorded_at",
    "event_id",
    "event_version",
)


class _Lines:
    """Statement lines of one batch, as rows for COPY, and their totals."""

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        # [earned, reversed, adjusted, balance, line_count, position] per (partner, currency).
        self.balances: dict[tuple[str, str], list[int]] = {}
        self.periods: dict[tuple[str, str, date], int] = {}

    def add(
        self,
        position: int,
        event: Any,
        *,
        partner_id: str,
        program_id: str,
        currency: str,
        kind: str,
        source_ref: str,
        amount_minor: int,
        explanation: dict[str, Any],
    ) -> None:
        effective_date: date = event.effective_date
        self.rows.append(
            (
                position,
                partner_id,
                program_id,
                currency,
                effective_date,
                kind,
                source_ref,
                amount_minor,
                json_text(explanation),
                event.timestamp,
                event.originator_id,
                event.originator_version,
            )
        )

        totals = self.balances.setdefault((partner_id, currency), [0, 0, 0, 0, 0, 0])
        if kind == "earning":
            totals[0] += amount_minor
        elif kind == "reversal":
            totals[1] -= amount_minor
        else:
            totals[2] += amount_minor
        totals[3] += amount_minor
        totals[4] += 1
        totals[5] = position

        period = (partner_id, currency, effective_date.replace(day=1))
        self.periods[period] = self.periods.get(period, 0) + amount_minor


class StatementsProjection(Projection):
    """Programs, partners, balances, monthly totals and explained statement lines."""

    name = "statements"
    topics = frozenset(
        {
            PROGRAM_CREATED,
            PROGRAM_RULE_SET_PUBLISHED,
            PARTNER_ENROLLED,
            PARTNER_TIER_CHANGED,
            EARNING_EARNED,
            EARNING_REVERSED,
            ADJUSTMENT_RECORDED,
        }
    )

    async def apply(self, conn: asyncpg.Connection, schema: str, batch: EventBatch) -> None:
        """Write programs, partners, statement lines and their totals for ``batch``."""
        sql = _statements(schema)
        # Rows created in this batch, by id, with later events of the batch
        # applied to them in Python before the insert.
        new_programs: dict[str, list[Any]] = {}
        appended_rule_sets: dict[str, tuple[list[Any], int]] = {}
        new_partners: dict[str, list[Any]] = {}
        tier_changes: dict[str, tuple[str, int]] = {}
        lines = _Lines()

        # Sort each event into the rows it creates or changes.
        for position, event in batch.events:
            if isinstance(event, Earning.Earned):
                lines.add(
                    position,
                    event,
                    partner_id=event.partner_id,
                    program_id=event.program_id,
                    currency=event.currency,
                    kind="earning",
                    source_ref=event.source_ref,
                    amount_minor=event.amount_minor,
                    explanation=_earning_explanation(event),
                )
            elif isinstance(event, Earning.Reversed):
                earned = batch.creation_of(event)
                lines.add(
                    position,
                    event,
                    partner_id=earned.partner_id,
                    program_id=earned.program_id,
                    currency=earned.currency,
                    kind="reversal",
                    source_ref=earned.source_ref,
                    amount_minor=-event.amount_minor,
                    explanation=_reversal_explanation(event, earned),
                )
            elif isinstance(event, Adjustment.Recorded):
                lines.add(
                    position,
                    event,
                    partner_id=event.partner_id,
                    program_id=event.program_id,
                    currency=event.currency,
                    kind="adjustment",
                    source_ref=event.source_ref,
                    amount_minor=event.amount_minor,
                    explanation={
                        "reason": event.reason,
                        "actor": event.actor,
                        "idempotency_key": event.idempotency_key,
                    },
                )
            elif isinstance(event, Partner.Enrolled):
                new_partners[event.partner_id] = [
                    event.partner_id,
                    event.program_id,
                    event.display_name,
                    event.region,
                    event.channel_manager,
                    event.tier,
                    event.effective_date,
                    event.timestamp,
                    position,
                ]
            elif isinstance(event, Partner.TierChanged):
                partner_id = batch.creation_of(event).partner_id
                if partner_id in new_partners:
                    new_partners[partner_id][5] = event.to_tier
                    new_partners[partner_id][8] = position
                else:
                    tier_changes[partner_id] = (event.to_tier, position)
            elif isinstance(event, Program.Created):
                new_programs[event.program_id] = [
                    event.program_id,
                    event.name,
                    event.currency,
                    event.time_zone,
                    event.rounding,
                    [],
                    position,
                    json_text(list(event.tiers)),
                ]
            elif isinstance(event, Program.RuleSetPublished):
                program_id = batch.creation_of(event).program_id
                if program_id in new_programs:
                    new_programs[program_id][5].append(event.rule_set)
                    new_programs[program_id][6] = position
                else:
                    rule_sets, _ = appended_rule_sets.get(program_id, ([], 0))
                    rule_sets.append(event.rule_set)
                    appended_rule_sets[program_id] = (rule_sets, position)

        # Programs and partners first, then the lines and their totals.
        if new_programs:
            rows = list(new_programs.values())
            for row in rows:
                row[5] = json_text(row[5])
            await conn.execute(sql["insert_programs"], *_columns(rows, 8))
        if appended_rule_sets:
            await conn.execute(
                sql["append_rule_sets"],
                list(appended_rule_sets),
                [json_text(sets) for sets, _ in appended_rule_sets.values()],
                [last for _, last in appended_rule_sets.values()],
            )
        if new_partners:
            await conn.execute(sql["insert_partners"], *_columns(list(new_partners.values()), 9))
        if tier_changes:
            await conn.execute(
                sql["change_tiers"],
                list(tier_changes),
                [tier for tier, _ in tier_changes.values()],
                [last for _, last in tier_changes.values()],
            )
        if lines.rows:
            await conn.copy_records_to_table(
                "statement_lines", schema_name=schema, columns=_LINE_COLUMNS, records=lines.rows
            )
            # In key order, so consecutive upserts visit neighbouring index pages.
            balance_rows = [[*key, *lines.balances[key]] for key in sorted(lines.balances)]
            await conn.execute(sql["upsert_balances"], *_columns(balance_rows, 8))
            period_rows = [[*key, lines.periods[key]] for key in sorted(lines.periods)]
            await conn.execute(sql["upsert_periods"], *_columns(period_rows, 4))


def _columns(rows: list[list[Any]], width: int) -> list[list[Any]]:
    """Transpose rows into one list per column."""
    return [[row[index] for row in rows] for index in range(width)]


def _earning_explanation(event: Earning.Earned) -> dict[str, Any]:
    currency = event.currency
    return {
        "activity_type": event.activity_type,
        "attributes": event.attributes,
        "rule_set_version": event.rule_set_version,
        "rule_id": event.rule_id,
        "base": money_text(event.base_minor, currency),
        "rate": decimal_text(event.rate),
        "fixed": money_text(event.fixed_minor, currency),
        "unrounded": major_units_text(event.unrounded_minor, currency),
        "rounding": event.rounding,
        "actor": event.actor,
    }


def _reversal_explanation(event: Earning.Reversed, earned: Earning.Earned) -> dict[str, Any]:
    currency = earned.currency
    priced_from_base = event.base_minor is not None
    return {
        "reason": event.reason,
        "actor": event.actor,
        "idempotency_key": event.idempotency_key,
        "base": money_text(event.base_minor, currency),
        # The rate explains the amount only when the reversal was priced from
        # a clawed-back base; an amount or full reversal names no rate.
        "rate": decimal_text(earned.rate) if priced_from_base else None,
        "unrounded": major_units_text(event.unrounded_minor, currency),
        "rounding": earned.rounding,
        "rule_set_version": earned.rule_set_version,
        "rule_id": earned.rule_id,
    }
