"""Rebuilding a projection from the first event while the old one keeps serving.

The rebuild fills fresh tables in the schema ``<name>__rebuild`` from
position zero without any lock, while readers and a live projector keep
using ``<name>``. Then one transaction locks ``<name>.checkpoint`` (which
waits for the live projector's current batch and holds off its next one),
applies the events that arrived meanwhile, renames ``<name>`` to
``<name>__old`` and ``<name>__rebuild`` to ``<name>``, and drops the old
schema. Readers name tables by schema, and PostgreSQL resolves those names
again once the swap commits, so they move to the new tables without errors.
The live projector reads its checkpoint at the start of every batch, so it
continues from the rebuilt tables' position.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import asyncpg
import structlog

from ledger.errors import ConflictError
from ledger.infrastructure.database import DatabaseUrl
from ledger.infrastructure.schema import projection_ddl
from ledger.projector.base import Projection, advisory_lock_key, quote_identifier
from ledger.projector.batch import (
    CONNECTION_ERRORS,
    ProjectionFailedError,
    close_connection,
    connect,
    fewer_collections,
    project_batch,
    store_errors,
)
from ledger.projector.events import read_head
from ledger.projector.handlers import get_projections

__all__ = ["rebuild_projection"]

_BATCH_SIZE = 2000

# First key of the advisory lock that lets one rebuild per projection run at a
# time. It differs from the projector's lock namespace, so this lock and a
# running projector's lock never block each other.
_REBUILD_LOCK_NAMESPACE = 736_102_003

_log = structlog.get_logger(__name__)


async def rebuild_projection(
    database: DatabaseUrl,
    name: str,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Rebuild projection ``name`` from the first event and swap it in.

    Args:
        database: The ledger database.
        name: Projection to rebuild.
        progress: Called after each batch with the rebuilt position and the
            store head measured when the rebuild began (the head of the final
            step, when it moves past that).

    Returns:
        The number of events read, skipped topics included.

    Raises:
        InvalidInputError: ``name`` is not a known projection.
        ConflictError: Another rebuild of ``name`` is running.
        StoreUnavailableError: The database connection failed; the live
            projection is unchanged.
        ProjectionFailedError: An event could not be projected; the live
            projection is unchanged.
    """
    [projection] = get_projections([name])
    with fewer_collections():
        return await _rebuild(database, projection, progress)


async def _rebuild(
    database: DatabaseUrl, projection: Projection, progress: Callable[[int, int], None] | None
) -> int:
    name = projection.name
    conn = await connect(database, f"ledger-rebuild:{name}")
    try:
        with store_errors(f"preparing the rebuild of projection {name}"):
            await _lock_rebuild(conn, name)
            await _create_fresh_schema(conn, name)
            head = await read_head(conn)
        _log.info("projector.rebuild_started", projection=name, head=head)

        # Replay every event into the fresh tables, outside any lock.
        applied = 0
        while True:
            result = await project_batch(
                conn, projection, _rebuild_schema(name), batch_size=_BATCH_SIZE
            )
            applied += result.events
            if progress is not None:
                progress(result.position, max(head, result.position))
            if result.events == 0 or result.position >= head:
                break

        # Apply what arrived meanwhile and swap the schemas, in one transaction.
        with store_errors(f"swapping in the rebuilt projection {name}"):
            try:
                async with conn.transaction():
                    applied += await _swap(conn, projection, progress)
            except asyncpg.PostgresError as error:
                if isinstance(error, CONNECTION_ERRORS):
                    raise
                raise ProjectionFailedError(
                    f"swapping in the rebuilt projection {name} failed: {error}; the live "
                    "projection is unchanged, so run the rebuild again",
                    projection=name,
                    position=result.position,
                ) from error
        _log.info("projector.rebuild_finished", projection=name, events=applied)
        return applied
    finally:
        await close_connection(conn)


def _rebuild_schema(name: str) -> str:
    return f"{name}__rebuild"


async def _lock_rebuild(conn: asyncpg.Connection, name: str) -> None:
    locked = await conn.fetchval(
        "SELECT pg_try_advisory_lock($1, $2)", *advisory_lock_key(_REBUILD_LOCK_NAMESPACE, name)
    )
    if not locked:
        raise ConflictError(
            f"a rebuild of projection {name} is already running; wait for it to finish",
            field="name",
            value=name,
        )


async def _create_fresh_schema(conn: asyncpg.Connection, name: str) -> None:
    # A rebuild that died before its swap leaves its schema behind; start over.
    async with conn.transaction():
        await conn.execute(
            f"DROP SCHEMA IF EXISTS {quote_identifier(_rebuild_schema(name))} CASCADE"
        )
        await conn.execute(projection_ddl(name, _rebuild_schema(name)))


async def _swap(
    conn: asyncpg.Connection,
    projection: Projection,
    progress: Callable[[int, int], None] | None,
) -> int:
    """Catch the rebuilt tables up under the live checkpoint's lock and rename the schemas."""
    name = projection.name
    live = quote_identifier(name)
    old = quote_identifier(f"{name}__old")
    rebuilt = quote_identifier(_rebuild_schema(name))
    live_exists = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", name
    )

    # Wait for the live projector's current batch and hold off its next one.
    if live_exists:
        await conn.execute(f"LOCK TABLE {live}.checkpoint IN ACCESS EXCLUSIVE MODE")

    # Apply the events that arrived since the replay.
    applied = 0
    while True:
        result = await project_batch(
            conn, projection, _rebuild_schema(name), batch_size=_BATCH_SIZE
        )
        applied += result.events
        if result.events == 0:
            break
        if progress is not None:
            progress(result.position, result.position)

    # Swap the schemas and drop the old tables. Dropping waits for readers of
    # the old tables to finish their transactions.
    # NOTE: a reader transaction that reads a projection table and then its
    # checkpoint can deadlock with this step; PostgreSQL aborts one of the two,
    # and an aborted rebuild raises ProjectionFailedError and can be rerun.
    await conn.execute(f"DROP SCHEMA IF EXISTS {old} CASCADE")
    if live_exists:
        await conn.execute(f"ALTER SCHEMA {live} RENAME TO {old}")
    await conn.execute(f"ALTER SCHEMA {rebuilt} RENAME TO {live}")
    if live_exists:
        await conn.execute(f"DROP SCHEMA {old} CASCADE")

    # Record the DDL the tables now match, as ledger.infrastructure.schema's
    # record_projection_rebuilt does over psycopg, so `ledger status` stops
    # reporting a changed projection file.
    ddl = projection_ddl(name, name)
    await conn.execute(
        "INSERT INTO ledger_schema_migrations (name, sha256) VALUES ($1, $2) "
        "ON CONFLICT (name) DO UPDATE SET sha256 = EXCLUDED.sha256, applied_at = now()",
        f"projection:{name}",
        hashlib.sha256(ddl.encode()).hexdigest(),
    )
    return applied
