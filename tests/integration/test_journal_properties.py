"""Properties of the projections for random histories of earnings, reversals and adjustments.

Each example runs in a fresh database cloned from the migrated template, so
examples never see each other's events.
"""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg
import psycopg
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from psycopg import sql

from ledger.application.commands import (
    CommandContext,
    EnrollPartner,
    ProgramSpec,
    RecordActivity,
    RecordAdjustment,
    ReverseEarning,
)
from ledger.application.service import LedgerApplication
from ledger.bootstrap import bootstrap
from ledger.domain.money import Money
from ledger.domain.rules import Rule, RuleSet
from ledger.errors import InvalidInputError
from ledger.infrastructure.database import DatabaseUrl
from ledger.projector import PROJECTION_NAMES, catch_up, rebuild_projection
from ledger.settings import Settings

CONTEXT = CommandContext(actor="hypothesis", correlation_id="corr-properties")

# Two programs in currencies with different exponents, two partners each.
PROGRAMS = {"usd-program": "USD", "bhd-program": "BHD"}
PARTNERS = {
    "u0": "usd-program",
    "u1": "usd-program",
    "b0": "bhd-program",
    "b1": "bhd-program",
}
PARTNER_IDS = sorted(PARTNERS)

earn_operation = st.tuples(
    st.just("earn"),
    st.sampled_from(PARTNER_IDS),
    st.sampled_from(["deal_won", "demo"]),
    st.integers(min_value=0, max_value=50_000_000),
)
reverse_operation = st.tuples(
    st.just("reverse"),
    st.integers(min_value=0, max_value=1_000),
    st.sampled_from(["full", "amount", "base"]),
    st.integers(min_value=1, max_value=100),
)
adjust_operation = st.tuples(
    st.just("adjust"),
    st.sampled_from(PARTNER_IDS),
    st.integers(min_value=-1_000_000, max_value=1_000_000).filter(bool),
    st.just(0),
)
project_operation = st.tuples(
    st.just("project"), st.integers(min_value=1, max_value=7), st.just(""), st.just(0)
)
operations = st.lists(
    st.one_of(earn_operation, reverse_operation, adjust_operation, project_operation),
    min_size=1,
    max_size=30,
)


def _create_database(server: DatabaseUrl, template: str) -> DatabaseUrl:
    name = f"ledger_prop_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    return server.with_dbname(name)


def _drop_database(server: DatabaseUrl, database: DatabaseUrl) -> None:
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(database.dbname)
            )
        )


def _set_up_programs(app: LedgerApplication) -> None:
    for program_id, currency in PROGRAMS.items():
        fixed = "12.345" if currency == "BHD" else "25.00"
        app.publish_program(
            ProgramSpec(
                id=program_id,
                name=program_id,
                currency=currency,
                rule_sets=[
                    RuleSet(
                        version=1,
                        effective_from=date(2024, 1, 1),
                        rules=(
                            Rule(id="rate", activity_type="deal_won", rate=Decimal("0.0375")),
                            Rule(id="fixed", activity_type="demo", fixed=fixed),
                        ),
                    )
                ],
            ),
            CONTEXT,
        )
    for partner_id, program_id in PARTNERS.items():
        app.enroll_partner(
            program_id,
            EnrollPartner(
                partner_id=partner_id, display_name=partner_id, effective_date=date(2024, 1, 1)
            ),
            CONTEXT,
        )


async def _apply(
    app: LedgerApplication, database: DatabaseUrl, steps: list[tuple[Any, ...]]
) -> None:
    """Run the commands, projecting in between with the batch sizes the steps name."""
    earnings: list[tuple[str, str, int, str]] = []  # partner, source_ref, base_minor, currency
    for number, (kind, first, second, third) in enumerate(steps):
        if kind == "earn":
            partner_id = first
            currency = PROGRAMS[PARTNERS[partner_id]]
            source_ref = f"activity-{number}"
            app.record_activity(
                PARTNERS[partner_id],
                RecordActivity(
                    partner_id=partner_id,
                    activity_type=second,
                    source_ref=source_ref,
                    effective_date=date(2024, 1 + number % 12, 1),
                    base_amount=Money(third, currency),
                ),
                CONTEXT,
            )
            earnings.append((partner_id, source_ref, third, currency))
        elif kind == "reverse" and earnings:
            partner_id, source_ref, base_minor, currency = earnings[first % len(earnings)]
            part = max(1, base_minor * third // 100)
            command = ReverseEarning(
                source_ref=source_ref,
                effective_date=date(2025, 1, 1),
                reason="clawback",
                amount=Money(third, currency) if second == "amount" else None,
                base_amount=Money(part, currency) if second == "base" else None,
            )
            try:
                app.reverse_earning(partner_id, command, f"reverse-{number}", CONTEXT)
            except InvalidInputError:
                # Fully reversed, too large or a fixed reward reversed by base:
                # the domain rejects it and nothing is recorded.
                pass
        elif kind == "adjust":
            partner_id = first
            currency = PROGRAMS[PARTNERS[partner_id]]
            app.record_adjustment(
                partner_id,
                RecordAdjustment(
                    amount=Money(second, currency), effective_date=date(2024, 7, 1), reason="manual"
                ),
                f"adjust-{number}",
                CONTEXT,
            )
        elif kind == "project":
            await catch_up(database, batch_size=first)
    await catch_up(database)


async def _dump(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    queries = {
        "programs": "SELECT * FROM statements.programs ORDER BY program_id",
        "partners": "SELECT * FROM statements.partners ORDER BY partner_id",
        "balances": "SELECT * FROM statements.balances ORDER BY partner_id, currency",
        "period_totals": "SELECT * FROM statements.period_totals ORDER BY partner_id, currency, period",
        "statement_lines": "SELECT * FROM statements.statement_lines ORDER BY position",
        "entries": "SELECT * FROM journal.entries ORDER BY position",
        "postings": "SELECT * FROM journal.postings ORDER BY position, leg",
        "partner_events": "SELECT * FROM history.partner_events ORDER BY partner_id, position",
        "checkpoints": (
            "SELECT (SELECT position FROM statements.checkpoint), "
            "(SELECT position FROM journal.checkpoint), (SELECT position FROM history.checkpoint)"
        ),
    }
    return {
        name: [tuple(row) for row in await conn.fetch(query)] for name, query in queries.items()
    }


async def _check_journal(conn: asyncpg.Connection) -> None:
    unbalanced_entries = await conn.fetch(
        "SELECT position, currency, sum(amount_minor) FROM journal.postings "
        "GROUP BY position, currency HAVING sum(amount_minor) <> 0"
    )
    assert unbalanced_entries == []
    totals = await conn.fetch(
        "SELECT currency, sum(amount_minor) AS total FROM journal.postings GROUP BY currency"
    )
    assert all(row["total"] == 0 for row in totals)
    legs = await conn.fetch(
        "SELECT position, count(*) AS legs FROM journal.postings GROUP BY position"
    )
    assert all(row["legs"] == 2 for row in legs)

    payable = {
        (row["partner_id"], row["currency"]): row["total"]
        for row in await conn.fetch(
            "SELECT substr(account, length('partner_payable:') + 1) AS partner_id, currency, "
            "sum(amount_minor) AS total FROM journal.postings "
            "WHERE account LIKE 'partner\\_payable:%' GROUP BY 1, 2"
        )
    }
    balances = {
        (row["partner_id"], row["currency"]): row["balance_minor"]
        for row in await conn.fetch(
            "SELECT partner_id, currency, balance_minor FROM statements.balances"
        )
    }
    assert payable == {key: -value for key, value in balances.items()}
    assert sum(payable.values()) == -sum(balances.values())


async def _check_statements(conn: asyncpg.Connection) -> None:
    lines = {
        (row["partner_id"], row["currency"]): (row["total"], row["lines"])
        for row in await conn.fetch(
            "SELECT partner_id, currency, sum(amount_minor) AS total, count(*) AS lines "
            "FROM statements.statement_lines GROUP BY 1, 2"
        )
    }
    balances = {
        (row["partner_id"], row["currency"]): (row["balance_minor"], row["line_count"])
        for row in await conn.fetch(
            "SELECT partner_id, currency, balance_minor, line_count FROM statements.balances"
        )
    }
    assert lines == balances
    money_events = await conn.fetchval(
        "SELECT count(*) FROM ledger_events WHERE topic = ANY($1::text[])",
        [
            "ledger.domain.earning:Earning.Earned",
            "ledger.domain.earning:Earning.Reversed",
            "ledger.domain.adjustment:Adjustment.Recorded",
        ],
    )
    assert await conn.fetchval("SELECT count(*) FROM statements.statement_lines") == money_events
    assert await conn.fetchval("SELECT count(*) FROM journal.entries") == money_events


@hypothesis_settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(steps=operations)
async def test_journal_balances_and_replay(
    database_server: DatabaseUrl, template_database: str, steps: list[tuple[Any, ...]]
) -> None:
    database = _create_database(database_server, template_database)
    services = bootstrap(Settings(), database=database, run_migrations=False)
    try:
        _set_up_programs(services.app)
        await _apply(services.app, database, steps)
        conn = await asyncpg.connect(database.url)
        try:
            await _check_journal(conn)
            await _check_statements(conn)
            incremental = await _dump(conn)

            for name in PROJECTION_NAMES:
                await rebuild_projection(database, name)
            replayed = await _dump(conn)
        finally:
            await conn.close()

        for table, rows in incremental.items():
            assert replayed[table] == rows, table
    finally:
        services.close()
        _drop_database(database_server, database)
