"""Request and response bodies of the HTTP API, as msgspec Structs.

Request bodies are decoded once, at the edge, by Litestar with these types:
unknown fields are rejected, money is ``{"amount": "47.43", "currency": "USD"}``
with the amount as a string (a JSON number is a validation error, never a
float), and dates are ``YYYY-MM-DD``. :func:`parse_money` then turns the text
into exact minor units with :meth:`Money.parse`, which rejects more fraction
digits than the currency has. Read responses reuse the Structs of
:mod:`ledger.queries`.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

import msgspec

from ledger.application.results import (
    ActivityOutcome,
    AdjustmentOutcome,
    ReversalOutcome,
    TierOutcome,
)
from ledger.domain.money import CURRENCY_EXPONENTS, Money, currency_exponent
from ledger.errors import InvalidInputError
from ledger.queries import MoneyJSON

__all__ = [
    "ActivityRequest",
    "AdjustmentRequest",
    "AdjustmentResponse",
    "EarningResponse",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "ErrorDetail",
    "HealthResponse",
    "MoneyInput",
    "ProblemDocument",
    "ProblemTypeDoc",
    "ProjectionHealth",
    "ReversalRequest",
    "ReversalResponse",
    "TierRequest",
    "TierResponse",
    "ValueDifference",
    "parse_money",
]

# Upper bounds on free-text fields, so one request cannot store megabytes of text.
_ID_TEXT = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
_REASON_TEXT = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=2000,
        description="Why the change is made; shown on statements and in the history.",
    ),
]
_DATE = Annotated[
    date,
    msgspec.Meta(description="Business date in the program's time zone, YYYY-MM-DD."),
]


class MoneyInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Money in a request: a decimal string and an ISO 4217 code."""

    amount: Annotated[
        str,
        msgspec.Meta(
            description=(
                "Decimal string with at most the currency's minor-unit digits, "
                'such as "47.43" (USD), "4743" (JPY) or "47.430" (BHD). '
                "JSON numbers are rejected."
            ),
            examples=["47.43"],
            max_length=40,
        ),
    ]
    currency: Annotated[
        str,
        msgspec.Meta(
            description="ISO 4217 code.",
            examples=["USD"],
            min_length=3,
            max_length=3,
        ),
    ]


# Pattern of an API amount: "47.43", "-5" and "0.250" match; " 5", "+5", "5." and ".5" do not.
_PLAIN_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def parse_money(value: MoneyInput, field: str) -> Money:
    """Return ``value`` as exact :class:`Money`, naming ``field`` in any error.

    Raises:
        InvalidInputError: The currency is unknown (field ``<field>.currency``),
            or the amount is not a decimal string with at most the currency's
            minor-unit digits (field ``<field>.amount``).
    """
    currency_exponent(value.currency, field=f"{field}.currency")
    if _PLAIN_DECIMAL.fullmatch(value.amount) is None:
        raise InvalidInputError(
            f"{field}.amount {value.amount!r} is not a plain decimal string; send digits "
            'with an optional leading "-" and, if any, digits after the point, such as '
            '"47.43", with no spaces or "+"',
            field=f"{field}.amount",
            value=value.amount,
        )
    return Money.parse(value.amount, value.currency, field=f"{field}.amount")


class EnrollmentRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A partner to enroll in the program; unique by ``partner_id`` across programs."""

    partner_id: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=100,
            description=(
                "New partner's id: letters, digits, '-', '_' or '.', such as darcel-schlecht. "
                "Sending the same enrollment again returns the original."
            ),
        ),
    ]
    display_name: Annotated[
        str, msgspec.Meta(min_length=1, max_length=200, description="Name shown on statements.")
    ]
    effective_date: Annotated[
        date,
        msgspec.Meta(
            description=(
                "Enrollment date in the program's time zone, YYYY-MM-DD, not later than "
                "today; activities, adjustments and tier changes may not predate it."
            )
        ),
    ]
    region: Annotated[
        str, msgspec.Meta(max_length=200, description="Sales region, empty when unknown.")
    ] = ""
    channel_manager: Annotated[
        str,
        msgspec.Meta(
            max_length=200, description="Channel manager responsible, empty when unknown."
        ),
    ] = ""
    tier: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=100,
                description=(
                    "Starting tier, one of the program's tiers when it lists them; "
                    "default the program's lowest tier."
                ),
            ),
        ]
        | None
    ) = None
    source_ref: Annotated[
        str,
        msgspec.Meta(max_length=200, description="Id of the partner in its source system, if any."),
    ] = ""


class ActivityRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An activity to price and record, unique by ``source_ref`` within the program."""

    partner_id: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=100,
            description="Enrolled partner the activity belongs to.",
        ),
    ]
    activity_type: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=200,
            description="Activity type a rule prices, such as deal_won.",
        ),
    ]
    source_ref: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=200,
            description=(
                "Id of the activity in its source system. Sending it again with the "
                "same content returns the original earning."
            ),
        ),
    ]
    effective_date: _DATE
    base_amount: MoneyInput | None = None
    attributes: dict[str, str] = {}


class AdjustmentRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A manual credit (positive amount) or debit (negative amount)."""

    amount: MoneyInput
    effective_date: _DATE
    reason: _REASON_TEXT
    source_ref: Annotated[
        str,
        msgspec.Meta(
            max_length=200,
            description="Reference shown on the statement; defaults to the Idempotency-Key.",
        ),
    ] = ""


class ReversalRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Reverse all or part of an earning.

    Send ``amount`` (reward to take back) or ``base_amount`` (part of the base
    clawed back, priced at the earning's frozen rate), or neither to reverse
    everything that remains.
    """

    source_ref: _ID_TEXT
    effective_date: _DATE
    reason: _REASON_TEXT
    amount: MoneyInput | None = None
    base_amount: MoneyInput | None = None


class TierRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Move a partner to another tier."""

    tier: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    effective_date: _DATE
    reason: _REASON_TEXT


def _decimal_text(value: Decimal) -> str:
    # Positional notation: str() would print 1E+1 for some exact values.
    return format(value, "f")


def _major_units_text(value_minor: Decimal, exponent: int) -> str:
    """Return a fractional count of minor units as exact major units.

    Shifting the exponent of the tuple form is exact, whereas ``scaleb``
    rounds to the context precision of 28 digits.
    """
    if not value_minor.is_finite():
        return str(value_minor)
    sign, digits, value_exponent = value_minor.as_tuple()
    assert isinstance(value_exponent, int)
    return _decimal_text(Decimal((sign, digits, value_exponent - exponent)))


class EarningResponse(msgspec.Struct, frozen=True, kw_only=True):
    """An earning with the pricing it froze when it was recorded.

    Attributes:
        created: False when an identical earlier request was found instead.
        earning_id: Stream id of the earning.
        rule_set_version: Version of the rule set in force on the effective date.
        rule_id: The rule that priced the activity.
        base_amount: The activity's base amount, when it has one.
        rate: The rule's rate as a decimal string, for rate rules.
        fixed_amount: The rule's fixed reward, for fixed rules.
        unrounded: Exact reward before rounding, a decimal string in major
            units that may carry more digits than the currency has.
        rounding: Rounding mode applied once: half-up, half-even, down or up.
        amount: The reward, rounded to the currency's minor unit.
        recorded_at: When the earning was recorded (UTC).
        position: Event store position; pass it as ``min_position`` to read it back.
    """

    created: bool
    earning_id: UUID
    program_id: str
    partner_id: str
    activity_type: str
    source_ref: str
    effective_date: date
    attributes: dict[str, str]
    base_amount: MoneyJSON | None
    rule_set_version: int
    rule_id: str
    rate: str | None
    fixed_amount: MoneyJSON | None
    unrounded: str
    rounding: str
    amount: MoneyJSON
    recorded_at: datetime
    position: int

    @classmethod
    def from_outcome(cls, outcome: ActivityOutcome) -> EarningResponse:
        """Return the response body for a recorded activity."""
        earning = outcome.earning
        exponent = CURRENCY_EXPONENTS[earning.amount.currency]
        return cls(
            created=outcome.created,
            earning_id=earning.earning_id,
            program_id=earning.program_id,
            partner_id=earning.partner_id,
            activity_type=earning.activity_type,
            source_ref=earning.source_ref,
            effective_date=earning.effective_date,
            attributes=dict(earning.attributes),
            base_amount=_money_or_none(earning.base_amount),
            rule_set_version=earning.rule_set_version,
            rule_id=earning.rule_id,
            rate=None if earning.rate is None else _decimal_text(earning.rate),
            fixed_amount=_money_or_none(earning.fixed_amount),
            unrounded=_major_units_text(earning.unrounded_minor, exponent),
            rounding=earning.rounding,
            amount=MoneyJSON.from_money(earning.amount),
            recorded_at=earning.recorded_at,
            position=outcome.position,
        )


def _money_or_none(money: Money | None) -> MoneyJSON | None:
    return None if money is None else MoneyJSON.from_money(money)


class EnrollmentResponse(msgspec.Struct, frozen=True, kw_only=True):
    """An enrolled partner.

    Attributes:
        created: False when an identical earlier enrollment was found instead.
        tier: The tier the partner was enrolled in; ``GET /v1/partners/{id}``
            shows the current tier.
        enrolled_on: Effective date of the enrollment.
        position: Event store position of the enrollment; pass it as
            ``min_position`` to read the partner back.
    """

    created: bool
    partner_id: str
    program_id: str
    display_name: str
    region: str
    channel_manager: str
    tier: str
    enrolled_on: date
    position: int


class AdjustmentResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A recorded adjustment; ``position`` can be passed as ``min_position``."""

    created: bool
    adjustment_id: UUID
    partner_id: str
    amount: MoneyJSON
    effective_date: date
    reason: str
    source_ref: str
    idempotency_key: str
    recorded_at: datetime
    position: int

    @classmethod
    def from_outcome(cls, outcome: AdjustmentOutcome) -> AdjustmentResponse:
        """Return the response body for a recorded adjustment."""
        return cls(
            created=outcome.created,
            adjustment_id=outcome.adjustment_id,
            partner_id=outcome.partner_id,
            amount=MoneyJSON.from_money(outcome.amount),
            effective_date=outcome.effective_date,
            reason=outcome.reason,
            source_ref=outcome.source_ref,
            idempotency_key=outcome.idempotency_key,
            recorded_at=outcome.recorded_at,
            position=outcome.position,
        )


class ReversalResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A recorded reversal and what remains of the earning afterwards."""

    created: bool
    partner_id: str
    source_ref: str
    reversed_amount: MoneyJSON
    remaining_amount: MoneyJSON
    effective_date: date
    reason: str
    idempotency_key: str
    position: int

    @classmethod
    def from_outcome(cls, outcome: ReversalOutcome) -> ReversalResponse:
        """Return the response body for a recorded reversal."""
        return cls(
            created=outcome.created,
            partner_id=outcome.partner_id,
            source_ref=outcome.source_ref,
            reversed_amount=MoneyJSON.from_money(outcome.reversed_amount),
            remaining_amount=MoneyJSON.from_money(outcome.remaining_amount),
            effective_date=outcome.effective_date,
            reason=outcome.reason,
            idempotency_key=outcome.idempotency_key,
            position=outcome.position,
        )


class TierResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A recorded tier change."""

    created: bool
    partner_id: str
    from_tier: str
    to_tier: str
    effective_date: date
    reason: str
    idempotency_key: str
    position: int

    @classmethod
    def from_outcome(cls, outcome: TierOutcome) -> TierResponse:
        """Return the response body for a recorded tier change."""
        return cls(
            created=outcome.created,
            partner_id=outcome.partner_id,
            from_tier=outcome.from_tier,
            to_tier=outcome.to_tier,
            effective_date=outcome.effective_date,
            reason=outcome.reason,
            idempotency_key=outcome.idempotency_key,
            position=outcome.position,
        )


class ProjectionHealth(msgspec.Struct, frozen=True, kw_only=True):
    """How far one projection has read the event store.

    Attributes:
        name: Projection name: statements, journal or history.
        position: Position of the last event the projection applied.
        head: Highest position in the event store.
        lag: ``head - position``: events not yet applied.
        error: The error this server's projector met applying the projection
            and is retrying after; ``None`` when its last batch succeeded.
    """

    name: str
    position: int
    head: int
    lag: int
    error: str | None = None


class HealthResponse(msgspec.Struct, frozen=True, kw_only=True):
    """Service health.

    Attributes:
        status: ``ok``, ``degraded`` (the in-process projector has stopped or
            keeps failing on a projection) or ``unavailable`` (the database
            cannot be reached).
        database: True when the database replied to a query.
        projector: ``running``, ``failing`` (retrying a projection it could
            not apply), ``stopped``, ``failed`` or ``external`` (this process
            does not run the projector).
        projections: Position, head and lag of each projection.
    """

    status: str
    database: bool
    projector: str
    projections: list[ProjectionHealth]


class ErrorDetail(msgspec.Struct, frozen=True, kw_only=True):
    """One problem with the request.

    Attributes:
        field: Dotted path of the JSON field (``base_amount.amount``), or the
            name of the path parameter, query parameter or header at fault.
        value: The rejected value, when the service could read it.
        message: What is wrong and how to fix it.
    """

    field: str | None
    value: Any = None
    message: str


class ValueDifference(msgspec.Struct, frozen=True, kw_only=True):
    """A field whose value differs between the original request and a retry."""

    field: str
    stored: Any
    requested: Any


class ProblemDocument(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An RFC 9457 problem document (``application/problem+json``).

    Attributes:
        type: URI reference of the problem type; ``GET`` it for a description.
        title: Short summary of the problem type.
        status: HTTP status code.
        detail: What went wrong in this request and how to fix it.
        instance: Path of the request that failed.
        request_id: The request's ``X-Request-ID``, also found in the service logs.
        errors: One entry per field at fault; empty when no single field is.
        differences: For conflicts, each field whose value differs from the
            original request.
        projections: For lagging reads, the position of each projection the read needs.
    """

    type: str
    title: str
    status: int
    detail: str
    instance: str
    request_id: str
    errors: list[ErrorDetail]
    differences: list[ValueDifference] | None = None
    projections: list[ProjectionHealth] | None = None


class ProblemTypeDoc(msgspec.Struct, frozen=True, kw_only=True):
    """Description of one problem type, served at its ``type`` URI."""

    type: str
    title: str
    status: int
    description: str
