"""Running projections: catch up from the checkpoint, then follow new events.

Every projection runs in its own task on its own connection, and holds a
session-level advisory lock for that projection while it runs. A second
projector of the same projection, in this process or another, waits for the
lock, so only one of them writes at a time and the other takes over when the
first stops or dies. :func:`catch_up` takes the same lock.

New events are announced on the ``ledger_events`` channel: the event store
sends ``NOTIFY ledger_events`` in every insert transaction. One listening
connection per :func:`run_projector` wakes every projection task. While that
connection is down, the tasks poll every ``projector_poll_seconds`` and the
listener reconnects with exponential backoff. After reconnecting it wakes
every task once, because notifications sent while it was away are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence

import asyncpg
import structlog

from ledger.errors import InvalidInputError, StoreUnavailableError
from ledger.infrastructure.database import DatabaseUrl
from ledger.infrastructure.schema import PROJECTION_NAMES
from ledger.projector.base import Projection, advisory_lock_key
from ledger.projector.batch import (
    CONNECTION_ERRORS,
    ProjectionFailedError,
    close_connection,
    connect,
    fewer_collections,
    project_batch,
    store_errors,
)
from ledger.projector.events import SharedReads, read_head
from ledger.projector.handlers import get_projections
from ledger.settings import Settings

__all__ = [
    "NOTIFY_CHANNEL",
    "catch_up",
    "failing_projections",
    "projection_lock_key",
    "run_projector",
]

NOTIFY_CHANNEL = "ledger_events"

# First key of the two-key advisory locks that projectors take. It is an
# arbitrary constant that only has to differ from other two-key advisory locks
# taken on the same database.
_LOCK_NAMESPACE = 736_102_002

# How often an idle listening connection is checked with a query, so that a
# connection that died without closing its socket is noticed.
_KEEPALIVE_SECONDS = 10.0

_log = structlog.get_logger(__name__)


def projection_lock_key(name: str) -> tuple[int, int]:
    """Return the two int4 keys of the advisory lock that guards projection ``name``."""
    return advisory_lock_key(_LOCK_NAMESPACE, name)


class _Backoff:
    """Exponential delays for retries: 0.5 s, 1 s, 2 s, ... up to 30 s."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0

    def next_delay(self) -> float:
        """Count one more failed attempt and return the delay before the next."""
        self.attempt += 1
        return min(self.maximum, self.initial * 2.0 ** (self.attempt - 1))

    def reset(self) -> None:
        """Forget earlier failures after a success."""
        self.attempt = 0


async def _sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _wait_for_any(events: Iterable[asyncio.Event], timeout: float | None) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _lock_projection(
    conn: asyncpg.Connection, name: str, *, stop: asyncio.Event | None = None
) -> bool:
    """Take projection ``name``'s advisory lock, waiting while another session holds it.

    Returns False, without the lock, if ``stop`` is set while waiting.
    """
    key = projection_lock_key(name)
    if await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *key):
        return True
    _log.info(
        "projector.lock_waiting",
        projection=name,
        reason="another projector holds this projection's advisory lock",
    )
    lock = asyncio.ensure_future(conn.execute("SELECT pg_advisory_lock($1, $2)", *key))
    stopped = asyncio.ensure_future(stop.wait()) if stop is not None else None
    try:
        await asyncio.wait(
            [task for task in (lock, stopped) if task is not None],
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        if stopped is not None:
            stopped.cancel()
        if not lock.done():
            # asyncpg sends the server a cancel request for the waiting query.
            lock.cancel()
            with contextlib.suppress(asyncio.CancelledError, *CONNECTION_ERRORS):
                await lock
    if lock.cancelled():
        return False
    lock.result()
    return True


class _Listener:
    """One ``LISTEN ledger_events`` connection that wakes the projection tasks.

    Attributes:
        connected: True while the connection listens; the tasks poll otherwise.
    """

    def __init__(
        self, database: DatabaseUrl, wakeups: Sequence[asyncio.Event], stop: asyncio.Event
    ) -> None:
        self._database = database
        self._wakeups = wakeups
        self._stop = stop
        self.connected = False

    def _wake_all(self, *_: object) -> None:
        for wakeup in self._wakeups:
            wakeup.set()

    async def run(self) -> None:
        """Listen until ``stop`` is set, reconnecting with backoff when the connection drops."""
        backoff = _Backoff()
        while not self._stop.is_set():
            conn: asyncpg.Connection | None = None
            delay = backoff.initial
            try:
                conn = await connect(self._database, "ledger-projector:listener")
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, event=lost: event.set())
                await conn.add_listener(NOTIFY_CHANNEL, self._wake_all)

                # Events committed before LISTEN took effect sent no notification
                # to this connection, so every task checks the store once now.
                self.connected = True
                self._wake_all()
                _log.info("projector.listening", channel=NOTIFY_CHANNEL, attempt=backoff.attempt)
                backoff.reset()

                await self._keep_alive(conn, lost)
                if self._stop.is_set():
                    break
                delay = backoff.next_delay()
                _log.warning(
                    "projector.listener_lost",
                    channel=NOTIFY_CHANNEL,
                    poll="every projector_poll_seconds until reconnected",
                    retry_in_seconds=delay,
                )
            except (
                StoreUnavailableError,
                *CONNECTION_ERRORS,
                asyncpg.PostgresError,
                TimeoutError,
            ) as error:
                delay = backoff.next_delay()
                _log.warning(
                    "projector.listener_failed",
                    channel=NOTIFY_CHANNEL,
                    error=str(error),
                    attempt=backoff.attempt,
                    retry_in_seconds=delay,
                )
            finally:
                if self.connected:
                    # Wake the tasks so they switch to polling while disconnected.
                    self.connected = False
                    self._wake_all()
                await close_connection(conn)
            await _sleep_unless_stopped(self._stop, delay)

    async def _keep_alive(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Return when ``stop`` is set or the connection is lost."""
        while not self._stop.is_set() and not lost.is_set():
            await _wait_for_any((self._stop, lost), _KEEPALIVE_SECONDS)
            if not self._stop.is_set() and not lost.is_set():
                await conn.execute("SELECT 1", timeout=_KEEPALIVE_SECONDS)


async def _drain(
    conn: asyncpg.Connection,
    projection: Projection,
    batch_size: int,
    stop: asyncio.Event,
    shared: SharedReads,
) -> tuple[int, int]:
    """Apply batches until the store head or ``stop``; return (events, checkpoint)."""
    total = 0
    position = 0
    while not stop.is_set():
        result = await project_batch(
            conn, projection, projection.name, batch_size=batch_size, shared=shared
        )
        total += result.events
        position = result.position
        if result.events < batch_size:
            break
    return total, position


# Latest error of each projection that this process's projector failed to
# apply and retries, by name. A batch that commits removes its entry.
# NOTE: the registry is per process. A server started with --no-projector, or a
# --workers process waiting for the lock, reports a failing projection in
# another process only through its lag.
_FAILURES: dict[str, str] = {}


def failing_projections() -> dict[str, str]:
    """Return the latest error of each projection this process's projector is retrying."""
    return dict(_FAILURES)


async def _follow(
    database: DatabaseUrl,
    projection: Projection,
    settings: Settings,
    listener: _Listener,
    wakeup: asyncio.Event,
    stop: asyncio.Event,
    shared: SharedReads,
) -> None:
    """Keep one projection at the store head until ``stop`` is set."""
    log = _log.bind(projection=projection.name)
    backoff = _Backoff()
    while not stop.is_set():
        conn: asyncpg.Connection | None = None
        delay = backoff.initial
        try:
            # Connect and wait for this projection's lock.
            conn = await connect(database, f"ledger-projector:{projection.name}")
            with store_errors(f"waiting for the lock of projection {projection.name}"):
                if not await _lock_projection(conn, projection.name, stop=stop):
                    break
            log.info("projector.lock_acquired")

            # Catch up, then apply new events whenever the listener or the poll signals them.
            first = True
            while not stop.is_set():
                wakeup.clear()
                events, position = await _drain(
                    conn, projection, settings.projector_batch_size, stop, shared
                )
                backoff.reset()
                _FAILURES.pop(projection.name, None)
                if first or events:
                    level = log.info if first else log.debug
                    level("projector.caught_up", events=events, position=position)
                first = False
                timeout = None if listener.connected else settings.projector_poll_seconds
                await _wait_for_any((wakeup, stop), timeout)
            break
        except (StoreUnavailableError, ProjectionFailedError) as error:
            _FAILURES[projection.name] = error.message
            delay = backoff.next_delay()
            log.error(
                "projector.failed",
                error_type=type(error).__name__,
                error=error.message,
                attempt=backoff.attempt,
                retry_in_seconds=delay,
            )
        except Exception as error:
            # A bug in one projection must not stop the others; it is logged
            # with its traceback and retried like a database error.
            _FAILURES[projection.name] = f"{type(error).__name__}: {error}"
            delay = backoff.next_delay()
            log.exception(
                "projector.unexpected_error", attempt=backoff.attempt, retry_in_seconds=delay
            )
        finally:
            await close_connection(conn)
        await _sleep_unless_stopped(stop, delay)


async def run_projector(
    database: DatabaseUrl,
    settings: Settings,
    *,
    names: Sequence[str] = PROJECTION_NAMES,
    stop: asyncio.Event | None = None,
) -> None:
    """Keep the named projections at the event store head until ``stop`` is set.

    Each projection runs in its own task, which waits for the projection's
    advisory lock (logging ``projector.lock_waiting`` when another projector
    holds it), catches up from its checkpoint in batches of
    ``settings.projector_batch_size`` events, then applies new events as
    ``NOTIFY ledger_events`` announces them. While the listening connection is
    down, the tasks poll every ``settings.projector_poll_seconds``. Failed
    batches are logged and retried with exponential backoff up to 30 s; they
    never stop the other projections.

    When ``stop`` is set, each task finishes its current batch and returns. When
    the call is cancelled, the tasks are cancelled and their open batches roll
    back. Without ``stop``, only cancelling ends the call.

    Raises:
        InvalidInputError: A name is not a known projection, or the batch size
            or poll interval in ``settings`` is not positive.
    """
    projections = get_projections(names)
    _check_batch_size(settings.projector_batch_size, "LEDGER_PROJECTOR_BATCH_SIZE")
    if not settings.projector_poll_seconds > 0:
        raise InvalidInputError(
            f"projector poll interval {settings.projector_poll_seconds} s is not positive; "
            "set LEDGER_PROJECTOR_POLL_SECONDS to a number of seconds such as 1",
            field="LEDGER_PROJECTOR_POLL_SECONDS",
            value=settings.projector_poll_seconds,
        )
    stop = stop if stop is not None else asyncio.Event()
    wakeups = [asyncio.Event() for _ in projections]
    listener = _Listener(database, wakeups, stop)
    shared = _shared_reads()
    _log.info(
        "projector.started",
        projections=[projection.name for projection in projections],
        database=database.dbname,
        batch_size=settings.projector_batch_size,
        poll_seconds=settings.projector_poll_seconds,
    )

    tasks = [asyncio.create_task(listener.run(), name="ledger-projector:listener")]
    tasks += [
        asyncio.create_task(
            _follow(database, projection, settings, listener, wakeup, stop, shared),
            name=f"ledger-projector:{projection.name}",
        )
        for projection, wakeup in zip(projections, wakeups, strict=True)
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        _log.info("projector.stopped", projections=[projection.name for projection in projections])


def _check_batch_size(batch_size: int, field: str) -> None:
    if batch_size < 1:
        raise InvalidInputError(
            f"{field} is {batch_size}; a batch needs at least 1 event, for example 2000",
            field=field,
            value=batch_size,
        )


def _shared_reads() -> SharedReads:
    # Room for about two reads per projection, so tasks that drift a batch
    # apart still share their reading and decoding.
    return SharedReads(capacity=2 * len(PROJECTION_NAMES))


class _Pacer:
    """Keeps catch-up tasks within one batch of each other.

    Tasks that apply the same positions at about the same time find the
    rows already read and decoded by whichever task asked first. Without
    pacing, the projection with the cheapest writes runs ahead of the shared
    reads and every event ends up read and decoded once per projection.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self._rounds = dict.fromkeys(names, 0)
        self._changed = asyncio.Condition()

    async def finish_round(self, name: str) -> None:
        """Count a batch of ``name``, then wait until no task is more than one batch behind."""
        async with self._changed:
            self._rounds[name] += 1
            self._changed.notify_all()
            await self._changed.wait_for(
                lambda: self._rounds[name] <= min(self._rounds.values()) + 1
            )

    async def leave(self, name: str) -> None:
        """Stop pacing ``name``, which finished or failed, and wake the tasks waiting for it."""
        async with self._changed:
            self._rounds.pop(name, None)
            self._changed.notify_all()


async def _catch_up_one(
    database: DatabaseUrl,
    projection: Projection,
    batch_size: int,
    shared: SharedReads,
    pacer: _Pacer,
) -> int:
    try:
        conn = await connect(database, f"ledger-catch-up:{projection.name}")
    except BaseException:
        await pacer.leave(projection.name)
        raise
    try:
        with store_errors(f"preparing to catch up projection {projection.name}"):
            head = await read_head(conn)
            await _lock_projection(conn, projection.name)

        total = 0
        while True:
            result = await project_batch(
                conn, projection, projection.name, batch_size=batch_size, shared=shared
            )
            total += result.events
            if result.events == 0 or result.position >= head:
                return total
            await pacer.finish_round(projection.name)
    finally:
        await pacer.leave(projection.name)
        await close_connection(conn)


async def catch_up(
    database: DatabaseUrl,
    *,
    names: Sequence[str] = PROJECTION_NAMES,
    batch_size: int = 2000,
) -> int:
    """Bring the named projections up to the store head as of this call.

    The projections run concurrently, each on its own connection, holding the
    same advisory lock as :func:`run_projector`.

    Returns:
        The maximum number of events that any one projection read, skipped
        topics included. So with every projection at zero and N events in the
        store, the result is N.

    Raises:
        InvalidInputError: A name is unknown, or ``batch_size`` is below 1.
        StoreUnavailableError: The database connection failed.
        ProjectionFailedError: A batch could not be applied. The other
            projections still finish before this is raised.
    """
    # NOTE: the lock wait has no timeout, so while `ledger project` or a server
    # runs a projection, catching that projection up blocks until it stops.
    projections = get_projections(names)
    _check_batch_size(batch_size, "batch_size")

    shared = _shared_reads()
    pacer = _Pacer(projection.name for projection in projections)
    with fewer_collections():
        results = await asyncio.gather(
            *(
                _catch_up_one(database, projection, batch_size, shared, pacer)
                for projection in projections
            ),
            return_exceptions=True,
        )

    counts: list[int] = []
    errors: list[BaseException] = []
    for result in results:
        if isinstance(result, BaseException):
            errors.append(result)
        else:
            counts.append(result)
    for extra in errors[1:]:
        _log.error("projector.catch_up_failed", error=str(extra))
    if errors:
        raise errors[0]
    return max(counts, default=0)
