"""Tests for the first-come, first-served read pool, on a real PostgreSQL server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from ledger.infrastructure.database import DatabaseUrl
from ledger.infrastructure.read_pool import FairPool, create_fair_pool


@pytest.fixture
async def one_connection_pool(database: DatabaseUrl) -> AsyncIterator[FairPool]:
    pool = await create_fair_pool(database.url, min_size=1, max_size=1)
    try:
        yield pool
    finally:
        await pool.close()


PoolFactory = Callable[..., Awaitable[asyncpg.Pool]]


async def _order_of_service(open_pool: PoolFactory, url: str) -> list[str]:
    """Return who got a one-connection pool's connection, in order, when a late request arrives.

    The test keeps the connection while ``second`` and ``third`` wait. While
    the pool takes the connection back, ``late`` starts, so its first step
    runs after the connection is free again but before any waiter has run:
    as in a server, where a new request can arrive at any moment.
    """
    served: list[str] = []
    late: list[asyncio.Task[None]] = []

    async def read(name: str) -> None:
        async with pool.acquire() as connection:
            served.append(name)
            await connection.fetchval("SELECT 1")

    async def reset(connection: asyncpg.Connection) -> None:
        if not late and len(served) == 0:
            late.append(asyncio.create_task(read("late")))

    pool = await open_pool(url, min_size=1, max_size=1, reset=reset)
    try:
        holder = await pool.acquire()
        waiters = [asyncio.create_task(read("second")), asyncio.create_task(read("third"))]
        await asyncio.sleep(0.05)
        await pool.release(holder)
        await asyncio.gather(*waiters, *late)
    finally:
        await pool.close()
    return served


async def test_waiting_requests_are_served_in_arrival_order(database: DatabaseUrl) -> None:
    assert await _order_of_service(create_fair_pool, database.url) == ["second", "third", "late"]


async def test_plain_asyncpg_pool_lets_a_late_request_overtake(database: DatabaseUrl) -> None:
    # The behaviour FairPool exists to prevent. If asyncpg ever changes it,
    # this test fails, and FairPool may no longer be needed.
    served = await _order_of_service(asyncpg.create_pool, database.url)

    assert served[0] == "late"


async def test_cancelled_waiter_does_not_lose_the_slot(one_connection_pool: FairPool) -> None:
    holder = await one_connection_pool.acquire()
    waiter = asyncio.create_task(one_connection_pool.fetchval("SELECT 1"))
    await asyncio.sleep(0.05)
    waiter.cancel()
    await one_connection_pool.release(holder)

    with pytest.raises(asyncio.CancelledError):
        await waiter
    # The only slot is free again: a new request gets it without waiting forever.
    assert await asyncio.wait_for(one_connection_pool.fetchval("SELECT 2"), timeout=5) == 2


async def test_failed_query_gives_the_connection_back(one_connection_pool: FairPool) -> None:
    with pytest.raises(asyncpg.PostgresError):
        await one_connection_pool.fetchval("SELECT 1 / 0")

    assert await asyncio.wait_for(one_connection_pool.fetchval("SELECT 3"), timeout=5) == 3


async def test_releasing_twice_frees_one_slot(database: DatabaseUrl) -> None:
    pool = await create_fair_pool(database.url, min_size=1, max_size=2)
    try:
        first = await pool.acquire()
        await pool.release(first)
        await pool.release(first)
        second = await pool.acquire()
        third = await pool.acquire()
        # Both slots are lent, so a fourth request must wait.
        fourth = asyncio.create_task(pool.fetchval("SELECT 4"))
        await asyncio.sleep(0.05)
        assert not fourth.done()
        await pool.release(second)
        assert await asyncio.wait_for(fourth, timeout=5) == 4
        await pool.release(third)
    finally:
        await pool.close()
