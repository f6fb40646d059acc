"""The partner aggregate: enrollment, profile and tier.

Earnings and adjustments are separate streams keyed by their source reference
or idempotency key. A partner's own stream therefore stays short however many
earnings the partner accumulates, and recording an activity only reads it.
"""

from __future__ import annotations

from datetime import date

from eventsourcing.domain import Aggregate

from ledger.domain.ids import partner_id_uuid
from ledger.errors import InvalidInputError

__all__ = ["Partner", "check_partner_id"]

_MAX_ID_LENGTH = 100


def check_partner_id(partner_id: str, *, field: str = "partner_id") -> str:
    """Return ``partner_id`` if it is a valid slug, else raise :class:`InvalidInputError`."""
    if (
        not partner_id
        or len(partner_id) > _MAX_ID_LENGTH
        or not all(c.isalnum() or c in "-_." for c in partner_id)
    ):
        raise InvalidInputError(
            f"partner id {partner_id!r} must be 1 to {_MAX_ID_LENGTH} letters, digits, "
            "'-', '_' or '.', such as darcel-schlecht",
            field=field,
            value=partner_id,
        )
    return partner_id


class Partner(Aggregate):
    """A partner enrolled in one program."""

    class Enrolled(Aggregate.Created):
        partner_id: str
        program_id: str
        display_name: str
        region: str
        channel_manager: str
        tier: str
        effective_date: date
        actor: str
        source_ref: str
        correlation_id: str

    class TierChanged(Aggregate.Event):
        """The partner moved from one tier to another.

        Version 2 added ``reason``; version-1 events load with an empty reason.
        """

        class_version = 2

        from_tier: str
        to_tier: str
        effective_date: date
        reason: str
        actor: str
        idempotency_key: str
        correlation_id: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, object]) -> None:
            state["reason"] = ""

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Partner)
            aggregate.tier = self.to_tier
            aggregate.tier_since = self.effective_date

    def __init__(
        self,
        partner_id: str,
        program_id: str,
        display_name: str,
        region: str,
        channel_manager: str,
        tier: str,
        effective_date: date,
        actor: str,
        source_ref: str,
        correlation_id: str,
    ) -> None:
        self.partner_id = partner_id
        self.program_id = program_id
        self.display_name = display_name
        self.region = region
        self.channel_manager = channel_manager
        self.tier = tier
        self.initial_tier = tier
        self.enrolled_on = effective_date
        self.tier_since = effective_date

    @classmethod
    def enroll(
        cls,
        *,
        partner_id: str,
        program_id: str,
        display_name: str,
        region: str,
        channel_manager: str,
        tier: str,
        effective_date: date,
        actor: str,
        source_ref: str,
        correlation_id: str,
    ) -> Partner:
        """Enroll a new partner after checking its id and tier."""
        check_partner_id(partner_id)
        if not display_name.strip():
            raise InvalidInputError(
                f"partner {partner_id!r} has an empty display name", field="display_name"
            )
        if not tier.strip():
            raise InvalidInputError(f"partner {partner_id!r} has an empty tier", field="tier")
        return cls._create(
            cls.Enrolled,
            id=partner_id_uuid(partner_id),
            partner_id=partner_id,
            program_id=program_id,
            display_name=display_name,
            region=region,
            channel_manager=channel_manager,
            tier=tier,
            effective_date=effective_date,
            actor=actor,
            source_ref=source_ref,
            correlation_id=correlation_id,
        )

    def check_on_or_after_enrollment(self, on: date, *, field: str = "effective_date") -> None:
        """Reject ``on`` when it precedes the partner's enrollment date."""
        if on < self.enrolled_on:
            raise InvalidInputError(
                f"{field} {on.isoformat()} is before partner {self.partner_id!r} enrolled on "
                f"{self.enrolled_on.isoformat()}; use {self.enrolled_on.isoformat()} or later",
                field=field,
                value=on.isoformat(),
            )

    def change_tier(
        self,
        *,
        to_tier: str,
        effective_date: date,
        reason: str,
        actor: str,
        idempotency_key: str,
        correlation_id: str,
    ) -> None:
        """Move the partner to ``to_tier`` from ``effective_date`` on.

        Tier history is linear: a change may not predate enrollment or the
        current tier's start, and moving to the current tier is rejected.
        """
        if not to_tier.strip():
            raise InvalidInputError("tier must not be empty", field="tier", value=to_tier)
        if effective_date < self.tier_since:
            raise InvalidInputError(
                f"tier change effective {effective_date.isoformat()} predates the current "
                f"tier {self.tier!r} of partner {self.partner_id!r}, held since "
                f"{self.tier_since.isoformat()}; tier changes are recorded in date order, so "
                f"use {self.tier_since.isoformat()} or later",
                field="effective_date",
                value=effective_date.isoformat(),
            )
        if to_tier == self.tier:
            raise InvalidInputError(
                f"partner {self.partner_id!r} is already in tier {to_tier!r}; send "
                "another tier to change it",
                field="tier",
                value=to_tier,
            )
        if not reason.strip():
            raise InvalidInputError(
                'reason is empty; say why the tier changes, for example "annual review"',
                field="reason",
            )
        self.trigger_event(
            self.TierChanged,
            from_tier=self.tier,
            to_tier=to_tier,
            effective_date=effective_date,
            reason=reason,
            actor=actor,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
        )
