"""Money in the ``history`` read model: decimal strings per currency, signed like statements."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec

from ledger.application.commands import (
    CommandContext,
    EnrollPartner,
    ProgramSpec,
    RecordActivity,
    RecordAdjustment,
    ReverseEarning,
)
from ledger.application.service import LedgerApplication
from ledger.bootstrap import Services
from ledger.domain.money import Money
from ledger.domain.rules import Rule, RuleSet
from ledger.infrastructure.database import DatabaseUrl
from ledger.projector import catch_up, rebuild_projection
from ledger.queries import fetch_partner_events

CONTEXT = CommandContext(actor="tester", correlation_id="corr-history")
START = date(2024, 1, 1)


def publish(app: LedgerApplication, program_id: str, currency: str, fixed: str) -> None:
    """Publish a program paying 4.5% of won deals and ``fixed`` per demo."""
    rule_set = RuleSet(
        version=1,
        effective_from=START,
        rules=(
            Rule(id="deal-rate", activity_type="deal_won", rate=Decimal("0.045")),
            Rule(id="demo-fixed", activity_type="demo", fixed=fixed),
        ),
    )
    app.publish_program(
        ProgramSpec(id=program_id, name=program_id, currency=currency, rule_sets=[rule_set]),
        CONTEXT,
    )


def enroll(app: LedgerApplication, program_id: str, partner_id: str) -> None:
    app.enroll_partner(
        program_id,
        EnrollPartner(partner_id=partner_id, display_name=partner_id, effective_date=START),
        CONTEXT,
    )


def earn(
    app: LedgerApplication,
    program_id: str,
    partner_id: str,
    source_ref: str,
    base: Money | None,
    activity_type: str = "deal_won",
) -> None:
    app.record_activity(
        program_id,
        RecordActivity(
            partner_id=partner_id,
            activity_type=activity_type,
            source_ref=source_ref,
            effective_date=date(2024, 2, 1),
            base_amount=base,
        ),
        CONTEXT,
    )


def reverse(
    app: LedgerApplication,
    partner_id: str,
    source_ref: str,
    key: str,
    *,
    amount: Money | None = None,
    base: Money | None = None,
) -> None:
    app.reverse_earning(
        partner_id,
        ReverseEarning(
            source_ref=source_ref,
            effective_date=date(2024, 3, 1),
            reason="refund",
            amount=amount,
            base_amount=base,
        ),
        key,
        CONTEXT,
    )


def adjust(app: LedgerApplication, partner_id: str, amount: Money, key: str) -> None:
    app.record_adjustment(
        partner_id,
        RecordAdjustment(amount=amount, effective_date=date(2024, 3, 2), reason="goodwill"),
        key,
        CONTEXT,
    )


def record_every_money_event(app: LedgerApplication) -> None:
    """Record earnings, reversals of each kind and signed adjustments in USD, JPY and BHD."""
    publish(app, "usd", "USD", "25.00")
    publish(app, "jpy", "JPY", "500")
    publish(app, "bhd", "BHD", "1.250")
    enroll(app, "usd", "ann")
    enroll(app, "jpy", "ken")
    enroll(app, "bhd", "lea")

    earn(app, "usd", "ann", "u-deal", Money.parse("302.11", "USD"))
    earn(app, "usd", "ann", "u-demo", None, "demo")
    reverse(app, "ann", "u-deal", "u-rev-base", base=Money.parse("100.00", "USD"))
    reverse(app, "ann", "u-deal", "u-rev-amount", amount=Money.parse("1.00", "USD"))
    reverse(app, "ann", "u-demo", "u-rev-all")
    adjust(app, "ann", Money.parse("7.50", "USD"), "u-adj-credit")
    adjust(app, "ann", Money.parse("-2.25", "USD"), "u-adj-debit")

    earn(app, "jpy", "ken", "j-deal", Money.parse("10000", "JPY"))
    earn(app, "jpy", "ken", "j-demo", None, "demo")
    reverse(app, "ken", "j-deal", "j-rev", amount=Money.parse("50", "JPY"))
    adjust(app, "ken", Money.parse("-30", "JPY"), "j-adj")

    earn(app, "bhd", "lea", "b-deal", Money.parse("12.345", "BHD"))
    earn(app, "bhd", "lea", "b-demo", None, "demo")
    reverse(app, "lea", "b-deal", "b-rev", base=Money.parse("2.000", "BHD"))
    adjust(app, "lea", Money.parse("0.125", "BHD"), "b-adj")


async def fetch(database: DatabaseUrl, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database.url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(query)
        return rows
    finally:
        await conn.close()


async def history_data(database: DatabaseUrl) -> dict[int, tuple[str, dict[str, Any]]]:
    """Return event type and decoded ``data`` of every history row, by position."""
    rows = await fetch(database, "SELECT position, event_type, data FROM history.partner_events")
    return {row["position"]: (row["event_type"], msgspec.json.decode(row["data"])) for row in rows}


async def test_history_amount_matches_statement_line(services: Services) -> None:
    record_every_money_event(services.app)
    await catch_up(services.database)

    history = await history_data(services.database)
    lines = await fetch(
        services.database,
        "SELECT position, kind, amount_minor, currency FROM statements.statement_lines",
    )

    # 3 + 1 + 1 reversals, 2 + 2 + 2 earnings and 2 + 1 + 1 adjustments.
    assert len(lines) == 15
    for line in lines:
        event_type, data = history[line["position"]]
        expected = {
            "amount": Money(line["amount_minor"], line["currency"]).format(),
            "currency": line["currency"],
        }
        assert data["amount"] == expected, (line["kind"], event_type)
    reversals = [data for event_type, data in history.values() if event_type == "Earning.Reversed"]
    assert len(reversals) == 5
    for data in reversals:
        assert data["amount"]["amount"].startswith("-"), data


async def test_history_money_has_currency_digits(services: Services) -> None:
    record_every_money_event(services.app)
    await catch_up(services.database)

    by_ref = {
        (event_type, data.get("source_ref") or data.get("idempotency_key")): data
        for event_type, data in (await history_data(services.database)).values()
    }

    jpy_deal = by_ref[("Earning.Earned", "j-deal")]
    assert jpy_deal["base"] == {"amount": "10000", "currency": "JPY"}
    assert jpy_deal["amount"] == {"amount": "450", "currency": "JPY"}
    assert jpy_deal["unrounded"] == "450.000"
    assert jpy_deal["rate"] == "0.045"
    assert by_ref[("Earning.Earned", "j-demo")]["fixed"] == {"amount": "500", "currency": "JPY"}
    assert by_ref[("Earning.Reversed", "j-rev")]["amount"] == {"amount": "-50", "currency": "JPY"}
    assert by_ref[("Adjustment.Recorded", "j-adj")]["amount"] == {
        "amount": "-30",
        "currency": "JPY",
    }

    # 12.345 BHD × 4.5% = 0.555525 BHD, rounded half-up to 0.556.
    bhd_deal = by_ref[("Earning.Earned", "b-deal")]
    assert bhd_deal["base"] == {"amount": "12.345", "currency": "BHD"}
    assert bhd_deal["amount"] == {"amount": "0.556", "currency": "BHD"}
    assert bhd_deal["unrounded"] == "0.555525"
    assert by_ref[("Earning.Earned", "b-demo")]["fixed"] == {"amount": "1.250", "currency": "BHD"}
    bhd_reversal = by_ref[("Earning.Reversed", "b-rev")]
    assert bhd_reversal["base"] == {"amount": "2.000", "currency": "BHD"}
    assert bhd_reversal["amount"] == {"amount": "-0.090", "currency": "BHD"}
    assert bhd_reversal["unrounded"] == "0.090000"
    assert by_ref[("Adjustment.Recorded", "b-adj")]["amount"] == {
        "amount": "0.125",
        "currency": "BHD",
    }

    usd_whole = by_ref[("Earning.Reversed", "u-rev-all")]
    assert usd_whole["amount"] == {"amount": "-25.00", "currency": "USD"}
    assert usd_whole["base"] is None
    assert usd_whole["unrounded"] is None


async def test_history_events_read_shows_money(services: Services) -> None:
    record_every_money_event(services.app)
    await catch_up(services.database)

    conn = await asyncpg.connect(services.database.url)
    try:
        page = await fetch_partner_events(conn, "ann")
    finally:
        await conn.close()

    types = [event.event_type for event in page.events]
    assert types == [
        "Partner.Enrolled",
        "Earning.Earned",
        "Earning.Earned",
        "Earning.Reversed",
        "Earning.Reversed",
        "Earning.Reversed",
        "Adjustment.Recorded",
        "Adjustment.Recorded",
    ]
    amounts = [event.data.get("amount") for event in page.events]
    assert amounts == [
        None,
        {"amount": "13.59", "currency": "USD"},
        {"amount": "25.00", "currency": "USD"},
        {"amount": "-4.50", "currency": "USD"},
        {"amount": "-1.00", "currency": "USD"},
        {"amount": "-25.00", "currency": "USD"},
        {"amount": "7.50", "currency": "USD"},
        {"amount": "-2.25", "currency": "USD"},
    ]
    enrolled = page.events[0].data
    assert enrolled["partner_id"] == "ann"
    assert enrolled["effective_date"] == "2024-01-01"


async def test_history_rebuild_keeps_money_format(services: Services) -> None:
    record_every_money_event(services.app)
    await catch_up(services.database)
    live = await history_data(services.database)

    await rebuild_projection(services.database, "history")

    assert await history_data(services.database) == live
    assert len(live) == 3 + 15
