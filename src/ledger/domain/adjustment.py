"""The adjustment aggregate: a manual credit or debit to a partner.

An adjustment is its own stream, addressed by the partner and the caller's
idempotency key, so a retried request finds the original instead of adding a
second one.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from eventsourcing.domain import Aggregate

from ledger.domain.ids import adjustment_id
from ledger.domain.money import Money
from ledger.errors import InvalidInputError

__all__ = ["Adjustment"]


class Adjustment(Aggregate):
    """A signed amount credited (positive) or debited (negative) to a partner."""

    class Recorded(Aggregate.Created):
        partner_id: str
        program_id: str
        amount_minor: int
        currency: str
        effective_date: date
        reason: str
        actor: str
        idempotency_key: str
        source_ref: str
        correlation_id: str

    def __init__(
        self,
        partner_id: str,
        program_id: str,
        amount_minor: int,
        currency: str,
        effective_date: date,
        reason: str,
        actor: str,
        idempotency_key: str,
        source_ref: str,
        correlation_id: str,
    ) -> None:
        self.partner_id = partner_id
        self.program_id = program_id
        self.amount = Money(amount_minor, currency)
        self.effective_date = effective_date
        self.reason = reason
        self.idempotency_key = idempotency_key
        self.source_ref = source_ref

    @classmethod
    def record(
        cls,
        *,
        partner_id: str,
        program_id: str,
        program_currency: str,
        amount: Money,
        effective_date: date,
        reason: str,
        actor: str,
        idempotency_key: str,
        source_ref: str,
        correlation_id: str,
    ) -> Adjustment:
        """Record an adjustment in the program currency with a stated reason."""
        if amount.currency != program_currency:
            raise InvalidInputError(
                f"amount is in {amount.currency} but program {program_id!r} pays in "
                f"{program_currency}; send the adjustment in {program_currency}",
                field="amount.currency",
                value=amount.currency,
            )
        if amount.amount_minor == 0:
            raise InvalidInputError(
                "amount is zero; an adjustment must credit (positive) or debit (negative)",
                field="amount.amount",
                value=amount.format(),
            )
        if not reason.strip():
            raise InvalidInputError(
                "reason is empty; every adjustment states why it was made", field="reason"
            )
        return cls._create(
            cls.Recorded,
            id=adjustment_id(partner_id, idempotency_key),
            partner_id=partner_id,
            program_id=program_id,
            amount_minor=amount.amount_minor,
            currency=amount.currency,
            effective_date=effective_date,
            reason=reason,
            actor=actor,
            idempotency_key=idempotency_key,
            source_ref=source_ref,
            correlation_id=correlation_id,
        )

    def request_fields(self) -> dict[str, Any]:
        """Return the caller-supplied fields, for comparing a retried request."""
        return {
            "amount": self.amount,
            "effective_date": self.effective_date,
            "reason": self.reason,
            "source_ref": self.source_ref,
        }
