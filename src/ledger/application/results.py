"""Command results: each outcome, whether it is new, and its event position."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from uuid import UUID

from ledger.domain.money import Money

__all__ = [
    "ActivityOutcome",
    "AdjustmentOutcome",
    "EarningView",
    "EnrollmentOutcome",
    "PartnerView",
    "ProgramOutcome",
    "ReversalOutcome",
    "TierOutcome",
]


@dataclass(frozen=True, slots=True)
class EarningView:
    """An earning as recorded, with the pricing it froze."""

    earning_id: UUID
    program_id: str
    partner_id: str
    activity_type: str
    source_ref: str
    effective_date: date
    attributes: dict[str, str]
    base_amount: Money | None
    rule_set_version: int
    rule_id: str
    rate: Decimal | None
    fixed_amount: Money | None
    unrounded_minor: Decimal
    rounding: str
    amount: Money
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class ActivityOutcome:
    """Result of recording one activity.

    Attributes:
        created: False when an identical earlier request was found instead.
        earning: The earning, new or original.
        position: Event store position of the earning's first event.
    """

    created: bool
    earning: EarningView
    position: int


@dataclass(frozen=True, slots=True)
class EnrollmentOutcome:
    """Result of enrolling a partner.

    Attributes:
        created: False when the partner was already enrolled with these details.
        position: Event store position of the enrollment event.
        tier: The starting tier, the program's lowest when the request named none.
    """

    created: bool
    position: int
    tier: str


@dataclass(frozen=True, slots=True)
class AdjustmentOutcome:
    """Result of recording an adjustment."""

    created: bool
    adjustment_id: UUID
    partner_id: str
    amount: Money
    effective_date: date
    reason: str
    source_ref: str
    idempotency_key: str
    recorded_at: datetime
    position: int


@dataclass(frozen=True, slots=True)
class ReversalOutcome:
    """Result of reversing an earning."""

    created: bool
    partner_id: str
    source_ref: str
    reversed_amount: Money
    remaining_amount: Money
    effective_date: date
    reason: str
    idempotency_key: str
    position: int


@dataclass(frozen=True, slots=True)
class TierOutcome:
    """Result of changing a partner's tier."""

    created: bool
    partner_id: str
    from_tier: str
    to_tier: str
    effective_date: date
    reason: str
    idempotency_key: str
    position: int


@dataclass(frozen=True, slots=True)
class PartnerView:
    """A partner as stored on the write side."""

    partner_id: str
    program_id: str
    display_name: str
    region: str
    channel_manager: str
    tier: str
    enrolled_on: date


@dataclass(frozen=True, slots=True)
class ProgramOutcome:
    """Result of publishing a program file.

    Attributes:
        created: True if the program itself was new.
        published_versions: Rule set versions appended by this call.
        unchanged_versions: Versions already published with identical content.
        position: Highest event position written, or the program's last one.
    """

    program_id: str
    created: bool
    published_versions: list[int]
    unchanged_versions: list[int]
    position: int
