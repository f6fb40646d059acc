"""Rebuilding projections while readers and a live projector keep running."""

from __future__ import annotations

import asyncio
from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

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
from ledger.errors import ConflictError, InvalidInputError
from ledger.infrastructure.database import DatabaseUrl
from ledger.infrastructure.schema import pending_projection_changes
from ledger.projector import (
    PROJECTION_NAMES,
    catch_up,
    rebuild_projection,
    run_projector,
    wait_for_position,
)
from ledger.settings import Settings

CONTEXT = CommandContext(actor="tester", correlation_id="corr-rebuild")
PATIENCE = 30.0

# Queries an API would run, each naming its tables by schema.
READER_QUERIES = (
    "SELECT partner_id, balance_minor FROM statements.balances WHERE partner_id = 'p1'",
    "SELECT count(*), sum(amount_minor) FROM statements.statement_lines WHERE partner_id = 'p2'",
    "SELECT tier FROM statements.partners WHERE partner_id = 'p3'",
    "SELECT sum(amount_minor) FROM journal.postings WHERE account = 'partner_payable:p1'",
    "SELECT count(*) FROM history.partner_events WHERE partner_id = 'p2'",
    "SELECT position FROM statements.checkpoint",
)


def record_sample(
    app: LedgerApplication, *, prefix: str = "", partners: int = 4, deals: int = 60
) -> int:
    """Record a program, partners, earnings, reversals and adjustments; return the head."""
    if not prefix:
        app.publish_program(
            ProgramSpec(
                id="channel",
                name="Channel",
                currency="USD",
                rule_sets=[
                    RuleSet(
                        version=1,
                        effective_from=date(2024, 1, 1),
                        rules=(
                            Rule(id="deal-rate", activity_type="deal_won", rate=Decimal("0.045")),
                        ),
                    )
                ],
            ),
            CONTEXT,
        )
        for number in range(partners):
            app.enroll_partner(
                "channel",
                EnrollPartner(
                    partner_id=f"p{number}",
                    display_name=f"P{number}",
                    effective_date=date(2024, 1, 1),
                ),
                CONTEXT,
            )
    commands = [
        RecordActivity(
            partner_id=f"p{number % partners}",
            activity_type="deal_won",
            source_ref=f"{prefix}deal-{number}",
            effective_date=date(2024, 1 + number % 12, 1 + number % 28),
            base_amount=Money(10_000 + 37 * number, "USD"),
        )
        for number in range(deals)
    ]
    items = app.record_activities("channel", commands, CONTEXT)
    assert all(item.error is None for item in items)
    for number in range(0, deals, 7):
        app.reverse_earning(
            f"p{number % partners}",
            ReverseEarning(
                source_ref=f"{prefix}deal-{number}",
                effective_date=date(2024, 12, 31),
                reason="refund",
                base_amount=Money(3_333, "USD"),
            ),
            f"{prefix}rev-{number}",
            CONTEXT,
        )
    for number in range(partners):
        app.record_adjustment(
            f"p{number}",
            RecordAdjustment(
                amount=Money(-(number + 1) * 111, "USD"),
                effective_date=date(2024, 6, 30),
                reason="fee",
            ),
            f"{prefix}adj-{number}",
            CONTEXT,
        )
    return app.head_position()


async def dump_projection(
    conn: asyncpg.Connection, schema: str
) -> dict[str, list[tuple[Any, ...]]]:
    """Return every table of ``schema`` ordered by primary key; the checkpoint as its position."""
    tables = await conn.fetch(
        """
        SELECT c.relname AS table_name,
               array_agg(a.attname ORDER BY k.ordinality) AS key_columns
          FROM pg_index i
          JOIN pg_class c ON c.oid = i.indrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ordinality)
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
         WHERE n.nspname = $1 AND i.indisprimary
         GROUP BY c.relname
         ORDER BY c.relname
        """,
        schema,
    )
    dump: dict[str, list[tuple[Any, ...]]] = {}
    for table in tables:
        name = table["table_name"]
        if name == "checkpoint":
            rows = await conn.fetch(f'SELECT position FROM "{schema}".checkpoint')
        else:
            order = ", ".join(f'"{column}"' for column in table["key_columns"])
            rows = await conn.fetch(f'SELECT * FROM "{schema}"."{name}" ORDER BY {order}')
        dump[name] = [tuple(row) for row in rows]
    return dump


async def dump_all(database: DatabaseUrl) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    conn = await asyncpg.connect(database.url)
    try:
        return {name: await dump_projection(conn, name) for name in PROJECTION_NAMES}
    finally:
        await conn.close()


async def leftover_schemas(database: DatabaseUrl) -> list[str]:
    conn = await asyncpg.connect(database.url)
    try:
        rows = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE '%\\_\\_rebuild' "
            "OR nspname LIKE '%\\_\\_old' ORDER BY nspname"
        )
    finally:
        await conn.close()
    return [row["nspname"] for row in rows]


async def test_rebuild_matches_and_readers_see_no_errors(services: Services) -> None:
    head = record_sample(services.app)
    await catch_up(services.database)
    before = await dump_all(services.database)
    pool = await asyncpg.create_pool(services.database.url, min_size=2, max_size=2)
    errors: list[BaseException] = []
    reads = 0
    stop_reading = asyncio.Event()

    async def read_in_loop() -> None:
        nonlocal reads
        while not stop_reading.is_set():
            for query in READER_QUERIES:
                try:
                    await pool.fetch(query)
                    reads += 1
                except (asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                    errors.append(error)
            await asyncio.sleep(0)

    readers = [asyncio.create_task(read_in_loop()) for _ in range(2)]
    try:
        progress: list[tuple[int, int]] = []
        applied = {}
        for name in PROJECTION_NAMES:
            reads_before = reads
            applied[name] = await rebuild_projection(
                services.database, name, progress=lambda done, total: progress.append((done, total))
            )
            assert reads > reads_before
    finally:
        stop_reading.set()
        await asyncio.gather(*readers)
        await pool.close()

    assert errors == []
    assert applied == {name: head for name in PROJECTION_NAMES}
    assert progress[-1] == (head, head)
    assert all(done <= total for done, total in progress)
    after = await dump_all(services.database)
    for name in PROJECTION_NAMES:
        assert after[name] == before[name], name
    assert sum(len(rows) for rows in after["statements"].values()) > 100
    assert await leftover_schemas(services.database) == []
    assert pending_projection_changes(services.database) == []


async def test_rebuild_with_live_projector_and_writes(
    services: Services, settings: Settings
) -> None:
    app = services.app
    record_sample(app, deals=30)
    stop = asyncio.Event()
    projector = asyncio.create_task(run_projector(services.database, settings, stop=stop))
    observer = await asyncpg.connect(services.database.url)
    try:
        assert await wait_for_position(
            observer, app.head_position(), names=PROJECTION_NAMES, timeout=PATIENCE
        )

        # Commands keep arriving while every projection is rebuilt.
        writing = asyncio.create_task(
            asyncio.to_thread(record_sample, app, prefix="during-", deals=40)
        )
        for name in PROJECTION_NAMES:
            await rebuild_projection(services.database, name)
        await writing
        head = record_sample(app, prefix="after-", deals=10)

        assert await wait_for_position(observer, head, names=PROJECTION_NAMES, timeout=PATIENCE)
        assert not projector.done()
    finally:
        stop.set()
        await asyncio.wait_for(projector, PATIENCE)
        await observer.close()

    # The live tables must equal a replay from zero: nothing skipped or doubled.
    live = await dump_all(services.database)
    for name in PROJECTION_NAMES:
        await rebuild_projection(services.database, name)
    replayed = await dump_all(services.database)
    for name in PROJECTION_NAMES:
        assert live[name] == replayed[name], name
    lines = live["statements"]["statement_lines"]
    assert len(lines) == len({line[0] for line in lines})
    assert len(lines) == (30 + 40 + 10) + (5 + 6 + 2) + 3 * 4


async def test_rebuild_after_failure_starts_over(services: Services) -> None:
    record_sample(services.app, deals=10)
    await catch_up(services.database)
    before = await dump_all(services.database)
    conn = await asyncpg.connect(services.database.url)
    try:
        # A rebuild that died before its swap leaves its schema behind.
        await conn.execute('CREATE SCHEMA "journal__rebuild"')
        await conn.execute('CREATE TABLE "journal__rebuild".junk (x int)')

        await rebuild_projection(services.database, "journal")
    finally:
        await conn.close()

    assert (await dump_all(services.database)) == before
    assert await leftover_schemas(services.database) == []


async def test_rebuild_of_unknown_projection_rejected(database: DatabaseUrl) -> None:
    with pytest.raises(InvalidInputError, match="unknown projection 'balances'"):
        await rebuild_projection(database, "balances")


async def test_second_rebuild_rejected_while_first_runs(services: Services) -> None:
    record_sample(services.app, deals=10)
    await catch_up(services.database)
    holder = await asyncpg.connect(services.database.url)
    observer = await asyncpg.connect(services.database.url)
    try:
        # Hold the live checkpoint row, so the first rebuild waits at its swap.
        holding = holder.transaction()
        await holding.start()
        await holder.execute("SELECT position FROM history.checkpoint FOR UPDATE")
        first = asyncio.create_task(rebuild_projection(services.database, "history"))
        assert await wait_for_rebuild_to_block(observer)

        with pytest.raises(ConflictError, match="rebuild of projection history is already running"):
            await rebuild_projection(services.database, "history")

        await holding.rollback()
        assert await asyncio.wait_for(first, PATIENCE) == services.app.head_position()
    finally:
        await holder.close()
        await observer.close()
    assert await leftover_schemas(services.database) == []


async def wait_for_rebuild_to_block(conn: asyncpg.Connection) -> bool:
    # pg_stat_activity is read once per transaction, so ``conn`` must not be
    # inside one.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PATIENCE
    while loop.time() < deadline:
        blocked = await conn.fetchval(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'ledger-rebuild:history' AND wait_event_type = 'Lock'"
        )
        if blocked:
            return True
        await asyncio.sleep(0.02)
    return False
