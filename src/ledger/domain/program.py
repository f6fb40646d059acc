"""The program aggregate: reward currency, time zone, rounding and rule sets."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from eventsourcing.domain import Aggregate

from ledger.domain.ids import program_id_uuid
from ledger.domain.money import RoundingMode, currency_exponent
from ledger.domain.rules import RuleSet, rule_set_in_force
from ledger.errors import ConflictError, InvalidInputError

__all__ = ["Program", "check_time_zone"]


def check_time_zone(name: str) -> ZoneInfo:
    """Return the IANA zone ``name``; raise :class:`InvalidInputError` if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInputError(
            f"time zone {name!r} is not an IANA zone name; use one such as UTC or Europe/Berlin",
            field="time_zone",
            value=name,
        ) from None


class Program(Aggregate):
    """A partner program. Rule sets are appended, never edited or removed.

    A new rule set must carry the next version and an ``effective_from`` after
    the previous set's, so publishing never re-prices a date that an earlier
    set already covered. Earnings freeze their pricing when recorded, so a new
    set never changes them either.
    """

    class Created(Aggregate.Created):
        """The program was created.

        Version 2 added ``tiers``; version-1 events load with no tier list.
        """

        class_version = 2

        program_id: str
        name: str
        currency: str
        time_zone: str
        rounding: str
        tiers: list[str]
        actor: str
        correlation_id: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, object]) -> None:
            state["tiers"] = []

    class RuleSetPublished(Aggregate.Event):
        rule_set: dict[str, Any]
        actor: str
        correlation_id: str

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Program)
            aggregate.rule_sets.append(msgspec.convert(self.rule_set, RuleSet))

    def __init__(
        self,
        program_id: str,
        name: str,
        currency: str,
        time_zone: str,
        rounding: str,
        tiers: list[str],
        actor: str,
        correlation_id: str,
    ) -> None:
        self.program_id = program_id
        self.name = name
        self.currency = currency
        self.time_zone = time_zone
        self.rounding = RoundingMode(rounding)
        self.tiers = list(tiers)
        self.rule_sets: list[RuleSet] = []

    @classmethod
    def create(
        cls,
        *,
        program_id: str,
        name: str,
        currency: str,
        time_zone: str,
        rounding: RoundingMode,
        tiers: Sequence[str] = (),
        actor: str,
        correlation_id: str,
    ) -> Program:
        """Create a program after checking currency, time zone and tier names."""
        if not program_id or not program_id.replace("-", "").replace("_", "").isalnum():
            raise InvalidInputError(
                f"program id {program_id!r} must be letters, digits, '-' or '_'",
                field="id",
                value=program_id,
            )
        currency_exponent(currency)
        check_time_zone(time_zone)
        if len(set(tiers)) != len(tiers) or not all(tier.strip() for tier in tiers):
            raise InvalidInputError(
                f"tiers {list(tiers)} must be distinct, non-empty names, lowest tier first",
                field="tiers",
                value=", ".join(tiers),
            )
        return cls._create(
            cls.Created,
            id=program_id_uuid(program_id),
            program_id=program_id,
            name=name,
            currency=currency,
            time_zone=time_zone,
            rounding=rounding.value,
            tiers=list(tiers),
            actor=actor,
            correlation_id=correlation_id,
        )

    @property
    def zone(self) -> ZoneInfo:
        """The program's time zone, which defines calendar dates and periods."""
        return ZoneInfo(self.time_zone)

    def publish(self, rule_set: RuleSet, *, actor: str, correlation_id: str) -> bool:
        """Append ``rule_set``; return False if the same version is already identical.

        Raises:
            ConflictError: The version exists with other content.
            InvalidInputError: The version or date does not follow the last set.
        """
        rule_set.validate(self.currency)
        for existing in self.rule_sets:
            if existing.version == rule_set.version:
                if existing == rule_set:
                    return False
                raise ConflictError(
                    f"rule set version {rule_set.version} of program {self.program_id!r} is "
                    "already published with different content; published rule sets never "
                    f"change, so publish the change as version {self.rule_sets[-1].version + 1}",
                    field="rule_sets.version",
                    value=rule_set.version,
                )
        if self.rule_sets:
            last = self.rule_sets[-1]
            if rule_set.version != last.version + 1:
                raise InvalidInputError(
                    f"rule set version {rule_set.version} does not follow the latest version "
                    f"{last.version}; publish version {last.version + 1}",
                    field="rule_sets.version",
                    value=rule_set.version,
                )
            if rule_set.effective_from <= last.effective_from:
                raise InvalidInputError(
                    f"rule set {rule_set.version} takes effect on "
                    f"{rule_set.effective_from.isoformat()}, not after version {last.version} "
                    f"({last.effective_from.isoformat()}); rules never change retroactively, "
                    "so choose a later effective_from",
                    field="rule_sets.effective_from",
                    value=rule_set.effective_from.isoformat(),
                )
        self.trigger_event(
            self.RuleSetPublished,
            rule_set=msgspec.to_builtins(rule_set, builtin_types=(date, Decimal)),
            actor=actor,
            correlation_id=correlation_id,
        )
        return True

    def today(self) -> date:
        """Return the current calendar date in the program's time zone."""
        return datetime.now(self.zone).date()

    def check_not_future(self, on: date, *, field: str = "effective_date") -> None:
        """Reject ``on`` when it is later than today in the program's time zone.

        Raises:
            InvalidInputError: ``on`` is in the future.
        """
        today = self.today()
        if on > today:
            raise InvalidInputError(
                f"{field} {on.isoformat()} is in the future (today is {today.isoformat()} in "
                f"{self.time_zone}); record an entry once it has happened",
                field=field,
                value=on.isoformat(),
            )

    @property
    def default_tier(self) -> str:
        """The tier a partner starts in: the program's lowest, or ``registered``."""
        return self.tiers[0] if self.tiers else "registered"

    def check_tier(self, tier: str, *, field: str = "tier") -> None:
        """Reject ``tier`` when the program lists tiers and ``tier`` is not one of them."""
        if self.tiers and tier not in self.tiers:
            raise InvalidInputError(
                f"tier {tier!r} is not a tier of program {self.program_id!r}; use one of "
                f"{', '.join(self.tiers)}",
                field=field,
                value=tier,
            )

    def rule_set_on(self, on: date) -> RuleSet:
        """Return the rule set in force on ``on`` (see :func:`rule_set_in_force`)."""
        return rule_set_in_force(self.rule_sets, on)

    @property
    def uuid(self) -> UUID:
        """Stream id of this program."""
        return self.id
