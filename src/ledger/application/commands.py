"""Commands the application accepts, already decoded into domain types.

Entry points (HTTP, CLI, importers) decode untrusted input into these frozen
objects; the application trusts their types and checks the domain rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import date
from typing import Any

import msgspec

from ledger.domain.money import Money
from ledger.domain.rules import RuleSet
from ledger.domain.text import reject_nul

__all__ = [
    "ChangeTier",
    "CommandContext",
    "EnrollPartner",
    "ProgramSpec",
    "RecordActivity",
    "RecordAdjustment",
    "ReverseEarning",
]


def _check_text(command: Any) -> None:
    """Reject NUL characters in every text field of a command dataclass."""
    for item in fields(command):
        reject_nul(item.name, getattr(command, item.name))


@dataclass(frozen=True, slots=True)
class CommandContext:
    """The actor and the request or job a command belongs to.

    Attributes:
        actor: Authenticated user, service or CLI user that issued the command.
        correlation_id: Id shared by every event and log line of one request or job.
    """

    actor: str
    correlation_id: str

    def __post_init__(self) -> None:
        _check_text(self)


class ProgramSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A program definition as published from a TOML file.

    Attributes:
        id: Program id, letters, digits, '-' and '_'.
        name: Display name.
        currency: ISO 4217 code of every reward the program pays.
        time_zone: IANA zone that defines dates and statement periods.
        rounding: Rounding mode applied once per line: half-up, half-even, down, up.
        rule_sets: Rule sets in version order.
        tiers: Tier names partners may hold, lowest first; empty allows any name.
    """

    id: str
    name: str
    currency: str
    rule_sets: list[RuleSet]
    time_zone: str = "UTC"
    rounding: str = "half-up"
    tiers: list[str] = []

    def __post_init__(self) -> None:
        reject_nul("program", msgspec.to_builtins(self))


@dataclass(frozen=True, slots=True)
class EnrollPartner:
    """Enroll ``partner_id`` in a program; ``tier`` defaults to the program's lowest tier."""

    partner_id: str
    display_name: str
    effective_date: date
    region: str = ""
    channel_manager: str = ""
    tier: str | None = None
    source_ref: str = ""

    def __post_init__(self) -> None:
        _check_text(self)


@dataclass(frozen=True, slots=True)
class RecordActivity:
    """Record an activity; its source reference is unique within the program."""

    partner_id: str
    activity_type: str
    source_ref: str
    effective_date: date
    base_amount: Money | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_text(self)


@dataclass(frozen=True, slots=True)
class RecordAdjustment:
    """Credit (positive) or debit (negative) a partner, with a reason."""

    amount: Money
    effective_date: date
    reason: str
    source_ref: str = ""

    def __post_init__(self) -> None:
        _check_text(self)


@dataclass(frozen=True, slots=True)
class ReverseEarning:
    """Reverse all or part of the earning recorded for ``source_ref``.

    Set at most one of ``amount`` (reward to reverse) and ``base_amount`` (part
    of the base clawed back, priced at the earning's frozen rate). With neither,
    the whole remaining reward is reversed.
    """

    source_ref: str
    effective_date: date
    reason: str
    amount: Money | None = None
    base_amount: Money | None = None

    def __post_init__(self) -> None:
        _check_text(self)


@dataclass(frozen=True, slots=True)
class ChangeTier:
    """Move a partner to ``tier``."""

    tier: str
    effective_date: date
    reason: str

    def __post_init__(self) -> None:
        _check_text(self)
