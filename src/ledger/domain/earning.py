"""The earning aggregate: one rewarded activity and any reversals of it.

Each activity is its own short stream whose id derives from the program and
the activity's source reference. Its first event freezes the pricing: rule set
version, rule, base, rate or fixed amount, unrounded result and rounding mode.
Reversals are later events on the same stream, priced only from those frozen
values and never from the rules in force today.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from typing import Any

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

from ledger.domain.ids import earning_id
from ledger.domain.money import Money, RoundingMode, apply_rate
from ledger.domain.rules import Reward
from ledger.errors import InvalidInputError

__all__ = ["Earning"]


class Earning(Aggregate):
    """An activity that earned a reward, with its running reversed total."""

    class Earned(Aggregate.Created):
        program_id: str
        partner_id: str
        activity_type: str
        source_ref: str
        effective_date: date
        attributes: dict[str, str]
        base_minor: int | None
        rule_set_version: int
        rule_id: str
        rate: Decimal | None
        fixed_minor: int | None
        unrounded_minor: Decimal
        rounding: str
        amount_minor: int
        currency: str
        actor: str
        correlation_id: str

    class Reversed(Aggregate.Event):
        amount_minor: int
        base_minor: int | None
        unrounded_minor: Decimal | None
        effective_date: date
        reason: str
        actor: str
        idempotency_key: str
        correlation_id: str

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Earning)
            aggregate.reversed_minor += self.amount_minor
            if self.base_minor is not None:
                aggregate.reversed_base_minor += self.base_minor

    def __init__(
        self,
        program_id: str,
        partner_id: str,
        activity_type: str,
        source_ref: str,
        effective_date: date,
        attributes: dict[str, str],
        base_minor: int | None,
        rule_set_version: int,
        rule_id: str,
        rate: Decimal | None,
        fixed_minor: int | None,
        unrounded_minor: Decimal,
        rounding: str,
        amount_minor: int,
        currency: str,
        actor: str,
        correlation_id: str,
    ) -> None:
        self.program_id = program_id
        self.partner_id = partner_id
        self.activity_type = activity_type
        self.source_ref = source_ref
        self.effective_date = effective_date
        self.attributes = attributes
        self.base_minor = base_minor
        self.rule_set_version = rule_set_version
        self.rule_id = rule_id
        self.rate = rate
        self.fixed_minor = fixed_minor
        self.unrounded_minor = unrounded_minor
        self.rounding = RoundingMode(rounding)
        self.amount_minor = amount_minor
        self.currency = currency
        self.reversed_minor = 0
        self.reversed_base_minor = 0

    @classmethod
    def earn(
        cls,
        *,
        program_id: str,
        partner_id: str,
        activity_type: str,
        source_ref: str,
        effective_date: date,
        attributes: Mapping[str, str],
        reward: Reward,
        actor: str,
        correlation_id: str,
    ) -> Earning:
        """Record an activity priced as ``reward``."""
        return cls._create(
            cls.Earned,
            id=earning_id(program_id, source_ref),
            **_earned_fields(
                program_id=program_id,
                partner_id=partner_id,
                activity_type=activity_type,
                source_ref=source_ref,
                effective_date=effective_date,
                attributes=attributes,
                reward=reward,
                actor=actor,
                correlation_id=correlation_id,
            ),
        )

    @classmethod
    def earned(
        cls,
        *,
        program_id: str,
        partner_id: str,
        activity_type: str,
        source_ref: str,
        effective_date: date,
        attributes: Mapping[str, str],
        reward: Reward,
        actor: str,
        correlation_id: str,
    ) -> Earning.Earned:
        """Return the event that :meth:`earn` would record, without building the aggregate.

        For callers that only store new earnings: building the aggregate
        through eventsourcing's ``_create`` costs more than the event itself.
        """
        # The fields that eventsourcing's _create sets on every created event.
        return cls.Earned(
            originator_topic=_EARNING_TOPIC,
            originator_id=earning_id(program_id, source_ref),
            originator_version=cls.INITIAL_VERSION,
            timestamp=cls.Earned.create_timestamp(),
            **_earned_fields(
                program_id=program_id,
                partner_id=partner_id,
                activity_type=activity_type,
                source_ref=source_ref,
                effective_date=effective_date,
                attributes=attributes,
                reward=reward,
                actor=actor,
                correlation_id=correlation_id,
            ),
        )

    @property
    def amount(self) -> Money:
        """The reward as earned, before reversals."""
        return Money(self.amount_minor, self.currency)

    @property
    def remaining(self) -> Money:
        """The part of the reward not yet reversed."""
        return Money(self.amount_minor - self.reversed_minor, self.currency)

    def request_fields(self) -> dict[str, Any]:
        """Return the caller-supplied fields that identify this activity's content."""
        return {
            "partner_id": self.partner_id,
            "activity_type": self.activity_type,
            "effective_date": self.effective_date,
            "base_amount": None
            if self.base_minor is None
            else Money(self.base_minor, self.currency),
            "attributes": dict(self.attributes),
        }

    def reverse(
        self,
        *,
        amount: Money | None,
        base: Money | None,
        effective_date: date,
        reason: str,
        actor: str,
        idempotency_key: str,
        correlation_id: str,
    ) -> Money:
        """Reverse all or part of the remaining reward; return the reversed amount.

        With neither ``amount`` nor ``base``, the whole remaining reward is
        reversed. With ``base``, the part of the base amount being clawed back is
        priced at this earning's frozen rate and rounding mode. The reversal that
        brings the reversed base to the full base reverses exactly what remains,
        so piecewise reversals never leave a rounding residue.

        Raises:
            InvalidInputError: Nothing remains, the amount exceeds what remains,
                or the base does not fit this earning.
        """
        remaining = self.remaining
        if remaining.amount_minor <= 0:
            raise InvalidInputError(
                f"earning {self.source_ref!r} is already fully reversed, so nothing is "
                "left to reverse; record an adjustment to debit the partner further",
                field="source_ref",
                value=self.source_ref,
            )
        if not reason.strip():
            raise InvalidInputError(
                'reason is empty; say why the earning is reversed, for example "deal refunded"',
                field="reason",
            )
        if effective_date < self.effective_date:
            raise InvalidInputError(
                f"reversal effective {effective_date.isoformat()} precedes the earning's "
                f"effective date {self.effective_date.isoformat()}; use that date or a later one",
                field="effective_date",
                value=effective_date.isoformat(),
            )
        if amount is not None and base is not None:
            raise InvalidInputError(
                f"both amount ({amount.format()}) and base_amount ({base.format()}) were sent; "
                "send amount to reverse part of the reward, or base_amount to reverse part "
                "of the base, not both",
                field="base_amount",
                value=base.format(),
            )

        base_minor: int | None = None
        unrounded: Decimal | None = None
        if base is not None:
            reversed_amount, unrounded = self._price_base_reversal(base)
            base_minor = base.amount_minor
        elif amount is not None:
            self._check_currency(amount, "amount")
            if amount.amount_minor <= 0 or amount.amount_minor > remaining.amount_minor:
                raise InvalidInputError(
                    f"reversal amount {amount} must be positive and at most the remaining "
                    f"{remaining} of earning {self.source_ref!r}",
                    field="amount.amount",
                    value=amount.format(),
                )
            reversed_amount = amount
        else:
            reversed_amount = remaining

        self.trigger_event(
            self.Reversed,
            amount_minor=reversed_amount.amount_minor,
            base_minor=base_minor,
            unrounded_minor=unrounded,
            effective_date=effective_date,
            reason=reason,
            actor=actor,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
        )
        return reversed_amount

    def _price_base_reversal(self, base: Money) -> tuple[Money, Decimal]:
        if self.rate is None or self.base_minor is None:
            raise InvalidInputError(
                f"earning {self.source_ref!r} is a fixed reward, so it cannot be reversed by "
                "base amount; send amount instead",
                field="base_amount",
            )
        self._check_currency(base, "base_amount")
        base_left = self.base_minor - self.reversed_base_minor
        if base.amount_minor <= 0 or base.amount_minor > base_left:
            raise InvalidInputError(
                f"base_amount {base} must be positive and at most the unreversed base "
                f"{Money(base_left, self.currency)} of earning {self.source_ref!r}",
                field="base_amount.amount",
                value=base.format(),
            )
        priced = apply_rate(base, self.rate, self.rounding)
        if base.amount_minor == base_left:
            return self.remaining, priced.unrounded_minor
        capped = min(priced.rounded.amount_minor, self.remaining.amount_minor)
        return Money(capped, self.currency), priced.unrounded_minor

    def _check_currency(self, money: Money, field: str) -> None:
        if money.currency != self.currency:
            raise InvalidInputError(
                f"{field} is in {money.currency} but earning {self.source_ref!r} is in "
                f"{self.currency}",
                field=f"{field}.currency",
                value=money.currency,
            )


_EARNING_TOPIC = get_topic(Earning)


def _earned_fields(
    *,
    program_id: str,
    partner_id: str,
    activity_type: str,
    source_ref: str,
    effective_date: date,
    attributes: Mapping[str, str],
    reward: Reward,
    actor: str,
    correlation_id: str,
) -> dict[str, Any]:
    """Return the fields of an ``Earned`` event that come from the activity and its reward."""
    return {
        "program_id": program_id,
        "partner_id": partner_id,
        "activity_type": activity_type,
        "source_ref": source_ref,
        "effective_date": effective_date,
        "attributes": dict(attributes),
        "base_minor": None if reward.base is None else reward.base.amount_minor,
        "rule_set_version": reward.rule_set_version,
        "rule_id": reward.rule_id,
        "rate": reward.rate,
        "fixed_minor": None if reward.fixed is None else reward.fixed.amount_minor,
        "unrounded_minor": reward.unrounded_minor,
        "rounding": reward.rounding.value,
        "amount_minor": reward.amount.amount_minor,
        "currency": reward.amount.currency,
        "actor": actor,
        "correlation_id": correlation_id,
    }
