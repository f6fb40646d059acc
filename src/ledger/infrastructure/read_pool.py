"""An asyncpg pool that hands connections out in the order they were asked for.

asyncpg's pool keeps idle connections in an ``asyncio`` queue. When a
connection comes back, the queue wakes the oldest waiting request, but a
request that arrives in the meantime takes the connection first, and the woken
request queues again at the back. With more requests in flight than
connections, some requests then wait many times longer than others. At 64
statement reads in flight on one server process with 10 connections, the
median read took 4.6 ms and the 99th percentile 57 ms.

:class:`FairPool` puts a first-come, first-served gate in front of the pool.
The gate admits as many requests as the pool has connections and passes a
slot straight from a finishing request to the oldest waiting one, so asyncpg's
queue always has a connection ready and a late request cannot overtake.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Generator
from types import TracebackType
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

__all__ = ["FairPool", "create_fair_pool"]


class _FifoGate:
    """Admits at most ``size`` holders; the others wait in arrival order."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def enter(self) -> None:
        """Wait for a slot; slots go to waiters strictly in arrival order."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just before the cancellation: pass it on.
                self.leave()
            else:
                self._waiters.remove(waiter)
            raise

    def leave(self) -> None:
        """Give the slot to the oldest waiter, or free it when none waits."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class _FairAcquire:
    """Acquisition returned by :meth:`FairPool.acquire`, for ``async with`` or ``await``."""

    __slots__ = ("_connection", "_pool", "_timeout")

    def __init__(self, pool: FairPool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._connection: PoolConnectionProxy | None = None

    async def _acquire(self) -> PoolConnectionProxy:
        pool = self._pool
        await pool._fair_gate.enter()
        try:
            connection: PoolConnectionProxy = await asyncpg.Pool.acquire(
                pool, timeout=self._timeout
            )
        except BaseException:
            pool._fair_gate.leave()
            raise
        pool._fair_lent.add(connection)
        return connection

    def __await__(self) -> Generator[Any, None, PoolConnectionProxy]:
        return self._acquire().__await__()

    async def __aenter__(self) -> PoolConnectionProxy:
        self._connection = await self._acquire()
        return self._connection

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._pool.release(connection)


class FairPool(asyncpg.Pool):  # type: ignore[misc]
    """A :class:`asyncpg.Pool` whose waiting requests get connections first come, first served.

    Every way of using the pool goes through :meth:`acquire`, including its
    ``fetch``, ``fetchrow``, ``fetchval`` and ``execute`` shortcuts.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fair_gate = _FifoGate(kwargs["max_size"])
        self._fair_lent: set[PoolConnectionProxy] = set()

    def acquire(self, *, timeout: float | None = None) -> Any:
        """Acquire a connection, after every request that asked before this one."""
        return _FairAcquire(self, timeout)

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:
        """Return ``connection`` to the pool and let the oldest waiting request in."""
        try:
            await super().release(connection, timeout=timeout)
        finally:
            if connection in self._fair_lent:
                self._fair_lent.discard(connection)
                self._fair_gate.leave()


async def create_fair_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    reset: Any = None,
    **connect_kwargs: Any,
) -> FairPool:
    """Open a :class:`FairPool` the way :func:`asyncpg.create_pool` opens its pool."""
    pool = FairPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        reset=reset,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        **connect_kwargs,
    )
    await pool
    return pool
