"""How far each projection is behind the event store, and waiting for it to catch up."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import lru_cache

import asyncpg
import msgspec

from ledger.errors import InvalidInputError
from ledger.infrastructure.schema import PROJECTION_NAMES
from ledger.projector.base import quote_identifier
from ledger.projector.handlers import get_projections

__all__ = ["ProjectionStatus", "projection_status", "wait_for_position"]

# Pause between checkpoint reads in wait_for_position: short enough that a
# read waiting for its own write returns within a few tens of milliseconds,
# long enough that one waiting request costs about 65 cheap queries a second.
_POLL_SECONDS = 0.015


class ProjectionStatus(msgspec.Struct, frozen=True):
    """A projection's checkpoint compared with the event store head.

    Attributes:
        name: Projection name.
        position: Position (``notification_id``) of the last event it applied.
        head: Position of the newest event in the store, 0 when empty.
        lag: ``head - position``: how many positions it still has to process.
    """

    name: str
    position: int
    head: int
    lag: int


def _checkpoint_columns(names: tuple[str, ...]) -> str:
    return ", ".join(
        f"(SELECT position FROM {quote_identifier(name)}.checkpoint)" for name in names
    )


_STATUS_QUERY = (
    "SELECT (SELECT coalesce(max(notification_id), 0) FROM ledger_events), "
    + _checkpoint_columns(PROJECTION_NAMES)
)


@lru_cache(maxsize=32)
def _lowest_checkpoint_query(names: tuple[str, ...]) -> str:
    return f"SELECT least({_checkpoint_columns(names)})"


async def projection_status(conn: asyncpg.Connection | asyncpg.Pool) -> list[ProjectionStatus]:
    """Return every projection's position, the store head and the lag, in one query."""
    row = await conn.fetchrow(_STATUS_QUERY)
    head = row[0]
    return [
        ProjectionStatus(name=name, position=position, head=head, lag=head - position)
        for name, position in zip(PROJECTION_NAMES, row[1:], strict=True)
    ]


async def wait_for_position(
    conn: asyncpg.Connection | asyncpg.Pool,
    position: int,
    *,
    names: Sequence[str],
    timeout: float,
) -> bool:
    """Wait until every named projection has applied the event at ``position``.

    Reads the checkpoints every 15 ms. Returns True as soon as all of them are
    at ``position`` or beyond, and False once ``timeout`` seconds have passed
    without that.

    Raises:
        InvalidInputError: A name is not a known projection.
    """
    projection_names = tuple(projection.name for projection in get_projections(names))
    if not projection_names:
        raise InvalidInputError(
            "names is empty; name at least one projection to wait for",
            field="names",
        )
    query = _lowest_checkpoint_query(projection_names)
    deadline = asyncio.get_running_loop().time() + max(timeout, 0.0)
    while True:
        if await conn.fetchval(query) >= position:
            return True
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(_POLL_SECONDS, remaining))
