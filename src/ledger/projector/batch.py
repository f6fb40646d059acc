"""One projector batch: a transaction that moves a projection's checkpoint forward.

A batch locks the checkpoint row, reads the next events after it, writes
their rows and moves the checkpoint to the last event read, then commits. The
rows and the checkpoint commit together, so a crash or error mid-batch
leaves both as they were: no event is applied twice and none is skipped.
The checkpoint is read again at the start of every batch, never cached,
because a rebuild may swap in tables at another position between batches.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import NamedTuple

import asyncpg
import msgspec

from ledger.errors import LedgerError, StoreUnavailableError
from ledger.infrastructure.database import DatabaseUrl
from ledger.projector.base import Projection, quote_identifier
from ledger.projector.events import SharedReads, read_batch

__all__ = [
    "CONNECTION_ERRORS",
    "BatchResult",
    "ProjectionFailedError",
    "close_connection",
    "connect",
    "fewer_collections",
    "project_batch",
    "store_errors",
]

# Errors after which the connection is unusable: the server is down or
# restarting, or an administrator terminated the session.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
)

_CLOSE_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, TimeoutError)

# Allocations between two collections of the garbage collector's youngest
# generation while batches run (Python's default is 700).
_BATCH_GC_THRESHOLD = 20_000
_gc_users = 0
_gc_thresholds: tuple[int, int, int] | None = None


class ProjectionFailedError(LedgerError):
    """A batch of events could not be applied to a projection; nothing of it was written.

    Attributes:
        projection: Name of the projection.
        position: The projection's checkpoint, which the failed batch left
            unchanged, or -1 when the batch failed before reading it.
    """

    def __init__(self, message: str, *, projection: str, position: int) -> None:
        super().__init__(message, field="projection", value=projection)
        self.projection = projection
        self.position = position


class BatchResult(NamedTuple):
    """Outcome of one batch.

    Attributes:
        events: Events read, counting those of topics the projection skips;
            0 means the projection was already at the store head.
        position: The checkpoint after the batch.
    """

    events: int
    position: int


async def connect(database: DatabaseUrl, application_name: str) -> asyncpg.Connection:
    """Open a projector connection named ``application_name`` in ``pg_stat_activity``.

    Its commits do not wait for the WAL flush (``synchronous_commit = off``).
    A crash can then lose the last batches a projection committed, but each
    batch's rows and checkpoint are lost together, so the projection applies
    those events again on restart. The event store is not affected.

    Raises:
        StoreUnavailableError: The server cannot be reached or refused the connection.
    """
    try:
        return await asyncpg.connect(
            database.url,
            server_settings={"application_name": application_name, "synchronous_commit": "off"},
        )
    except (*CONNECTION_ERRORS, asyncpg.PostgresError) as error:
        raise StoreUnavailableError(
            f"cannot connect to PostgreSQL at {database.redacted}: {error}; check that the "
            "server runs and LEDGER_DATABASE_URL names it"
        ) from error


async def close_connection(conn: asyncpg.Connection | None) -> None:
    """Close ``conn``, which also releases its session-level advisory locks."""
    if conn is None or conn.is_closed():
        return
    try:
        await asyncio.wait_for(conn.close(), timeout=5.0)
    except _CLOSE_ERRORS:
        # A connection busy with a cancelled query or a dead socket cannot
        # close politely; dropping the socket makes the server end the session.
        conn.terminate()


@contextmanager
def store_errors(action: str) -> Iterator[None]:
    """Translate a lost connection during ``action`` into :class:`StoreUnavailableError`."""
    try:
        yield
    except CONNECTION_ERRORS as error:
        raise StoreUnavailableError(
            f"lost the database connection while {action}: {error}; run it again once "
            "the server is reachable"
        ) from error


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Run the garbage collector's youngest generation less often inside the block.

    A batch keeps thousands of rows and events alive across its awaits. At
    Python's default threshold the collector runs many times per batch, moves
    those objects into older generations and then walks the whole heap in
    full collections, which cost about a fifth of the client CPU time of a
    200,000-event catch-up. With the higher threshold most of a batch's
    objects are freed by reference counting before any collection visits them.
    The setting is process-wide, and the previous thresholds come back when
    the last block of the process exits.
    """
    global _gc_users, _gc_thresholds
    if _gc_users == 0:
        _gc_thresholds = gc.get_threshold()
        first, *older = _gc_thresholds
        gc.set_threshold(max(first, _BATCH_GC_THRESHOLD), *older)
    _gc_users += 1
    try:
        yield
    finally:
        _gc_users -= 1
        if _gc_users == 0 and _gc_thresholds is not None:
            gc.set_threshold(*_gc_thresholds)
            _gc_thresholds = None


@lru_cache(maxsize=16)
def _checkpoint_statements(schema: str) -> tuple[str, str]:
    table = f"{quote_identifier(schema)}.checkpoint"
    return (
        f"SELECT position FROM {table} FOR UPDATE",
        f"UPDATE {table} SET position = $1, updated_at = now()",
    )


def _where(position: int) -> str:
    if position < 0:
        return "before reading its checkpoint"
    return f"on the events after position {position}"


async def project_batch(
    conn: asyncpg.Connection,
    projection: Projection,
    schema: str,
    *,
    batch_size: int,
    shared: SharedReads | None = None,
) -> BatchResult:
    """Apply the next up to ``batch_size`` events to ``projection``'s tables in ``schema``.

    Runs in its own transaction, or in a savepoint when the caller already
    opened one. Waits while another session has the checkpoint row locked.
    ``shared`` shares the event rows and their decoding with the other
    projections of the same run.

    Raises:
        StoreUnavailableError: The connection failed; the batch rolled back.
        ProjectionFailedError: An event could not be projected, or the database
            rejected a row; the batch rolled back.
    """
    select_checkpoint, update_checkpoint = _checkpoint_statements(schema)
    position = -1
    try:
        async with conn.transaction():
            # Lock the checkpoint so that no other batch of this projection runs meanwhile.
            position = await conn.fetchval(select_checkpoint)

            batch = await read_batch(
                conn, after=position, limit=batch_size, topics=projection.topics, shared=shared
            )
            if batch is None:
                return BatchResult(0, position)

            await projection.apply(conn, schema, batch)

            await conn.execute(update_checkpoint, batch.last_position)
    except CONNECTION_ERRORS as error:
        raise StoreUnavailableError(
            f"lost the database connection while projecting {projection.name} "
            f"{_where(position)}: {error}; the batch rolled back, so run the projector again"
        ) from error
    except (
        LedgerError,
        asyncpg.PostgresError,
        msgspec.MsgspecError,
        LookupError,
        ValueError,
        TypeError,
    ) as error:
        raise ProjectionFailedError(
            f"projection {projection.name} failed {_where(position)}: {error}; nothing of "
            "the batch was written, so fix the cause and run the projector again",
            projection=projection.name,
            position=position,
        ) from error
    return BatchResult(batch.row_count, batch.last_position)
