"""Read-side queries over the projections, shared by the HTTP API and the CLI.

Every function takes an ``asyncpg.Pool`` or an ``asyncpg.Connection`` and reads
only the read models (``statements``, ``history``); none of them touches the
event store. Results are msgspec Structs that encode straight to JSON, and money
leaves this module as :class:`MoneyJSON`, a decimal string with exactly the
currency's minor-unit digits plus the ISO 4217 code, never as a float.

Statements follow the program's calendar: the projector stores effective dates
already in the program's time zone, so a period ``2016-03`` is simply every line
whose effective date falls in March 2016. The opening balance of a period is
the sum of the per-month totals before it, and the closing balance is the
opening balance plus the period's lines.

Errors are ``ledger.errors`` types: :class:`NotFoundError` for an unknown
program or partner, :class:`InvalidInputError` for a malformed period, cursor
or limit, and :class:`StoreUnavailableError` when the database cannot be reached.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import date, datetime
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg
import msgspec

from ledger.domain.money import CURRENCY_EXPONENTS, Money, currency_exponent
from ledger.errors import InvalidInputError, NotFoundError, StoreUnavailableError

__all__ = [
    "DEFAULT_EVENTS_LIMIT",
    "DEFAULT_PARTNERS_LIMIT",
    "FIRST_PERIOD",
    "LAST_PERIOD",
    "MAX_EVENTS_LIMIT",
    "MAX_PARTNERS_LIMIT",
    "BalanceView",
    "EventPage",
    "MoneyJSON",
    "PartnerEvent",
    "PartnerPage",
    "PartnerProfile",
    "PartnerSummary",
    "ProgramView",
    "RuleSetView",
    "RuleView",
    "StatementLine",
    "StatementView",
    "fetch_balance",
    "fetch_partner",
    "fetch_partner_events",
    "fetch_program",
    "fetch_program_partners",
    "fetch_statement",
    "fetch_statement_json",
    "parse_period",
]

DEFAULT_EVENTS_LIMIT = 100
MAX_EVENTS_LIMIT = 1000
DEFAULT_PARTNERS_LIMIT = 100
# Both paged reads share one maximum, so one hint in problem documents fits both.
MAX_PARTNERS_LIMIT = MAX_EVENTS_LIMIT

# First and last statement periods parse_period accepts: whole years, so a
# year check suffices. The upper bound keeps the first day of the following
# month, where a statement ends, within Python's last year, 9999.
FIRST_PERIOD = date(1900, 1, 1)
LAST_PERIOD = date(9998, 12, 1)

# Event positions are PostgreSQL bigint values.
_MAX_POSITION = 2**63 - 1

_PERIOD_PATTERN = re.compile(r"(\d{4})-(\d{2})", re.ASCII)

# A pool, or one connection that a caller already acquired (the CLI, a test).
Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection


class MoneyJSON(msgspec.Struct, frozen=True):
    """Money as JSON: ``{"amount": "47.43", "currency": "USD"}``.

    Attributes:
        amount: Decimal string with exactly the currency's minor-unit digits
            (``"47.43"`` USD, ``"4743"`` JPY, ``"47.430"`` BHD), signed.
        currency: ISO 4217 code.
    """

    amount: str
    currency: str

    @classmethod
    def from_money(cls, money: Money) -> MoneyJSON:
        """Return ``money`` formatted with its currency's minor-unit digits."""
        return cls(amount=money.format(), currency=money.currency)

    @classmethod
    def from_minor(cls, amount_minor: int, currency: str) -> MoneyJSON:
        """Return ``amount_minor`` minor units of ``currency`` as JSON money."""
        return cls.from_money(Money(int(amount_minor), currency.strip()))


class PartnerProfile(msgspec.Struct, frozen=True, kw_only=True):
    """A partner as the ``statements`` projection shows it.

    Attributes:
        partner_id: The partner's id.
        program_id: The program the partner is enrolled in.
        program_name: Display name of that program.
        currency: ISO 4217 code the program pays in.
        time_zone: IANA zone of the program's dates and statement periods.
        display_name: The partner's display name.
        region: Sales region, empty when unknown.
        channel_manager: Channel manager responsible, empty when unknown.
        tier: Current tier.
        enrolled_on: Effective date of the enrollment.
        enrolled_at: When the enrollment was recorded (UTC).
        position: Event store position of the last event that changed this profile.
    """

    partner_id: str
    program_id: str
    program_name: str
    currency: str
    time_zone: str
    display_name: str
    region: str
    channel_manager: str
    tier: str
    enrolled_on: date
    enrolled_at: datetime
    position: int


class BalanceView(msgspec.Struct, frozen=True, kw_only=True):
    """A partner's running balance in the program currency.

    Attributes:
        partner_id: The partner's id.
        program_id: The partner's program.
        balance: ``earned - reversed + adjusted``.
        earned: Total of all earnings, positive.
        reversed: Total of all reversals, positive.
        adjusted: Signed total of manual credits and debits.
        line_count: Number of statement lines behind the balance.
        position: Event store position of the last event that changed the
            balance, 0 when the partner has no lines yet.
    """

    partner_id: str
    program_id: str
    balance: MoneyJSON
    earned: MoneyJSON
    reversed: MoneyJSON
    adjusted: MoneyJSON
    line_count: int
    position: int


class StatementLine(msgspec.Struct, frozen=True, kw_only=True):
    """One money-moving event on a statement.

    Attributes:
        effective_date: Date the line counts for, in the program's time zone.
        kind: ``earning``, ``reversal`` or ``adjustment``.
        source_ref: Source reference of the activity, or the adjustment's reference.
        amount: Signed amount: earnings and credits positive, reversals and debits negative.
        explanation: How the amount was reached (rule, base, rate, rounding,
            reason, actor); money values in it are decimal strings.
        position: Event store position of the event behind the line.
        recorded_at: When the event was recorded (UTC).
    """

    effective_date: date
    kind: str
    source_ref: str
    amount: MoneyJSON
    explanation: dict[str, Any]
    position: int
    recorded_at: datetime


class StatementView(msgspec.Struct, frozen=True, kw_only=True):
    """A partner's statement for one calendar month.

    ``closing_balance`` always equals ``opening_balance`` plus the sum of
    ``lines``, because all three are read in one snapshot.

    Attributes:
        partner_id: The partner's id.
        program_id: The partner's program.
        period: The month, ``YYYY-MM``.
        currency: ISO 4217 code of every amount on the statement.
        opening_balance: Sum of every line effective before the period.
        closing_balance: Opening balance plus the period's lines.
        lines: The period's lines, by effective date then position.
    """

    partner_id: str
    program_id: str
    period: str
    currency: str
    opening_balance: MoneyJSON
    closing_balance: MoneyJSON
    lines: list[StatementLine]


class PartnerEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event in a partner's history.

    Attributes:
        position: Event store position, unique per event; the cursor of the history.
        event_type: Event class, such as ``Earning.Earned``.
        stream_id: Id of the stream (aggregate) the event belongs to. An earning
            and its reversals share one stream, as do a partner's enrollment and
            tier changes, so ``(stream_id, stream_version)`` identifies an event.
        stream_version: Version of the event within its stream.
        effective_date: Business date of the event, when it has one.
        recorded_at: When the event was recorded (UTC).
        actor: Who issued the command.
        correlation_id: Request or job id shared by the command's events.
        source_ref: Source reference or idempotency key, empty when none.
        data: The event's own fields.
    """

    position: int
    event_type: str
    stream_id: UUID
    stream_version: int
    effective_date: date | None
    recorded_at: datetime
    actor: str
    correlation_id: str
    source_ref: str
    data: dict[str, Any]


class EventPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of a partner's history.

    Attributes:
        partner_id: The partner's id.
        events: Events with a position after the request's cursor, in position order.
        next_cursor: Pass as ``after`` to read the next page; ``None`` when
            this page reached the end of the history.
    """

    partner_id: str
    events: list[PartnerEvent]
    next_cursor: int | None


class RuleView(msgspec.Struct, frozen=True, kw_only=True):
    """One rule of a published rule set.

    Attributes:
        id: Rule id, shown as ``rule_id`` on earnings and statement lines.
        activity_type: Activity type the rule prices, such as ``deal_won``.
        match: Attribute values an activity must carry for the rule to apply.
        rate: Fraction of the base amount paid, a decimal string such as
            ``"0.045"`` for 4.5%; ``None`` for fixed rules.
        fixed_amount: Reward per activity in the program currency; ``None``
            for rate rules.
        description: The program's wording for the rule, empty when none.
    """

    id: str
    activity_type: str
    match: dict[str, str]
    rate: str | None
    fixed_amount: MoneyJSON | None
    description: str


class RuleSetView(msgspec.Struct, frozen=True, kw_only=True):
    """A published rule set; it prices activities from ``effective_from`` on.

    Attributes:
        version: Rule set version, shown as ``rule_set_version`` on earnings.
        effective_from: First date (program time zone) the set prices, until
            the next version takes effect.
        description: The program's wording for the set, empty when none.
        rules: The set's rules. The most specific rule (most ``match`` keys)
            that matches an activity prices it.
    """

    version: int
    effective_from: date
    description: str
    rules: list[RuleView]


class ProgramView(msgspec.Struct, frozen=True, kw_only=True):
    """A program and every rule set it published.

    Attributes:
        program_id: The program's id.
        name: Display name.
        currency: ISO 4217 code of every reward the program pays.
        time_zone: IANA zone that defines dates and statement periods.
        rounding: Rounding mode applied once per line: half-up, half-even, down or up.
        tiers: Tier names partners may hold, lowest first; empty allows any name.
        rule_sets: Published rule sets in version order.
        position: Event store position of the last event that changed the program.
    """

    program_id: str
    name: str
    currency: str
    time_zone: str
    rounding: str
    tiers: list[str]
    rule_sets: list[RuleSetView]
    position: int


class PartnerSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A partner in a program's partner list.

    Attributes:
        partner_id: The partner's id; the cursor of the list.
        display_name: The partner's display name.
        tier: Current tier.
    """

    partner_id: str
    display_name: str
    tier: str


class PartnerPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of a program's partners, ordered by partner id.

    Attributes:
        program_id: The program's id.
        partners: Partners whose id sorts after the request's cursor.
        next_cursor: Pass as ``after`` to read the next page; ``None`` when
            this page reached the end of the list.
    """

    program_id: str
    partners: list[PartnerSummary]
    next_cursor: str | None


class ProgramSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A program in the list of programs.

    Attributes:
        program_id: The program's id.
        name: Display name.
        currency: ISO 4217 code of every reward the program pays.
        partners: Number of enrolled partners.
    """

    program_id: str
    name: str
    currency: str
    partners: int


class _StoredRule(msgspec.Struct, frozen=True):
    """A rule as the projector stores it in ``statements.programs.rule_sets``."""

    id: str
    activity_type: str
    match: dict[str, str] = {}
    rate: str | None = None
    fixed: str | None = None
    description: str = ""


class _StoredRuleSet(msgspec.Struct, frozen=True):
    version: int
    effective_from: date
    rules: list[_StoredRule]
    description: str = ""


def parse_period(text: str, *, field: str = "period") -> date:
    """Return the first day of the month ``text`` (``YYYY-MM``).

    Raises:
        InvalidInputError: ``text`` is not a year and a month from 01 to 12,
            or the month is outside :data:`FIRST_PERIOD` to :data:`LAST_PERIOD`.
    """
    match = _PERIOD_PATTERN.fullmatch(text)
    if match is None or not 1 <= int(match.group(2)) <= 12:
        raise InvalidInputError(
            f"period {text!r} is not a calendar month; write it as YYYY-MM with a month "
            "from 01 to 12, such as 2016-03",
            field=field,
            value=text,
        )
    # The year is checked as a number, because year 0000 cannot be a Python date.
    year, month = int(match.group(1)), int(match.group(2))
    if not FIRST_PERIOD.year <= year <= LAST_PERIOD.year:
        raise InvalidInputError(
            f"period {text!r} is out of range; ask for a month from "
            f"{_period_text(FIRST_PERIOD)} to {_period_text(LAST_PERIOD)} in YYYY-MM form",
            field=field,
            value=text,
        )
    return date(year, month, 1)


def _period_text(start: date) -> str:
    return f"{start.year:04d}-{start.month:02d}"


def _next_month(start: date) -> date:
    if start.month == 12:
        return date(start.year + 1, 1, 1)
    return date(start.year, start.month + 1, 1)


def _unknown_program(program_id: str) -> NotFoundError:
    return NotFoundError(
        f"program {program_id!r} does not exist; check the id, or, if it was published "
        "moments ago, retry with min_position set to the position the publish returned",
        field="program_id",
        value=program_id,
    )


def _unknown_partner(partner_id: str) -> NotFoundError:
    return NotFoundError(
        f"partner {partner_id!r} does not exist; check the id, or, if it was enrolled "
        "moments ago, retry with min_position set to the enrollment's position",
        field="partner_id",
        value=partner_id,
    )


def _json_value(value: Any) -> Any:
    # asyncpg returns jsonb as text unless the caller installed a codec.
    if isinstance(value, str | bytes):
        return msgspec.json.decode(value)
    return value


def _json_object(value: Any) -> dict[str, Any]:
    decoded = _json_value(value)
    return dict(decoded) if isinstance(decoded, dict) else {"value": decoded}


@contextmanager
def _database_errors() -> Iterator[None]:
    """Translate connection failures and missing read models into ledger errors."""
    try:
        yield
    except asyncpg.UndefinedTableError as error:
        raise StoreUnavailableError(
            f"a read model table is missing ({error}); run `ledger migrate` to create "
            "the projection schemas"
        ) from error
    except (
        OSError,
        TimeoutError,
        asyncpg.PostgresConnectionError,
        asyncpg.CannotConnectNowError,
        asyncpg.TooManyConnectionsError,
    ) as error:
        raise StoreUnavailableError(
            f"the read database is unavailable: {str(error).strip() or type(error).__name__}; "
            "retry the request"
        ) from error


@asynccontextmanager
async def _snapshot(executor: Executor) -> AsyncIterator[asyncpg.Connection]:
    """Yield a connection inside a read-only repeatable-read transaction.

    Queries that read several tables see one consistent state of the
    projections. A caller's connection that is already inside a transaction
    is used as it is, with the caller's isolation level.
    """
    with _database_errors():
        if isinstance(executor, asyncpg.Pool):
            async with (
                executor.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                yield conn
        elif executor.is_in_transaction():
            yield executor
        else:
            async with executor.transaction(isolation="repeatable_read", readonly=True):
                yield executor


async def _partner_row(conn: asyncpg.Connection, partner_id: str) -> asyncpg.Record:
    row = await conn.fetchrow(
        """
        SELECT p.partner_id, p.program_id, p.display_name, p.region, p.channel_manager,
               p.tier, p.enrolled_on, p.enrolled_at, p.position,
               g.name AS program_name, g.currency, g.time_zone
          FROM statements.partners AS p
          JOIN statements.programs AS g USING (program_id)
         WHERE p.partner_id = $1
        """,
        partner_id,
    )
    if row is None:
        raise _unknown_partner(partner_id)
    return row


async def fetch_partner(executor: Executor, partner_id: str) -> PartnerProfile:
    """Return the profile of ``partner_id``.

    Raises:
        NotFoundError: The partner is not in the ``statements`` projection.
        StoreUnavailableError: The database cannot be reached.
    """
    async with _snapshot(executor) as conn:
        row = await _partner_row(conn, partner_id)
    return PartnerProfile(
        partner_id=row["partner_id"],
        program_id=row["program_id"],
        program_name=row["program_name"],
        currency=row["currency"].strip(),
        time_zone=row["time_zone"],
        display_name=row["display_name"],
        region=row["region"],
        channel_manager=row["channel_manager"],
        tier=row["tier"],
        enrolled_on=row["enrolled_on"],
        enrolled_at=row["enrolled_at"],
        position=row["position"],
    )


async def fetch_balance(executor: Executor, partner_id: str) -> BalanceView:
    """Return the balance of ``partner_id`` in its program's currency.

    A partner without statement lines has a zero balance.

    Raises:
        NotFoundError: The partner is not in the ``statements`` projection.
        StoreUnavailableError: The database cannot be reached.
    """
    async with _snapshot(executor) as conn:
        partner = await _partner_row(conn, partner_id)
        currency = partner["currency"].strip()
        row = await conn.fetchrow(
            """
            SELECT earned_minor, reversed_minor, adjusted_minor, balance_minor,
                   line_count, position
              FROM statements.balances
             WHERE partner_id = $1 AND currency = $2
            """,
            partner_id,
            currency,
        )
    values = dict(row) if row is not None else {}
    return BalanceView(
        partner_id=partner_id,
        program_id=partner["program_id"],
        balance=MoneyJSON.from_minor(values.get("balance_minor", 0), currency),
        earned=MoneyJSON.from_minor(values.get("earned_minor", 0), currency),
        reversed=MoneyJSON.from_minor(values.get("reversed_minor", 0), currency),
        adjusted=MoneyJSON.from_minor(values.get("adjusted_minor", 0), currency),
        line_count=values.get("line_count", 0),
        position=values.get("position", 0),
    )


def _currency_unit_sql(column: str) -> str:
    """Return a SQL expression giving one minor unit of ``column``'s currency as numeric.

    The unit is a literal with exactly the currency's minor-unit digits (0.01
    for USD, 1 for JPY, 0.001 for BHD), so ``amount_minor * unit`` prints as
    :meth:`Money.format` does. An unknown currency gives NULL.
    """
    by_exponent: dict[int, list[str]] = {}
    for code, exponent in sorted(CURRENCY_EXPONENTS.items()):
        by_exponent.setdefault(exponent, []).append(f"'{code}'")
    branches = " ".join(
        f"WHEN {column} IN ({', '.join(codes)}) THEN "
        + ("1" if exponent == 0 else "0." + "0" * (exponent - 1) + "1")
        for exponent, codes in sorted(by_exponent.items())
    )
    return f"CASE {branches} END"


# The statement as JSON, built by PostgreSQL in one statement: one snapshot,
# one round trip and one row. The partner's program fixes the currency, so a
# partner without lines still gets a row, with an empty array of lines. Each
# line is the JSON text that msgspec would write for a StatementLine:
# to_json escapes strings as msgspec does, amounts print with the currency's
# digits, and recorded_at is UTC with microseconds only when they are not
# zero. The explanation is embedded as its column's text, which works for a
# json or a jsonb column. Text of a jsonb value has a space after each comma
# and colon, and fetch_statement_json removes these spaces.
_STATEMENT_JSON_QUERY = f"""
    WITH partner AS (
        SELECT p.program_id, g.currency, {_currency_unit_sql("g.currency")} AS unit
          FROM statements.partners AS p
          JOIN statements.programs AS g USING (program_id)
         WHERE p.partner_id = $1
    )
    SELECT partner.program_id, rtrim(partner.currency) AS currency,
           partner.unit IS NOT NULL AS known_currency,
           (SELECT coalesce(sum(t.amount_minor), 0)
              FROM statements.period_totals AS t
             WHERE t.partner_id = $1 AND t.currency = partner.currency AND t.period < $2
           ) AS opening_minor,
           lines.total_minor, lines.json
      FROM partner
     CROSS JOIN LATERAL (
        SELECT coalesce(sum(l.amount_minor), 0) AS total_minor,
               '[' || coalesce(string_agg(
                   '{{"effective_date":"' || to_char(l.effective_date, 'YYYY-MM-DD')
                   || '","kind":' || to_json(l.kind)::text
                   || ',"source_ref":' || to_json(l.source_ref)::text
                   || ',"amount":{{"amount":"' || (l.amount_minor * partner.unit)::text
                   || '","currency":"' || rtrim(partner.currency)
                   || '"}},"explanation":' || l.explanation::text
                   || ',"position":' || l.position::text
                   || ',"recorded_at":"'
                   || to_char(l.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
                   || CASE
                          WHEN date_part('microseconds', l.recorded_at AT TIME ZONE 'UTC')::bigint
                               % 1000000 = 0 THEN ''
                          ELSE to_char(l.recorded_at AT TIME ZONE 'UTC', '.US')
                      END
                   || 'Z"}}',
                   ',' ORDER BY l.effective_date, l.position), '') || ']' AS json
          FROM statements.statement_lines AS l
         WHERE l.partner_id = $1 AND l.currency = partner.currency
           AND l.effective_date >= $2 AND l.effective_date < $3
     ) AS lines
"""


class _StatementDocument(msgspec.Struct, frozen=True, kw_only=True):
    """:class:`StatementView` with its lines as ready JSON; the fields keep its order."""

    partner_id: str
    program_id: str
    period: str
    currency: str
    opening_balance: MoneyJSON
    closing_balance: MoneyJSON
    lines: msgspec.Raw


_STATEMENT_ENCODER = msgspec.json.Encoder()


async def fetch_statement_json(executor: Executor, partner_id: str, period: str) -> bytes:
    """Return the statement of ``partner_id`` for ``period`` as the JSON of a :class:`StatementView`.

    The bytes are those msgspec writes for the :class:`StatementView` that
    :func:`fetch_statement` returns, but PostgreSQL formats the lines, so the
    API passes them on without decoding rows into Python objects. The opening
    balance sums one ``period_totals`` row per earlier month, so its cost does
    not grow with the partner's number of lines.

    Raises:
        InvalidInputError: ``period`` is not ``YYYY-MM``, or the partner's
            program pays in a currency this ledger does not know.
        NotFoundError: The partner is not in the ``statements`` projection.
        StoreUnavailableError: The database cannot be reached.
    """
    start = parse_period(period)
    end = _next_month(start)
    with _database_errors():
        row = await executor.fetchrow(_STATEMENT_JSON_QUERY, partner_id, start, end)
    if row is None:
        raise _unknown_partner(partner_id)
    currency = row["currency"]
    if not row["known_currency"]:
        # Raises the error that names the unknown code.
        currency_exponent(currency)
    opening_minor = int(row["opening_minor"])
    closing_minor = opening_minor + int(row["total_minor"])
    document = _StatementDocument(
        partner_id=partner_id,
        program_id=row["program_id"],
        period=_period_text(start),
        currency=currency,
        opening_balance=MoneyJSON.from_minor(opening_minor, currency),
        closing_balance=MoneyJSON.from_minor(closing_minor, currency),
        # A negative indent removes all whitespace between tokens, which
        # leaves the jsonb explanation text as msgspec would have written it.
        lines=msgspec.Raw(msgspec.json.format(row["json"].encode(), indent=-1)),
    )
    return _STATEMENT_ENCODER.encode(document)


async def fetch_statement(executor: Executor, partner_id: str, period: str) -> StatementView:
    """Return the statement of ``partner_id`` for the month ``period`` (``YYYY-MM``).

    Raises:
        InvalidInputError: ``period`` is not ``YYYY-MM``.
        NotFoundError: The partner is not in the ``statements`` projection.
        StoreUnavailableError: The database cannot be reached.
    """
    document = await fetch_statement_json(executor, partner_id, period)
    return msgspec.json.decode(document, type=StatementView)


async def fetch_partner_events(
    executor: Executor,
    partner_id: str,
    after: int | None = None,
    limit: int = DEFAULT_EVENTS_LIMIT,
) -> EventPage:
    """Return up to ``limit`` events of ``partner_id`` with a position after ``after``.

    Positions are unique and increase in commit order, so paging with
    ``next_cursor`` never repeats or skips an event.

    Raises:
        InvalidInputError: ``limit`` is outside 1..1000 or ``after`` is negative.
        NotFoundError: The ``history`` projection has no event of the partner.
        StoreUnavailableError: The database cannot be reached.
    """
    if not 1 <= limit <= MAX_EVENTS_LIMIT:
        raise InvalidInputError(
            f"limit {limit} is out of range; ask for 1 to {MAX_EVENTS_LIMIT} events per page",
            field="limit",
            value=limit,
        )
    if after is not None and not 0 <= after <= _MAX_POSITION:
        raise InvalidInputError(
            f"after {after} is out of range; pass the next_cursor of the previous page, "
            "or leave it out to start at the first event",
            field="after",
            value=after,
        )

    async with _snapshot(executor) as conn:
        # Fetching one row more than the limit shows whether another page follows.
        rows = await conn.fetch(
            """
            SELECT position, event_type, event_id, event_version, effective_date,
                   recorded_at, actor, correlation_id, source_ref, data
              FROM history.partner_events
             WHERE partner_id = $1 AND position > $2
             ORDER BY position
             LIMIT $3
            """,
            partner_id,
            after or 0,
            limit + 1,
        )
        if not rows:
            # Every partner's history starts with its enrollment, so a partner
            # with no event at all is unknown, not merely at the end.
            known = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM history.partner_events WHERE partner_id = $1)",
                partner_id,
            )
            if not known:
                raise _unknown_partner(partner_id)

    page = rows[:limit]
    events = [
        PartnerEvent(
            position=row["position"],
            event_type=row["event_type"],
            stream_id=row["event_id"],
            stream_version=row["event_version"],
            effective_date=row["effective_date"],
            recorded_at=row["recorded_at"],
            actor=row["actor"],
            correlation_id=row["correlation_id"],
            source_ref=row["source_ref"],
            data=_json_object(row["data"]),
        )
        for row in page
    ]
    next_cursor = page[-1]["position"] if len(rows) > limit else None
    return EventPage(partner_id=partner_id, events=events, next_cursor=next_cursor)


async def fetch_program(executor: Executor, program_id: str) -> ProgramView:
    """Return program ``program_id`` with its rule sets and rules.

    Raises:
        NotFoundError: The program is not in the ``statements`` projection.
        StoreUnavailableError: The database cannot be reached.
    """
    async with _snapshot(executor) as conn:
        row = await conn.fetchrow(
            """
            SELECT program_id, name, currency, time_zone, rounding, tiers, rule_sets, position
              FROM statements.programs
             WHERE program_id = $1
            """,
            program_id,
        )
    if row is None:
        raise _unknown_program(program_id)
    currency = row["currency"].strip()
    stored = msgspec.convert(_json_value(row["rule_sets"]), list[_StoredRuleSet])
    return ProgramView(
        program_id=row["program_id"],
        name=row["name"],
        currency=currency,
        time_zone=row["time_zone"],
        rounding=row["rounding"],
        tiers=msgspec.convert(_json_value(row["tiers"]), list[str]),
        rule_sets=[
            _rule_set_view(rule_set, currency)
            for rule_set in sorted(stored, key=lambda rule_set: rule_set.version)
        ],
        position=row["position"],
    )


def _rule_set_view(rule_set: _StoredRuleSet, currency: str) -> RuleSetView:
    return RuleSetView(
        version=rule_set.version,
        effective_from=rule_set.effective_from,
        description=rule_set.description,
        rules=[
            RuleView(
                id=rule.id,
                activity_type=rule.activity_type,
                match=dict(rule.match),
                rate=rule.rate,
                # Publishing checked that the fixed amount fits the currency.
                fixed_amount=None
                if rule.fixed is None
                else MoneyJSON.from_money(Money.parse(rule.fixed, currency)),
                description=rule.description,
            )
            for rule in rule_set.rules
        ],
    )


async def fetch_programs(executor: Executor) -> list[ProgramSummary]:
    """Return every program, ordered by id, with its number of partners.

    Raises:
        StoreUnavailableError: The database cannot be reached.
    """
    with _database_errors():
        rows = await executor.fetch(
            """
            SELECT g.program_id, g.name, g.currency,
                   (SELECT count(*) FROM statements.partners AS p
                     WHERE p.program_id = g.program_id) AS partners
              FROM statements.programs AS g
             ORDER BY g.program_id
            """
        )
    return [
        ProgramSummary(
            program_id=row["program_id"],
            name=row["name"],
            currency=row["currency"].strip(),
            partners=row["partners"],
        )
        for row in rows
    ]


async def fetch_program_partners(
    executor: Executor,
    program_id: str,
    after: str | None = None,
    limit: int = DEFAULT_PARTNERS_LIMIT,
) -> PartnerPage:
    """Return up to ``limit`` partners of ``program_id`` whose id sorts after ``after``.

    Partner ids are unique, so paging with ``next_cursor`` never repeats or
    skips a partner that was enrolled before the first page was read.

    Raises:
        InvalidInputError: ``limit`` is outside 1..1000.
        NotFoundError: The program is not in the ``statements`` projection.
        StoreUnavailableError: The database cannot be reached.
    """
    if not 1 <= limit <= MAX_PARTNERS_LIMIT:
        raise InvalidInputError(
            f"limit {limit} is out of range; ask for 1 to {MAX_PARTNERS_LIMIT} partners per page",
            field="limit",
            value=limit,
        )

    async with _snapshot(executor) as conn:
        known = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM statements.programs WHERE program_id = $1)",
            program_id,
        )
        if not known:
            raise _unknown_program(program_id)
        # Fetching one row more than the limit shows whether another page follows.
        rows = await conn.fetch(
            """
            SELECT partner_id, display_name, tier
              FROM statements.partners
             WHERE program_id = $1 AND partner_id > $2
             ORDER BY partner_id
             LIMIT $3
            """,
            program_id,
            after or "",
            limit + 1,
        )

    page = rows[:limit]
    partners = [
        PartnerSummary(
            partner_id=row["partner_id"], display_name=row["display_name"], tier=row["tier"]
        )
        for row in page
    ]
    next_cursor = page[-1]["partner_id"] if len(rows) > limit else None
    return PartnerPage(program_id=program_id, partners=partners, next_cursor=next_cursor)
