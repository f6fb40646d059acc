"""Reading one batch of stored events and decoding it into domain events.

Events are read in ``notification_id`` order. Only the topics a projection
handles are decoded, and the rest are counted so the checkpoint can pass over
them. Some events do not carry the ids a read model needs: a reversal does not
name its partner, a tier change does not name its partner, and a published
rule set does not name its program. For those, the batch also contains the
creation event (version 1) of the stream, found either within the batch or
with one extra query on the event store's primary key.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from eventsourcing.utils import get_topic, resolve_topic

from ledger.domain.adjustment import Adjustment
from ledger.domain.earning import Earning
from ledger.domain.partner import Partner
from ledger.domain.program import Program
from ledger.infrastructure.transcoder import MsgspecTranscoder

__all__ = [
    "ADJUSTMENT_RECORDED",
    "EARNING_EARNED",
    "EARNING_REVERSED",
    "PARTNER_ENROLLED",
    "PARTNER_TIER_CHANGED",
    "PROGRAM_CREATED",
    "PROGRAM_RULE_SET_PUBLISHED",
    "EventBatch",
    "SharedReads",
    "json_text",
    "read_batch",
    "read_head",
]

PROGRAM_CREATED = get_topic(Program.Created)
PROGRAM_RULE_SET_PUBLISHED = get_topic(Program.RuleSetPublished)
PARTNER_ENROLLED = get_topic(Partner.Enrolled)
PARTNER_TIER_CHANGED = get_topic(Partner.TierChanged)
EARNING_EARNED = get_topic(Earning.Earned)
EARNING_REVERSED = get_topic(Earning.Reversed)
ADJUSTMENT_RECORDED = get_topic(Adjustment.Recorded)

# Topics whose events need their stream's creation event to be projected.
_NEEDS_CREATION = frozenset({PROGRAM_RULE_SET_PUBLISHED, PARTNER_TIER_CHANGED, EARNING_REVERSED})

_SELECT_EVENTS = """
SELECT notification_id, originator_id, originator_version, topic, state
  FROM ledger_events
 WHERE notification_id > $1
 ORDER BY notification_id
 LIMIT $2
"""

_SELECT_HEAD = "SELECT coalesce(max(notification_id), 0) FROM ledger_events"

_SELECT_CREATION_EVENTS = """
SELECT originator_id, topic, state
  FROM ledger_events
 WHERE originator_id = ANY($1::uuid[]) AND originator_version = 1
"""

# Decoding is pure and the transcoder keeps no per-call state, so one
# transcoder serves every projection task of the process.
_TRANSCODER = MsgspecTranscoder()
_EVENT_CLASSES: dict[str, type[Any]] = {}
_JSON_ENCODER = msgspec.json.Encoder()


def json_text(value: Any) -> str:
    """Encode ``value`` as JSON text for a ``json`` or ``jsonb`` parameter or column.

    Decimals become strings with their exact digits, dates and datetimes ISO
    8601 strings, UUIDs their canonical text, and tuples arrays.
    """
    return _JSON_ENCODER.encode(value).decode()


@dataclass(slots=True)
class EventBatch:
    """Events read by one projector batch.

    Attributes:
        events: ``(position, domain event)`` of the handled topics, in position
            order. ``position`` is the event's ``notification_id``.
        last_position: ``notification_id`` of the last row read, skipped or
            not; the checkpoint moves here when the batch commits.
        row_count: Rows read, including those of topics the projection skips.
        creations: Creation event of each stream that a handled event needs
            and that the batch does not contain, by stream id.
    """

    events: list[tuple[int, Any]]
    last_position: int
    row_count: int
    creations: dict[UUID, Any] = field(default_factory=dict)

    def creation_of(self, event: Any) -> Any:
        """Return the creation event of ``event``'s stream.

        Raises:
            LookupError: The stream has no version-1 event in the store, which
                only a damaged event store can cause.
        """
        try:
            return self.creations[event.originator_id]
        except KeyError:
            raise LookupError(
                f"stream {event.originator_id} has no creation event in ledger_events, "
                f"so its event version {event.originator_version} cannot be projected"
            ) from None


async def read_head(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """Return the position of the newest committed event, 0 when the store is empty."""
    head: int = await conn.fetchval(_SELECT_HEAD)
    return head


def _decode(originator_id: UUID, version: int, topic: str, state: bytes) -> Any:
    """Return the domain event stored as ``state``, upcast to its class's current version.

    Gives the event that eventsourcing's ``Mapper.to_domain_event`` gives for
    this store, which uses neither a cipher nor a compressor, but resolves the
    class of each topic once and builds no ``StoredEvent``. Upcasting follows
    eventsourcing's convention: a state without ``class_version`` is version
    1, and each ``upcast_v<n>_v<n+1>`` of the class changes the state in place.

    Raises:
        ValueError: The state cannot be decoded; the message names the event.
    """
    event_class = _EVENT_CLASSES.get(topic)
    if event_class is None:
        event_class = resolve_topic(topic)
        _EVENT_CLASSES[topic] = event_class
    try:
        event_state: dict[str, Any] = _TRANSCODER.decode(state)
    except (msgspec.MsgspecError, ValueError, TypeError) as error:
        raise ValueError(
            f"cannot decode the stored state of {topic} version {version} of stream "
            f"{originator_id}: {error}; the event store row is damaged or was written by "
            "another transcoder"
        ) from error
    event_state["originator_id"] = originator_id
    event_state["originator_version"] = version
    class_version: int = getattr(event_class, "class_version", 1)
    from_version: int = event_state.pop("class_version", 1)
    while from_version < class_version:
        getattr(event_class, f"upcast_v{from_version}_v{from_version + 1}")(event_state)
        from_version += 1
    event = object.__new__(event_class)
    object.__setattr__(event, "__dict__", event_state)
    return event


class _Read:
    """Rows of one full read, with each row's event decoded on first request."""

    __slots__ = ("events", "rows")

    def __init__(self, rows: list[asyncpg.Record]) -> None:
        self.rows = rows
        self.events: list[Any] = [None] * len(rows)

    def event(self, index: int) -> Any:
        """Return the event of row ``index``, decoding it on first request."""
        event = self.events[index]
        if event is None:
            _, originator_id, version, topic, state = self.rows[index]
            event = _decode(originator_id, version, topic, state)
            self.events[index] = event
        return event


class SharedReads:
    """Event rows read by one projection's batch and reused by the others of a run.

    Projections whose checkpoints are equal ask for the same rows: the first
    to ask reads and the others, asking while it reads or after, get the same
    rows and the events decoded so far. Only a read that returned ``limit``
    rows is shared. Such a read can never change, because every event at or
    below its last position was committed before it, whereas a shorter read
    stops at a head that may have moved since. Each projection still reads its
    own checkpoint in its own transaction and requests the rows after it, so
    sharing changes only where the rows come from, never which rows a batch
    applies.

    Positions identify events only within one database, so an instance must
    never serve two databases. Handlers must not modify the events it returns.
    """

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        self._reads: dict[tuple[int, int], asyncio.Future[_Read | None]] = {}

    async def read(self, conn: asyncpg.Connection, after: int, limit: int) -> _Read:
        """Return up to ``limit`` rows after position ``after``, read once for every caller."""
        key = (after, limit)
        pending = self._reads.get(key)
        if pending is not None:
            shared = await asyncio.shield(pending)
            if shared is not None:
                return shared
            # The first reader failed or found fewer rows than limit, so read here.
            return _Read(await conn.fetch(_SELECT_EVENTS, after, limit))

        pending = asyncio.get_running_loop().create_future()
        self._reads[key] = pending
        self._trim()
        result: _Read | None = None
        try:
            result = _Read(await conn.fetch(_SELECT_EVENTS, after, limit))
        finally:
            full = result is not None and len(result.rows) == limit
            pending.set_result(result if full else None)
            if not full and self._reads.get(key) is pending:
                del self._reads[key]
        assert result is not None
        return result

    def _trim(self) -> None:
        """Drop the oldest reads beyond ``capacity``."""
        excess = len(self._reads) - self.capacity
        if excess > 0:
            for key in list(itertools.islice(self._reads, excess)):
                del self._reads[key]


async def read_batch(
    conn: asyncpg.Connection,
    *,
    after: int,
    limit: int,
    topics: Collection[str],
    shared: SharedReads | None = None,
) -> EventBatch | None:
    """Read up to ``limit`` events after position ``after``; return None if there are none.

    Events whose topic is not in ``topics`` are not decoded. ``shared`` lets
    projections running side by side share the reading and decoding work. The
    caller runs this inside its batch transaction. Because the event store
    serializes inserts with a table lock, every event at or below the last
    position read is already committed, so a later batch never finds an
    earlier position.
    """
    if shared is None:
        read = _Read(await conn.fetch(_SELECT_EVENTS, after, limit))
    else:
        read = await shared.read(conn, after, limit)
    rows = read.rows
    if not rows:
        return None

    # Decode the handled topics and remember the creation events seen.
    events: list[tuple[int, Any]] = []
    creations: dict[UUID, Any] = {}
    needed: set[UUID] = set()
    for index, (notification_id, originator_id, version, topic, _) in enumerate(rows):
        if topic not in topics:
            continue
        event = read.event(index)
        events.append((notification_id, event))
        if version == 1:
            creations[originator_id] = event
        elif topic in _NEEDS_CREATION:
            needed.add(originator_id)

    # Fetch the creation events that earlier batches contained.
    missing = needed.difference(creations)
    batch = EventBatch(events, rows[-1]["notification_id"], len(rows))
    batch.creations = {key: creations[key] for key in needed & creations.keys()}
    if missing:
        batch.creations.update(await _read_creation_events(conn, missing))
    return batch


async def _read_creation_events(
    conn: asyncpg.Connection, originator_ids: Iterable[UUID]
) -> Mapping[UUID, Any]:
    rows = await conn.fetch(_SELECT_CREATION_EVENTS, list(originator_ids))
    return {
        originator_id: _decode(originator_id, 1, topic, state)
        for originator_id, topic, state in rows
    }
