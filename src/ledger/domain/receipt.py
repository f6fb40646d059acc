"""The receipt aggregate: proof that a keyed command was accepted once.

Reversals and tier changes append to an existing stream, so their idempotency
key cannot be the stream id. Instead the command saves a receipt stream, keyed
by partner, command kind and idempotency key, in the same transaction as its
event. A retry finds the receipt and returns the original outcome; a retry with
other content is reported field by field.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from ledger.domain.ids import receipt_id

__all__ = ["Receipt"]


class Receipt(Aggregate):
    """The request a keyed command carried and the event it produced.

    ``request`` and ``outcome`` hold only str, int, bool and None values, so
    comparing a retried request is a plain dict comparison.
    """

    class Issued(Aggregate.Created):
        kind: str
        partner_id: str
        idempotency_key: str
        request: dict[str, Any]
        outcome: dict[str, Any]
        target_id: UUID
        target_version: int

    def __init__(
        self,
        kind: str,
        partner_id: str,
        idempotency_key: str,
        request: dict[str, Any],
        outcome: dict[str, Any],
        target_id: UUID,
        target_version: int,
    ) -> None:
        self.kind = kind
        self.partner_id = partner_id
        self.idempotency_key = idempotency_key
        self.request = request
        self.outcome = outcome
        self.target_id = target_id
        self.target_version = target_version

    @classmethod
    def issue(
        cls,
        *,
        kind: str,
        partner_id: str,
        idempotency_key: str,
        request: dict[str, Any],
        outcome: dict[str, Any],
        target_id: UUID,
        target_version: int,
    ) -> Receipt:
        """Record that ``kind`` with ``idempotency_key`` produced event ``target_version``."""
        return cls._create(
            cls.Issued,
            id=receipt_id(partner_id, kind, idempotency_key),
            kind=kind,
            partner_id=partner_id,
            idempotency_key=idempotency_key,
            request=request,
            outcome=outcome,
            target_id=target_id,
            target_version=target_version,
        )
