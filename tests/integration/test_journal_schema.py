"""The journal tables' guarantees, which PostgreSQL checks for every writer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from uuid import uuid4

import asyncpg
import pytest

from ledger.infrastructure.database import DatabaseUrl
from ledger.infrastructure.schema import projection_ddl

_ENTRY = (
    "INSERT INTO {schema}.entries (position, event_id, event_version, program_id, partner_id, "
    "kind, source_ref, effective_date, recorded_at, memo) "
    "VALUES ($1, $2, 1, 'p1', 'acme', 'earning', 'deal-1', $3, $4, 'memo')"
)
_POSTINGS = (
    "INSERT INTO {schema}.postings (position, leg, account, currency, amount_minor) "
    "SELECT $1, leg, account, 'USD', amount "
    "FROM unnest($2::smallint[], $3::text[], $4::bigint[]) AS u(leg, account, amount)"
)
_ACCOUNTS = ["reward_expense:p1", "partner_payable:acme"]


@pytest.fixture
async def conn(database: DatabaseUrl) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database.url)
    try:
        yield connection
    finally:
        await connection.close()


async def _add_entry(conn: asyncpg.Connection, position: int, schema: str = "journal") -> None:
    await conn.execute(
        _ENTRY.format(schema=schema),
        position,
        uuid4(),
        date(2024, 3, 1),
        datetime(2024, 3, 1, tzinfo=UTC),
    )


async def _add_postings(
    conn: asyncpg.Connection, position: int, amounts: list[int], schema: str = "journal"
) -> None:
    await conn.execute(_POSTINGS.format(schema=schema), position, [1, 2], _ACCOUNTS, amounts)


async def test_balanced_entry_is_accepted(conn: asyncpg.Connection) -> None:
    await _add_entry(conn, 7)

    await _add_postings(conn, 7, [450, -450])

    assert await conn.fetchval("SELECT sum(amount_minor) FROM journal.postings") == 0


async def test_unbalanced_legs_are_rejected(conn: asyncpg.Connection) -> None:
    await _add_entry(conn, 7)

    with pytest.raises(asyncpg.CheckViolationError, match="entry 7 does not balance in USD"):
        await _add_postings(conn, 7, [450, -449])

    assert await conn.fetchval("SELECT count(*) FROM journal.postings") == 0


async def test_postings_without_entry_are_rejected(conn: asyncpg.Connection) -> None:
    await _add_entry(conn, 7)

    with pytest.raises(asyncpg.ForeignKeyViolationError, match="position 8 have no journal entry"):
        await _add_postings(conn, 8, [450, -450])

    assert await conn.fetchval("SELECT count(*) FROM journal.postings") == 0


async def test_entry_check_follows_a_renamed_schema(conn: asyncpg.Connection) -> None:
    # A rebuild builds the tables under another name and renames the schema.
    await conn.execute(projection_ddl("journal", "journal_built"))
    await conn.execute("ALTER SCHEMA journal_built RENAME TO journal_renamed")
    await _add_entry(conn, 7, "journal_renamed")
    await _add_postings(conn, 7, [450, -450], "journal_renamed")

    with pytest.raises(asyncpg.ForeignKeyViolationError, match="position 8 have no journal entry"):
        await _add_postings(conn, 8, [450, -450], "journal_renamed")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE journal.entries SET memo = 'changed'",
        "DELETE FROM journal.entries",
        "TRUNCATE journal.entries CASCADE",
        "UPDATE journal.postings SET amount_minor = 0",
        "DELETE FROM journal.postings",
        "TRUNCATE journal.postings",
    ],
)
async def test_journal_is_append_only(conn: asyncpg.Connection, statement: str) -> None:
    await _add_entry(conn, 7)
    await _add_postings(conn, 7, [450, -450])

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="the journal is append-only"):
        await conn.execute(statement)

    assert await conn.fetchval("SELECT count(*) FROM journal.postings") == 2
    assert await conn.fetchval("SELECT count(*) FROM journal.entries") == 1
