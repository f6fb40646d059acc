"""The projector against a real PostgreSQL: rows, ordering, failures, locks and notifications."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import psycopg
import pytest
from eventsourcing.utils import get_topic

from ledger.application.commands import (
    ChangeTier,
    CommandContext,
    EnrollPartner,
    ProgramSpec,
    RecordActivity,
    RecordAdjustment,
    ReverseEarning,
)
from ledger.application.service import LedgerApplication
from ledger.bootstrap import Services
from ledger.domain.adjustment import Adjustment
from ledger.domain.ids import partner_id_uuid, program_id_uuid
from ledger.domain.money import Money, format_minor
from ledger.domain.partner import Partner
from ledger.domain.program import Program
from ledger.domain.rules import Rule, RuleSet
from ledger.errors import InvalidInputError, StoreUnavailableError
from ledger.infrastructure.database import DatabaseUrl
from ledger.infrastructure.transcoder import MsgspecTranscoder
from ledger.projector import (
    PROJECTION_NAMES,
    ProjectionFailedError,
    catch_up,
    projection_status,
    run_projector,
    wait_for_position,
)
from ledger.projector.events import SharedReads
from ledger.queries import fetch_balance, fetch_statement
from ledger.settings import Settings

CONTEXT = CommandContext(actor="tester", correlation_id="corr-projector")
# Generous bound for anything that should happen within milliseconds; only
# reached when the behaviour under test is broken.
PATIENCE = 30.0

RULE_SET_1 = RuleSet(
    version=1,
    effective_from=date(2024, 1, 1),
    rules=(
        Rule(id="deal-rate", activity_type="deal_won", rate=Decimal("0.045")),
        Rule(id="demo-fixed", activity_type="demo", fixed="25.00"),
    ),
)
RULE_SET_2 = RuleSet(
    version=2,
    effective_from=date(2024, 6, 1),
    rules=(Rule(id="deal-rate-2", activity_type="deal_won", rate=Decimal("0.05")),),
)


def publish_program(app: LedgerApplication, *rule_sets: RuleSet) -> None:
    spec = ProgramSpec(
        id="channel", name="Channel", currency="USD", rule_sets=list(rule_sets or [RULE_SET_1])
    )
    app.publish_program(spec, CONTEXT)


def enroll(app: LedgerApplication, partner_id: str) -> None:
    app.enroll_partner(
        "channel",
        EnrollPartner(
            partner_id=partner_id, display_name=partner_id.upper(), effective_date=date(2024, 1, 1)
        ),
        CONTEXT,
    )


def earn(
    app: LedgerApplication,
    partner_id: str,
    source_ref: str,
    base: str | None = "100.00",
    *,
    activity_type: str = "deal_won",
    on: date = date(2024, 2, 10),
) -> int:
    outcome = app.record_activity(
        "channel",
        RecordActivity(
            partner_id=partner_id,
            activity_type=activity_type,
            source_ref=source_ref,
            effective_date=on,
            base_amount=None if base is None else Money.parse(base, "USD"),
        ),
        CONTEXT,
    )
    return outcome.position


def adjust(app: LedgerApplication, partner_id: str, amount: str, key: str) -> int:
    outcome = app.record_adjustment(
        partner_id,
        RecordAdjustment(
            amount=Money.parse(amount, "USD"), effective_date=date(2024, 3, 5), reason="goodwill"
        ),
        key,
        CONTEXT,
    )
    return outcome.position


async def fetch_all(database: DatabaseUrl, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database.url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        return rows
    finally:
        await conn.close()


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = PATIENCE) -> bool:
    """Poll ``check`` every 20 ms until it returns True or ``timeout`` passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.02)
    return await check()


@asynccontextmanager
async def running_projector(
    database: DatabaseUrl, settings: Settings, names: tuple[str, ...] = PROJECTION_NAMES
) -> AsyncIterator[tuple[asyncio.Task[None], asyncio.Event]]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_projector(database, settings, names=names, stop=stop))
    try:
        yield task, stop
    finally:
        stop.set()
        await asyncio.wait_for(task, PATIENCE)


async def backend_pids(conn: asyncpg.Connection, application_name: str) -> list[int]:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = $1",
        application_name,
    )
    return [row["pid"] for row in rows]


async def waits_on_lock(conn: asyncpg.Connection, application_name: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = $1 AND wait_event_type = 'Lock'",
            application_name,
        )
    )


# 1. Rows match the events -------------------------------------------------


async def test_projected_rows_match_events(services: Services) -> None:
    app = services.app
    publish_program(app)
    enroll(app, "acme")
    enroll(app, "globex")
    earn(app, "acme", "deal-1", "302.11")
    earn(app, "acme", "demo-1", None, activity_type="demo")
    earn(app, "globex", "deal-2", "1000.00", on=date(2024, 3, 3))
    app.reverse_earning(
        "acme",
        ReverseEarning(
            source_ref="deal-1",
            effective_date=date(2024, 3, 1),
            reason="partial refund",
            base_amount=Money.parse("100.00", "USD"),
        ),
        "rev-1",
        CONTEXT,
    )
    app.reverse_earning(
        "acme",
        ReverseEarning(source_ref="demo-1", effective_date=date(2024, 3, 2), reason="no show"),
        "rev-2",
        CONTEXT,
    )
    app.reverse_earning(
        "globex",
        ReverseEarning(
            source_ref="deal-2",
            effective_date=date(2024, 3, 4),
            reason="discount",
            amount=Money.parse("10.00", "USD"),
        ),
        "rev-3",
        CONTEXT,
    )
    adjust(app, "acme", "7.50", "adj-1")
    adjust(app, "acme", "-2.25", "adj-2")
    app.change_tier(
        "acme",
        ChangeTier(tier="gold", effective_date=date(2024, 3, 6), reason="volume"),
        "tier-1",
        CONTEXT,
    )
    # A later rule set is published in its own save, so it appends to an existing row.
    publish_program(app, RULE_SET_1, RULE_SET_2)
    head = app.head_position()

    # A tiny batch size makes reversals and tier changes find their stream's
    # creation event in an earlier batch.
    applied = await catch_up(services.database, batch_size=3)

    assert applied == head
    lines = await fetch_all(
        services.database,
        "SELECT partner_id, kind, source_ref, amount_minor, effective_date, explanation "
        "FROM statements.statement_lines ORDER BY position",
    )
    assert [(r["partner_id"], r["kind"], r["source_ref"], r["amount_minor"]) for r in lines] == [
        ("acme", "earning", "deal-1", 1359),
        ("acme", "earning", "demo-1", 2500),
        ("globex", "earning", "deal-2", 4500),
        ("acme", "reversal", "deal-1", -450),
        ("acme", "reversal", "demo-1", -2500),
        ("globex", "reversal", "deal-2", -1000),
        ("acme", "adjustment", "adj-1", 750),
        ("acme", "adjustment", "adj-2", -225),
    ]
    explanations = [msgspec.json.decode(r["explanation"]) for r in lines]
    assert explanations[0] == {
        "activity_type": "deal_won",
        "attributes": {},
        "rule_set_version": 1,
        "rule_id": "deal-rate",
        "base": "302.11",
        "rate": "0.045",
        "fixed": None,
        "unrounded": "13.59495",
        "rounding": "half-up",
        "actor": "tester",
    }
    assert explanations[1]["fixed"] == "25.00"
    assert explanations[1]["rate"] is None
    assert explanations[1]["unrounded"] == "25.00"
    assert explanations[3] == {
        "reason": "partial refund",
        "actor": "tester",
        "idempotency_key": "rev-1",
        "base": "100.00",
        "rate": "0.045",
        "unrounded": "4.50000",
        "rounding": "half-up",
        "rule_set_version": 1,
        "rule_id": "deal-rate",
    }
    assert explanations[4]["base"] is None
    assert explanations[4]["rate"] is None
    assert explanations[6] == {"reason": "goodwill", "actor": "tester", "idempotency_key": "adj-1"}

    balances = await fetch_all(
        services.database,
        "SELECT partner_id, currency, earned_minor, reversed_minor, adjusted_minor, "
        "balance_minor, line_count FROM statements.balances ORDER BY partner_id",
    )
    assert [tuple(r) for r in balances] == [
        ("acme", "USD", 3859, 2950, 525, 1434, 6),
        ("globex", "USD", 4500, 1000, 0, 3500, 2),
    ]
    periods = await fetch_all(
        services.database,
        "SELECT partner_id, period, amount_minor FROM statements.period_totals "
        "ORDER BY partner_id, period",
    )
    assert [tuple(r) for r in periods] == [
        ("acme", date(2024, 2, 1), 3859),
        ("acme", date(2024, 3, 1), -2425),
        ("globex", date(2024, 3, 1), 3500),
    ]
    partners = await fetch_all(
        services.database, "SELECT partner_id, tier FROM statements.partners ORDER BY partner_id"
    )
    assert [tuple(r) for r in partners] == [("acme", "gold"), ("globex", "registered")]
    [program] = await fetch_all(services.database, "SELECT * FROM statements.programs")
    assert [rule_set["version"] for rule_set in msgspec.json.decode(program["rule_sets"])] == [1, 2]
    assert program["currency"] == "USD"

    entries = await fetch_all(
        services.database,
        "SELECT e.position, e.kind, e.partner_id, e.source_ref, "
        "array_agg(p.account || ' ' || p.amount_minor ORDER BY p.leg) AS legs "
        "FROM journal.entries e JOIN journal.postings p USING (position) "
        "GROUP BY e.position ORDER BY e.position",
    )
    assert [r["legs"] for r in entries] == [
        ["reward_expense:channel 1359", "partner_payable:acme -1359"],
        ["reward_expense:channel 2500", "partner_payable:acme -2500"],
        ["reward_expense:channel 4500", "partner_payable:globex -4500"],
        ["reward_expense:channel -450", "partner_payable:acme 450"],
        ["reward_expense:channel -2500", "partner_payable:acme 2500"],
        ["reward_expense:channel -1000", "partner_payable:globex 1000"],
        ["reward_expense:channel 750", "partner_payable:acme -750"],
        ["reward_expense:channel -225", "partner_payable:acme 225"],
    ]
    assert [r["position"] for r in entries] == [
        r["position"]
        for r in await fetch_all(
            services.database, "SELECT position FROM statements.statement_lines ORDER BY position"
        )
    ]

    history = await fetch_all(
        services.database,
        "SELECT event_type, source_ref, data FROM history.partner_events "
        "WHERE partner_id = 'acme' ORDER BY position",
    )
    assert [r["event_type"] for r in history] == [
        "Partner.Enrolled",
        "Earning.Earned",
        "Earning.Earned",
        "Earning.Reversed",
        "Earning.Reversed",
        "Adjustment.Recorded",
        "Adjustment.Recorded",
        "Partner.TierChanged",
    ]
    assert history[3]["source_ref"] == "deal-1"
    data = [msgspec.json.decode(r["data"]) for r in history]

    def usd(amount: str) -> dict[str, str]:
        return {"amount": amount, "currency": "USD"}

    assert data[1] == {
        "program_id": "channel",
        "partner_id": "acme",
        "activity_type": "deal_won",
        "source_ref": "deal-1",
        "effective_date": "2024-02-10",
        "attributes": {},
        "base": usd("302.11"),
        "rule_set_version": 1,
        "rule_id": "deal-rate",
        "rate": "0.045",
        "fixed": None,
        "unrounded": "13.59495",
        "rounding": "half-up",
        "amount": usd("13.59"),
        "actor": "tester",
        "correlation_id": "corr-projector",
    }
    assert (data[2]["base"], data[2]["fixed"], data[2]["amount"]) == (
        None,
        usd("25.00"),
        usd("25.00"),
    )
    assert data[2]["unrounded"] == "25.00"
    # A reversal's amount is its signed effect on the balance, while base and
    # unrounded describe the part clawed back and stay positive.
    assert data[3] == {
        "amount": usd("-4.50"),
        "base": usd("100.00"),
        "unrounded": "4.50000",
        "effective_date": "2024-03-01",
        "reason": "partial refund",
        "actor": "tester",
        "idempotency_key": "rev-1",
        "correlation_id": "corr-projector",
    }
    assert (data[4]["amount"], data[4]["base"], data[4]["unrounded"]) == (
        usd("-25.00"),
        None,
        None,
    )
    assert data[5]["amount"] == usd("7.50")
    assert data[6]["amount"] == usd("-2.25")
    assert data[6]["program_id"] == "channel"
    for row in data:
        assert "currency" not in row
        assert not [key for key in row if key.endswith("_minor")], row
    assert data[7]["to_tier"] == "gold"
    assert data[0]["display_name"] == "ACME"

    conn = await asyncpg.connect(services.database.url)
    try:
        report = await projection_status(conn)
    finally:
        await conn.close()
    assert [(s.name, s.position, s.lag) for s in report] == [
        (name, head, 0) for name in PROJECTION_NAMES
    ]


async def test_catch_up_on_empty_store(database: DatabaseUrl) -> None:
    applied = await catch_up(database)

    assert applied == 0
    conn = await asyncpg.connect(database.url)
    try:
        assert await wait_for_position(conn, 0, names=PROJECTION_NAMES, timeout=0)
        assert not await wait_for_position(conn, 1, names=["journal"], timeout=0.05)
    finally:
        await conn.close()


async def test_version_1_events_are_upcast(services: Services) -> None:
    app = services.app
    publish_program(app)
    enroll(app, "acme")
    transcoder = MsgspecTranscoder()
    # A TierChanged and a Program.Created as version 1 of their classes stored
    # them: no reason, no tiers, and no class_version key in the state.
    tier_changed_v1 = {
        "timestamp": datetime(2024, 5, 1, 9, 30, tzinfo=UTC),
        "from_tier": "registered",
        "to_tier": "gold",
        "effective_date": date(2024, 5, 1),
        "actor": "tester",
        "idempotency_key": "tier-1",
        "correlation_id": "corr-v1",
    }
    program_created_v1 = {
        "timestamp": datetime(2024, 1, 1, 8, 0, tzinfo=UTC),
        "originator_topic": get_topic(Program),
        "program_id": "legacy-program",
        "name": "Legacy",
        "currency": "EUR",
        "time_zone": "UTC",
        "rounding": "half-even",
        "actor": "tester",
        "correlation_id": "corr-v1",
    }
    with psycopg.connect(services.database.url) as conn:
        for stream, version, event_class, state in (
            (partner_id_uuid("acme"), 2, Partner.TierChanged, tier_changed_v1),
            (program_id_uuid("legacy-program"), 1, Program.Created, program_created_v1),
        ):
            conn.execute(
                "INSERT INTO ledger_events (originator_id, originator_version, topic, state) "
                "VALUES (%s, %s, %s, %s)",
                (stream, version, get_topic(event_class), transcoder.encode(state)),
            )

    await catch_up(services.database)

    [partner] = await fetch_all(services.database, "SELECT tier FROM statements.partners")
    assert partner["tier"] == "gold"
    [program] = await fetch_all(
        services.database,
        "SELECT tiers, currency FROM statements.programs WHERE program_id = 'legacy-program'",
    )
    assert msgspec.json.decode(program["tiers"]) == []
    assert program["currency"] == "EUR"
    [history] = await fetch_all(
        services.database,
        "SELECT data FROM history.partner_events WHERE event_type = 'Partner.TierChanged'",
    )
    data = msgspec.json.decode(history["data"])
    assert data["reason"] == ""
    assert data["to_tier"] == "gold"


async def test_damaged_event_fails_batch_naming_it(services: Services) -> None:
    app = services.app
    publish_program(app)
    enroll(app, "acme")
    stream = partner_id_uuid("damaged")
    with psycopg.connect(services.database.url) as conn:
        conn.execute(
            "INSERT INTO ledger_events (originator_id, originator_version, topic, state) "
            "VALUES (%s, 1, %s, %s)",
            (stream, get_topic(Partner.Enrolled), b"\xc1"),
        )

    with pytest.raises(ProjectionFailedError) as failure:
        await catch_up(services.database, names=["history"])

    assert failure.value.position == 0
    assert f"version 1 of stream {stream}" in str(failure.value)
    assert await fetch_all(services.database, "SELECT * FROM history.partner_events") == []


async def test_only_full_reads_are_shared(services: Services) -> None:
    app = services.app
    publish_program(app)
    enroll(app, "acme")
    head = earn(app, "acme", "deal-1")
    shared = SharedReads()
    first_conn = await asyncpg.connect(services.database.url)
    second_conn = await asyncpg.connect(services.database.url)
    try:
        # Two projections at position 0 ask for the same full read.
        first = await shared.read(first_conn, 0, 2)
        second = await shared.read(second_conn, 0, 2)

        # A read that stops at the head is not reused once the head moves.
        short = await shared.read(first_conn, head - 1, 10)
        newer = earn(app, "acme", "deal-2")
        later = await shared.read(second_conn, head - 1, 10)
    finally:
        await first_conn.close()
        await second_conn.close()

    assert second is first
    assert [row["notification_id"] for row in first.rows] == [1, 2]
    assert [row["notification_id"] for row in short.rows] == [head]
    assert [row["notification_id"] for row in later.rows] == [head, newer]


# 2. An event committed late is not skipped ---------------------------------


def _insert_and_hold(
    database: DatabaseUrl,
    stored: Any,
    inserted: threading.Event,
    release: threading.Event,
    position: list[int],
) -> None:
    # The same steps as the eventsourcing recorder: table lock, NOTIFY, insert,
    # then the commit is held until the test releases it.
    with psycopg.connect(database.url) as conn:
        conn.execute("LOCK TABLE ledger_events IN EXCLUSIVE MODE")
        conn.execute("NOTIFY ledger_events")
        row = conn.execute(
            "INSERT INTO ledger_events (originator_id, originator_version, topic, state) "
            "VALUES (%s, %s, %s, %s) RETURNING notification_id",
            (stored.originator_id, stored.originator_version, stored.topic, stored.state),
        ).fetchone()
        assert row is not None
        position.append(row[0])
        inserted.set()
        release.wait(PATIENCE)
        conn.commit()


async def test_event_committed_late_is_projected(services: Services, settings: Settings) -> None:
    app = services.app
    publish_program(app)
    enroll(app, "acme")
    earn(app, "acme", "deal-1")
    head_before = app.head_position()
    held = Adjustment.record(
        partner_id="acme",
        program_id="channel",
        program_currency="USD",
        amount=Money.parse("3.00", "USD"),
        effective_date=date(2024, 3, 1),
        reason="held",
        actor="tester",
        idempotency_key="held-1",
        source_ref="held-1",
        correlation_id="corr-held",
    )
    stored = app.mapper.to_stored_event(held.collect_events()[0])
    inserted, release = threading.Event(), threading.Event()
    held_position: list[int] = []
    writer = threading.Thread(
        target=_insert_and_hold,
        args=(services.database, stored, inserted, release, held_position),
    )
    observer = await asyncpg.connect(services.database.url)
    try:
        async with running_projector(services.database, settings):
            assert await wait_for_position(
                observer, head_before, names=PROJECTION_NAMES, timeout=PATIENCE
            )

            # Transaction A holds position head+1 uncommitted; B is a later
            # command that must wait behind A's table lock.
            writer.start()
            assert await asyncio.to_thread(inserted.wait, PATIENCE)
            later = asyncio.create_task(asyncio.to_thread(adjust, app, "acme", "4.00", "later-1"))
            assert await wait_until(
                lambda: observer.fetchval(
                    "SELECT count(*) > 0 FROM pg_locks "
                    "WHERE relation = 'ledger_events'::regclass AND NOT granted"
                )
            )
            status = await projection_status(observer)
            assert [s.position for s in status] == [head_before] * len(PROJECTION_NAMES)

            release.set()
            later_position = await asyncio.wait_for(later, PATIENCE)
            await asyncio.to_thread(writer.join, PATIENCE)

            assert held_position == [head_before + 1]
            assert later_position > held_position[0]
            assert await wait_for_position(
                observer, later_position, names=PROJECTION_NAMES, timeout=PATIENCE
            )
        refs = await observer.fetch(
            "SELECT source_ref FROM statements.statement_lines WHERE kind = 'adjustment' "
            "ORDER BY position"
        )
        assert [r["source_ref"] for r in refs] == ["held-1", "later-1"]
        entries = await observer.fetchval(
            "SELECT count(*) FROM journal.entries WHERE kind = 'adjustment'"
        )
        assert entries == 2
        history = await observer.fetchval(
            "SELECT count(*) FROM history.partner_events WHERE event_type = 'Adjustment.Recorded'"
        )
        assert history == 2
    finally:
        release.set()
        await observer.close()


# 3. A failed batch leaves no trace, and the retry applies each event once ----


async def _statement_state(conn: asyncpg.Connection) -> tuple[Any, ...]:
    return (
        await conn.fetchval("SELECT position FROM statements.checkpoint"),
        await conn.fetchval("SELECT count(*) FROM statements.statement_lines"),
        await conn.fetchval("SELECT count(*) FROM statements.partners"),
        tuple(await conn.fetch("SELECT * FROM statements.balances ORDER BY partner_id")),
        tuple(
            await conn.fetch("SELECT * FROM statements.period_totals ORDER BY partner_id, period")
        ),
    )


async def test_failed_batch_rolls_back_whole(services: Services) -> None:
    app = services.app
    publish_program(app)
    enroll(app, "acme")
    earn(app, "acme", "deal-1")
    earn(app, "acme", "deal-2")
    await catch_up(services.database)
    conn = await asyncpg.connect(services.database.url)
    try:
        # A fault inside the database, on the third line of the next batch.
        await conn.execute(
            """
            CREATE FUNCTION public.reject_poisoned_line() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.source_ref = 'poison' THEN
                    RAISE EXCEPTION 'line % is poisoned', NEW.position;
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER reject_poisoned_line BEFORE INSERT ON statements.statement_lines
                FOR EACH ROW EXECUTE FUNCTION public.reject_poisoned_line();
            """
        )
        enroll(app, "globex")
        earn(app, "acme", "deal-3")
        earn(app, "globex", "deal-4")
        earn(app, "acme", "poison")
        earn(app, "globex", "deal-5")
        before = await _statement_state(conn)

        with pytest.raises(ProjectionFailedError) as failure:
            await catch_up(services.database)

        assert failure.value.projection == "statements"
        assert failure.value.position == before[0]
        assert "poisoned" in str(failure.value)
        assert await _statement_state(conn) == before
        # The other projections are unaffected by the statements fault.
        assert await conn.fetchval("SELECT position FROM journal.checkpoint") == app.head_position()

        await conn.execute("DROP TRIGGER reject_poisoned_line ON statements.statement_lines")
        applied = await catch_up(services.database)

        assert applied == app.head_position() - before[0]
        rows = await conn.fetch(
            "SELECT source_ref, count(*) AS n FROM statements.statement_lines GROUP BY source_ref"
        )
        assert {r["source_ref"]: r["n"] for r in rows} == {
            "deal-1": 1,
            "deal-2": 1,
            "deal-3": 1,
            "deal-4": 1,
            "poison": 1,
            "deal-5": 1,
        }
        balances = await conn.fetch(
            "SELECT partner_id, earned_minor, balance_minor, line_count "
            "FROM statements.balances ORDER BY partner_id"
        )
        assert [tuple(r) for r in balances] == [("acme", 1800, 1800, 4), ("globex", 900, 900, 2)]
        assert await conn.fetchval("SELECT count(*) FROM statements.partners") == 2
    finally:
        await conn.close()


async def test_killed_connection_mid_batch_rolls_back(services: Services) -> None:
    app = services.app
    publish_program(app)
    enroll(app, "acme")
    earn(app, "acme", "deal-1")
    await catch_up(services.database)
    earn(app, "acme", "deal-2")
    earn(app, "acme", "deal-3")
    conn = await asyncpg.connect(services.database.url)
    blocker = await asyncpg.connect(services.database.url)
    try:
        before = await _statement_state(conn)
        # Hold the balances table, so the batch stops after writing its lines.
        blocker_transaction = blocker.transaction()
        await blocker_transaction.start()
        await blocker.execute("LOCK TABLE statements.balances IN ACCESS EXCLUSIVE MODE")
        projecting = asyncio.create_task(catch_up(services.database, names=["statements"]))
        assert await wait_until(lambda: waits_on_lock(conn, "ledger-catch-up:statements"))

        [pid] = await backend_pids(conn, "ledger-catch-up:statements")
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        await blocker_transaction.rollback()

        with pytest.raises(StoreUnavailableError):
            await asyncio.wait_for(projecting, PATIENCE)
        assert await _statement_state(conn) == before

        applied = await catch_up(services.database, names=["statements"])

        assert applied == app.head_position() - before[0]
        refs = await conn.fetch(
            "SELECT source_ref FROM statements.statement_lines ORDER BY position"
        )
        assert [r["source_ref"] for r in refs] == ["deal-1", "deal-2", "deal-3"]
        assert await conn.fetchval("SELECT line_count FROM statements.balances") == 3
    finally:
        await blocker.close()
        await conn.close()


async def test_runner_retries_failed_batch(services: Services, settings: Settings) -> None:
    app = services.app
    publish_program(app)
    enroll(app, "acme")
    conn = await asyncpg.connect(services.database.url)
    try:
        await conn.execute(
            """
            CREATE FUNCTION public.reject_all_entries() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'entries are rejected for this test';
            END $$;
            CREATE TRIGGER reject_all_entries BEFORE INSERT ON journal.entries
                FOR EACH ROW EXECUTE FUNCTION public.reject_all_entries();
            """
        )
        async with running_projector(services.database, settings) as (task, _):
            position = earn(app, "acme", "deal-1")
            assert await wait_for_position(conn, position, names=["history"], timeout=PATIENCE)
            checkpoint = await conn.fetchval("SELECT position FROM journal.checkpoint")
            assert checkpoint < position

            await conn.execute("DROP TRIGGER reject_all_entries ON journal.entries")

            assert await wait_for_position(conn, position, names=["journal"], timeout=PATIENCE)
            assert not task.done()
        assert await conn.fetchval("SELECT count(*) FROM journal.entries") == 1
    finally:
        await conn.close()


async def test_zero_batch_size_rejected(database: DatabaseUrl, settings: Settings) -> None:
    no_batch = msgspec.structs.replace(settings, projector_batch_size=0)

    with pytest.raises(InvalidInputError, match="LEDGER_PROJECTOR_BATCH_SIZE is 0"):
        await run_projector(database, no_batch)
    with pytest.raises(InvalidInputError, match="batch_size is 0"):
        await catch_up(database, batch_size=0)


# 4. One runner per projection ----------------------------------------------


async def test_second_runner_waits_for_lock(services: Services, settings: Settings) -> None:
    app = services.app
    publish_program(app)
    enroll(app, "acme")
    earn(app, "acme", "deal-1")
    observer = await asyncpg.connect(services.database.url)
    blocker = await asyncpg.connect(services.database.url)
    first_stop, second_stop = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(
        run_projector(services.database, settings, names=["history"], stop=first_stop)
    )
    second: asyncio.Task[None] | None = None
    try:
        assert await wait_for_position(
            observer, app.head_position(), names=["history"], timeout=PATIENCE
        )
        checkpoint = app.head_position()

        # Freeze the first runner inside a batch, holding its projection lock.
        blocker_transaction = blocker.transaction()
        await blocker_transaction.start()
        await blocker.execute("LOCK TABLE history.partner_events IN ACCESS EXCLUSIVE MODE")
        earn(app, "acme", "deal-2")
        assert await wait_until(lambda: waits_on_lock(observer, "ledger-projector:history"))

        second = asyncio.create_task(
            run_projector(services.database, settings, names=["history"], stop=second_stop)
        )
        assert await wait_until(
            lambda: observer.fetchval(
                "SELECT count(*) > 0 FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()"
            )
        )
        assert await observer.fetchval("SELECT position FROM history.checkpoint") == checkpoint
        assert not second.done()

        # Stop the first runner; it finishes its batch and hands over the lock.
        first_stop.set()
        await blocker_transaction.rollback()
        await asyncio.wait_for(first, PATIENCE)
        last = earn(app, "acme", "deal-3")

        assert await wait_for_position(observer, last, names=["history"], timeout=PATIENCE)
        refs = await observer.fetch(
            "SELECT source_ref, count(*) AS n FROM history.partner_events "
            "WHERE event_type = 'Earning.Earned' GROUP BY source_ref ORDER BY source_ref"
        )
        assert [tuple(r) for r in refs] == [("deal-1", 1), ("deal-2", 1), ("deal-3", 1)]
        assert not second.done()
    finally:
        first_stop.set()
        second_stop.set()
        await blocker.close()
        await asyncio.wait_for(first, PATIENCE)
        if second is not None:
            await asyncio.wait_for(second, PATIENCE)
        await observer.close()


# 5. Notifications, and the fallback when the listener dies -----------------


async def _listening_pid(conn: asyncpg.Connection, exclude: int | None = None) -> int | None:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'ledger-projector:listener' AND state = 'idle' "
        "AND (query LIKE 'LISTEN%' OR query = 'SELECT 1')"
    )
    pids = [row["pid"] for row in rows if row["pid"] != exclude]
    return pids[0] if pids else None


async def test_notification_wakes_projector(services: Services, settings: Settings) -> None:
    app = services.app
    publish_program(app)
    enroll(app, "acme")
    # A poll interval far beyond the waits below: only a notification can
    # bring the new event in time.
    slow_poll = msgspec.structs.replace(settings, projector_poll_seconds=300.0)
    observer = await asyncpg.connect(services.database.url)
    try:
        async with running_projector(services.database, slow_poll):
            assert await wait_until(lambda: _has_listener(observer))
            assert await wait_for_position(
                observer, app.head_position(), names=PROJECTION_NAMES, timeout=PATIENCE
            )

            position = earn(app, "acme", "deal-1")

            assert await wait_for_position(
                observer, position, names=PROJECTION_NAMES, timeout=PATIENCE
            )
    finally:
        await observer.close()


async def _has_listener(conn: asyncpg.Connection, exclude: int | None = None) -> bool:
    return await _listening_pid(conn, exclude) is not None


async def test_projector_survives_listener_loss(services: Services, settings: Settings) -> None:
    app = services.app
    publish_program(app)
    enroll(app, "acme")
    slow_poll = msgspec.structs.replace(settings, projector_poll_seconds=300.0)
    observer = await asyncpg.connect(services.database.url)
    try:
        async with running_projector(services.database, slow_poll) as (task, _):
            assert await wait_until(lambda: _has_listener(observer))
            killed = await _listening_pid(observer)
            assert killed is not None

            assert await observer.fetchval("SELECT pg_terminate_backend($1)", killed)
            position = earn(app, "acme", "deal-1")

            # No connection listened when the event was written. The listener
            # reconnects and then wakes every projection to check the store.
            assert await wait_for_position(
                observer, position, names=PROJECTION_NAMES, timeout=PATIENCE
            )
            assert await wait_until(lambda: _has_listener(observer, exclude=killed))
            later = earn(app, "acme", "deal-2")
            assert await wait_for_position(
                observer, later, names=PROJECTION_NAMES, timeout=PATIENCE
            )
            assert not task.done()
    finally:
        await observer.close()


async def test_polling_projects_while_listener_down(services: Services, settings: Settings) -> None:
    app = services.app
    publish_program(app)
    enroll(app, "acme")
    fast_poll = msgspec.structs.replace(settings, projector_poll_seconds=0.1)
    observer = await asyncpg.connect(services.database.url)
    killer_conn = await asyncpg.connect(services.database.url)
    stop_killing = asyncio.Event()

    async def keep_listener_down() -> None:
        while not stop_killing.is_set():
            await killer_conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() "
                "AND application_name = 'ledger-projector:listener'"
            )
            await asyncio.sleep(0.01)

    try:
        async with running_projector(services.database, fast_poll) as (task, _):
            assert await wait_for_position(
                observer, app.head_position(), names=PROJECTION_NAMES, timeout=PATIENCE
            )
            # NOTE: a listener may reconnect for a moment between kills, so this
            # shows that events arrive while the listener keeps failing, not
            # that the poll alone delivered them.
            killer = asyncio.create_task(keep_listener_down())
            positions = [earn(app, "acme", f"deal-{number}") for number in range(3)]

            assert await wait_for_position(
                observer, positions[-1], names=PROJECTION_NAMES, timeout=PATIENCE
            )
            stop_killing.set()
            await killer
            assert not task.done()
    finally:
        stop_killing.set()
        await killer_conn.close()
        await observer.close()


async def test_run_projector_stops_on_event(database: DatabaseUrl, settings: Settings) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(run_projector(database, settings, stop=stop))
    observer = await asyncpg.connect(database.url)
    try:
        assert await wait_until(
            lambda: observer.fetchval(
                "SELECT count(*) = 3 FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE 'ledger-projector:%' "
                "AND application_name <> 'ledger-projector:listener'"
            )
        )

        stop.set()
        await asyncio.wait_for(task, PATIENCE)

        assert await wait_until(
            lambda: observer.fetchval(
                "SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE 'ledger-projector:%'"
            )
        )
    finally:
        stop.set()
        await observer.close()


async def test_unknown_projection_rejected(database: DatabaseUrl) -> None:
    with pytest.raises(InvalidInputError, match="unknown projection 'ledgers'"):
        await catch_up(database, names=["ledgers"])


async def test_totals_beyond_bigint_still_project(services: Services) -> None:
    # Each amount fits bigint, but a partner's running totals may not: the
    # projection must keep applying events instead of stopping at one.
    app = services.app
    publish_program(app)
    enroll(app, "whale")
    adjust(app, "whale", "10000000000000.00", "first")
    await catch_up(services.database)
    near_limit = 2**63 - 10
    conn = await asyncpg.connect(services.database.url)
    try:
        await conn.execute(
            "UPDATE statements.balances SET adjusted_minor = $1, balance_minor = $1",
            near_limit,
        )
        await conn.execute("UPDATE statements.period_totals SET amount_minor = $1", near_limit)
        adjust(app, "whale", "10000000000000.00", "second")

        await catch_up(services.database)

        balance = await fetch_balance(conn, "whale")
        statement = await fetch_statement(conn, "whale", "2024-04")
        checkpoint = await conn.fetchval("SELECT position FROM statements.checkpoint")
    finally:
        await conn.close()
    expected = format_minor(near_limit + 10**15, "USD")
    assert checkpoint == app.head_position()
    assert balance.balance.amount == expected
    assert balance.adjusted.amount == expected
    assert statement.opening_balance.amount == expected
