"""Tests for the statement JSON that PostgreSQL builds for ``fetch_statement_json``.

The expected bytes come from a reference built here in Python: the rows are
read back with asyncpg, turned into a ``StatementView`` with money formatted
by ``Money.format``, and encoded by msgspec, as the API did before PostgreSQL
formatted the lines. Rows are written straight into the projection tables, so
the cases include values the projector rarely writes: negative and zero
amounts, timestamps on a whole second, and strings that need escaping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import msgspec
import pytest

from ledger.errors import InvalidInputError, NotFoundError
from ledger.infrastructure.database import DatabaseUrl
from ledger.queries import (
    MoneyJSON,
    StatementLine,
    StatementView,
    fetch_statement,
    fetch_statement_json,
)

# Partner id, program id and currency of each test partner.
PARTNERS = [
    ("usd-partner", "usd-program", "USD"),
    ("jpy-partner", "jpy-program", "JPY"),
    ("bhd-partner", "bhd-program", "BHD"),
    ("quiet-partner", "usd-program", "USD"),
]
AWKWARD_TEXT = 'quote " backslash \\ slash / tab \t newline \n bell \x07 é ü 日本 \u2028'
EXPLANATIONS: list[dict[str, Any]] = [
    {
        "activity_type": "deal_won",
        "attributes": {"series": "GTX", "account": AWKWARD_TEXT},
        "rule_set_version": 1,
        "rule_id": "won-gtx",
        "base": "302.00",
        "rate": "0.045",
        "fixed": None,
        "unrounded": "13.59000",
        "rounding": "half-up",
        "actor": "import:crm",
    },
    {"reason": AWKWARD_TEXT, "actor": "api", "idempotency_key": "k-1", "nested": [1, [], {}]},
    {},
]
# (partner, effective date, kind, source ref, amount in minor units, recorded at)
LINES = [
    ("usd-partner", date(2016, 2, 29), "earning", "feb", 1_000, datetime(2016, 3, 1, tzinfo=UTC)),
    (
        "usd-partner",
        date(2016, 3, 1),
        "earning",
        "mar-1",
        4_743,
        datetime(2016, 3, 1, 12, 0, 0, 920_637, tzinfo=UTC),
    ),
    ("usd-partner", date(2016, 3, 1), "reversal", "mar-1", -5, datetime(2016, 3, 2, tzinfo=UTC)),
    (
        "usd-partner",
        date(2016, 3, 31),
        "adjustment",
        AWKWARD_TEXT,
        0,
        datetime(2016, 3, 31, 23, 59, 59, 1, tzinfo=UTC),
    ),
    (
        "usd-partner",
        date(2016, 3, 15),
        "earning",
        "big",
        999_999_999_999_999,
        datetime(2016, 3, 15, 8, 30, 0, 500_000, tzinfo=UTC),
    ),
    ("usd-partner", date(2016, 4, 1), "earning", "apr", 7, datetime(2016, 4, 1, tzinfo=UTC)),
    ("jpy-partner", date(2016, 3, 10), "earning", "yen", 5_556, datetime(2016, 3, 10, tzinfo=UTC)),
    ("jpy-partner", date(2016, 3, 11), "reversal", "yen", -56, datetime(2016, 3, 11, tzinfo=UTC)),
    ("bhd-partner", date(2016, 1, 2), "earning", "early", 12, datetime(2016, 1, 2, tzinfo=UTC)),
    ("bhd-partner", date(2016, 3, 3), "earning", "fils", 47_430, datetime(2016, 3, 3, tzinfo=UTC)),
    ("bhd-partner", date(2016, 3, 4), "adjustment", "debit", -1, datetime(2016, 3, 4, tzinfo=UTC)),
]


async def _insert_rows(conn: asyncpg.Connection) -> None:
    currencies = {program: currency for _, program, currency in PARTNERS}
    for program_id, currency in currencies.items():
        await conn.execute(
            "INSERT INTO statements.programs (program_id, name, currency, time_zone, rounding,"
            " position) VALUES ($1, $1, $2, 'UTC', 'half-up', 1)",
            program_id,
            currency,
        )
    for partner_id, program_id, _ in PARTNERS:
        await conn.execute(
            "INSERT INTO statements.partners (partner_id, program_id, display_name, region,"
            " channel_manager, tier, enrolled_on, enrolled_at, position)"
            " VALUES ($1, $2, $1, '', '', 'base', '2016-01-01', '2016-01-01T00:00:00Z', 2)",
            partner_id,
            program_id,
        )
    programs = {partner: program for partner, program, _ in PARTNERS}
    totals: dict[tuple[str, date], int] = {}
    for position, (partner_id, day, kind, source_ref, amount, recorded_at) in enumerate(
        LINES, start=10
    ):
        program_id = programs[partner_id]
        explanation = EXPLANATIONS[position % len(EXPLANATIONS)]
        await conn.execute(
            "INSERT INTO statements.statement_lines (position, partner_id, program_id, currency,"
            " effective_date, kind, source_ref, amount_minor, explanation, recorded_at,"
            " event_id, event_version)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::text::jsonb, $10,"
            " gen_random_uuid(), 1)",
            position,
            partner_id,
            program_id,
            currencies[program_id],
            day,
            kind,
            source_ref,
            amount,
            msgspec.json.encode(explanation).decode(),
            recorded_at,
        )
        month = day.replace(day=1)
        totals[(partner_id, month)] = totals.get((partner_id, month), 0) + amount
    for (partner_id, month), amount in totals.items():
        await conn.execute(
            "INSERT INTO statements.period_totals (partner_id, currency, period, amount_minor)"
            " VALUES ($1, $2, $3, $4)",
            partner_id,
            currencies[programs[partner_id]],
            month,
            amount,
        )


async def _reference_json(conn: asyncpg.Connection, partner_id: str, start: date) -> bytes:
    """Encode the statement from plain rows in Python, as the API did before."""
    end = date(start.year + start.month // 12, start.month % 12 + 1, 1)
    partner = await conn.fetchrow(
        "SELECT p.program_id, g.currency FROM statements.partners AS p"
        " JOIN statements.programs AS g USING (program_id) WHERE p.partner_id = $1",
        partner_id,
    )
    assert partner is not None
    currency = partner["currency"].strip()
    opening = await conn.fetchval(
        "SELECT coalesce(sum(amount_minor), 0) FROM statements.statement_lines"
        " WHERE partner_id = $1 AND effective_date < $2",
        partner_id,
        start,
    )
    rows = await conn.fetch(
        "SELECT effective_date, kind, source_ref, amount_minor, explanation::text AS explanation,"
        " position, recorded_at FROM statements.statement_lines"
        " WHERE partner_id = $1 AND effective_date >= $2 AND effective_date < $3"
        " ORDER BY effective_date, position",
        partner_id,
        start,
        end,
    )
    lines = [
        StatementLine(
            effective_date=row["effective_date"],
            kind=row["kind"],
            source_ref=row["source_ref"],
            amount=MoneyJSON.from_minor(row["amount_minor"], currency),
            explanation=msgspec.json.decode(row["explanation"]),
            position=row["position"],
            recorded_at=row["recorded_at"],
        )
        for row in rows
    ]
    closing = int(opening) + sum(row["amount_minor"] for row in rows)
    view = StatementView(
        partner_id=partner_id,
        program_id=partner["program_id"],
        period=f"{start.year:04d}-{start.month:02d}",
        currency=currency,
        opening_balance=MoneyJSON.from_minor(int(opening), currency),
        closing_balance=MoneyJSON.from_minor(closing, currency),
        lines=lines,
    )
    return msgspec.json.encode(view)


@pytest.fixture
async def conn(database: DatabaseUrl) -> AsyncIterator[asyncpg.Connection]:
    # A session time zone and date style far from UTC and ISO: the JSON must not depend on them.
    connection = await asyncpg.connect(
        database.url, server_settings={"TimeZone": "Asia/Kathmandu", "DateStyle": "SQL, DMY"}
    )
    try:
        await _insert_rows(connection)
        yield connection
    finally:
        await connection.close()


@pytest.mark.parametrize("column_type", ["jsonb", "json"])
async def test_statement_json_matches_reference(conn: asyncpg.Connection, column_type: str) -> None:
    await conn.execute(
        "ALTER TABLE statements.statement_lines ALTER COLUMN explanation"
        f" TYPE {column_type} USING explanation::text::{column_type}"
    )

    for partner_id, _, _ in PARTNERS:
        for start in (date(2016, 1, 1), date(2016, 3, 1), date(2016, 4, 1), date(2017, 1, 1)):
            period = f"{start.year:04d}-{start.month:02d}"
            got = await fetch_statement_json(conn, partner_id, period)
            expected = await _reference_json(conn, partner_id, start)
            assert got == expected, f"{partner_id} {period}"


async def test_statement_json_formats_amounts(conn: asyncpg.Connection) -> None:
    usd = msgspec.json.decode(await fetch_statement_json(conn, "usd-partner", "2016-03"))
    jpy = msgspec.json.decode(await fetch_statement_json(conn, "jpy-partner", "2016-03"))
    bhd = msgspec.json.decode(await fetch_statement_json(conn, "bhd-partner", "2016-03"))

    assert [line["amount"]["amount"] for line in usd["lines"]] == [
        "47.43",
        "-0.05",
        "9999999999999.99",
        "0.00",
    ]
    assert usd["opening_balance"] == {"amount": "10.00", "currency": "USD"}
    assert [line["amount"]["amount"] for line in jpy["lines"]] == ["5556", "-56"]
    assert [line["amount"]["amount"] for line in bhd["lines"]] == ["47.430", "-0.001"]
    assert bhd["closing_balance"] == {"amount": "47.441", "currency": "BHD"}


async def test_statement_json_formats_timestamps(conn: asyncpg.Connection) -> None:
    statement = msgspec.json.decode(await fetch_statement_json(conn, "usd-partner", "2016-03"))

    assert [line["recorded_at"] for line in statement["lines"]] == [
        "2016-03-01T12:00:00.920637Z",
        "2016-03-02T00:00:00Z",
        "2016-03-15T08:30:00.500000Z",
        "2016-03-31T23:59:59.000001Z",
    ]
    assert [line["effective_date"] for line in statement["lines"]] == [
        "2016-03-01",
        "2016-03-01",
        "2016-03-15",
        "2016-03-31",
    ]


async def test_statement_without_lines_is_empty(conn: asyncpg.Connection) -> None:
    statement = await fetch_statement(conn, "quiet-partner", "2016-03")

    assert statement.lines == []
    assert statement.opening_balance == MoneyJSON(amount="0.00", currency="USD")
    assert statement.closing_balance == MoneyJSON(amount="0.00", currency="USD")


async def test_statement_of_unknown_partner(conn: asyncpg.Connection) -> None:
    with pytest.raises(NotFoundError) as caught:
        await fetch_statement_json(conn, "nobody", "2016-03")

    assert caught.value.field == "partner_id"


async def test_statement_in_unknown_currency(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "UPDATE statements.programs SET currency = 'XTS' WHERE program_id = $1", "usd-program"
    )

    with pytest.raises(InvalidInputError) as caught:
        await fetch_statement_json(conn, "usd-partner", "2016-03")

    assert "XTS" in str(caught.value)
