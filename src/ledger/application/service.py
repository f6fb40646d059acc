"""The ledger application: commands on eventsourcing's ``Application``.

Each command loads the few short streams it needs, lets the domain objects
decide, and saves every new event of the command in one transaction. Retries
are safe because streams that a command creates have ids derived from the
caller's source reference or idempotency key: a duplicate fails on the event
store's primary key, and the original is then read back and compared.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    IntegrityError,
    OperationalError,
    Recording,
    StoredEvent,
    Transcoder,
)
from eventsourcing.utils import get_topic

from ledger.application.commands import (
    ChangeTier,
    CommandContext,
    EnrollPartner,
    ProgramSpec,
    RecordActivity,
    RecordAdjustment,
    ReverseEarning,
)
from ledger.application.results import (
    ActivityOutcome,
    AdjustmentOutcome,
    EarningView,
    EnrollmentOutcome,
    PartnerView,
    ProgramOutcome,
    ReversalOutcome,
    TierOutcome,
)
from ledger.domain.adjustment import Adjustment
from ledger.domain.earning import Earning
from ledger.domain.ids import (
    adjustment_id,
    earning_id,
    partner_id_uuid,
    program_id_uuid,
    receipt_id,
)
from ledger.domain.money import Money, RoundingMode
from ledger.domain.partner import Partner, check_partner_id
from ledger.domain.program import Program
from ledger.domain.receipt import Receipt
from ledger.domain.rules import compute_reward
from ledger.errors import (
    ConflictError,
    InvalidInputError,
    LedgerError,
    NotFoundError,
    StoreUnavailableError,
)
from ledger.infrastructure.recorder import LedgerRecorder
from ledger.infrastructure.transcoder import MsgspecTranscoder

__all__ = ["LedgerApplication"]

_A = TypeVar("_A", bound=Aggregate)
_T = TypeVar("_T")

# Names of the keyed commands that save receipts, as messages show them.
_KEYED_COMMANDS = {"tier": "tier change", "reversal": "reversal"}

# Attempts for a command that lost a race on a stream it appends to.
_MAX_APPEND_ATTEMPTS = 5

# Earnings saved per transaction by record_activities.
# NOTE: psycopg 3.3.9's pipeline mode, which eventsourcing's recorder uses,
# hung when one insert message reached about 1 MB over a Unix socket (the
# embedded server's only transport). The recorder sends events in binary, and
# a CRM earning takes about 580 bytes there, so 500 earnings are about 290 kB.
_SAVE_CHUNK = 500

# Partners whose enrollment facts stay cached for pricing, least recently used
# evicted first; an evicted partner costs one stream load when seen again.
_MAX_CACHED_PARTNERS = 10_000

# Limits on an activity's attributes, which are stored on every earning event.
_MAX_ATTRIBUTES = 50
_MAX_ATTRIBUTE_LENGTH = 500


@dataclass(frozen=True, slots=True)
class BatchItem:
    """Outcome of one activity in :meth:`LedgerApplication.record_activities`.

    Exactly one of ``outcome`` and ``error`` is set.
    """

    outcome: ActivityOutcome | None
    error: LedgerError | None


class LedgerApplication(Application[UUID]):
    """Commands of the rewards ledger."""

    name = "Ledger"
    # Partner streams are short, but a snapshot every 100 events keeps a
    # partner with many tier changes quick to load.
    snapshotting_intervals = {Partner: 100}  # noqa: RUF012
    # The recorder sends new events to PostgreSQL in binary (see its module).
    env = {  # noqa: RUF012
        "CREATE_TABLE": "no",
        "APPLICATION_RECORDER_TOPIC": get_topic(LedgerRecorder),
    }

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env)
        # Read-only copies used to price activities, each kept while it is
        # current: a program while its stream version is unchanged, a partner
        # forever, because pricing reads only enrollment facts, which never
        # change. Commands that change a program or partner load it afresh.
        self._pricing_programs: dict[str, Program] = {}
        self._pricing_partners: OrderedDict[str, Partner] = OrderedDict()
        # Commands run in several threads of the HTTP server.
        self._pricing_lock = threading.Lock()

    def construct_transcoder(self) -> Transcoder:
        return MsgspecTranscoder()

    # Programs -------------------------------------------------------------

    def publish_program(self, spec: ProgramSpec, context: CommandContext) -> ProgramOutcome:
        """Create the program if new and append any rule set not yet published.

        Publishing the same file twice changes nothing.

        Raises:
            ConflictError: The program exists with another name, currency, time
                zone, rounding or tier list, or a published version has other
                content.
            InvalidInputError: The file breaks a rule (see :meth:`Program.publish`).
        """
        with _store_errors():
            try:
                program = self._get(Program, program_id_uuid(spec.id))
                created = False
            except NotFoundError:
                program = Program.create(
                    program_id=spec.id,
                    name=spec.name,
                    currency=spec.currency,
                    time_zone=spec.time_zone,
                    rounding=_rounding(spec.rounding),
                    tiers=spec.tiers,
                    actor=context.actor,
                    correlation_id=context.correlation_id,
                )
                created = True
            if not created:
                differences = _differences(
                    {
                        "name": program.name,
                        "currency": program.currency,
                        "time_zone": program.time_zone,
                        "rounding": program.rounding.value,
                        "tiers": program.tiers,
                    },
                    {
                        "name": spec.name,
                        "currency": spec.currency,
                        "time_zone": spec.time_zone,
                        "rounding": spec.rounding,
                        "tiers": list(spec.tiers),
                    },
                )
                if differences:
                    raise ConflictError(
                        f"program {spec.id!r} already exists with different "
                        f"{', '.join(differences)}; these never change after creation, so "
                        "create a new program instead",
                        differences=differences,
                        field=next(iter(differences)),
                    )
            published: list[int] = []
            unchanged: list[int] = []
            for rule_set in sorted(spec.rule_sets, key=lambda rs: rs.version):
                if program.publish(
                    rule_set, actor=context.actor, correlation_id=context.correlation_id
                ):
                    published.append(rule_set.version)
                else:
                    unchanged.append(rule_set.version)
            recordings = self.save(program)
            position = (
                max(r.notification.id for r in recordings)
                if recordings
                else self._position_of(program.id, program.version)
            )
        return ProgramOutcome(spec.id, created, published, unchanged, position)

    def get_program(self, program_id: str) -> Program:
        """Return program ``program_id``; raise :class:`NotFoundError` if unknown."""
        with _store_errors():
            return self._get(
                Program,
                program_id_uuid(program_id),
                what=f"program {program_id!r}",
                field="program_id",
                value=program_id,
            )

    # Partners -------------------------------------------------------------

    def enroll_partner(
        self, program_id: str, command: EnrollPartner, context: CommandContext
    ) -> EnrollmentOutcome:
        """Enroll a partner, starting in the program's lowest tier unless one is named.

        Enrolling the same partner again with the same details is a no-op.

        Raises:
            NotFoundError: The program does not exist.
            ConflictError: The partner exists with other details.
        """
        check_partner_id(command.partner_id)
        with _store_errors():
            program = self.get_program(program_id)
            tier = command.tier or program.default_tier
            program.check_tier(tier)
            program.check_not_future(command.effective_date)
            partner = Partner.enroll(
                partner_id=command.partner_id,
                program_id=program_id,
                display_name=command.display_name,
                region=command.region,
                channel_manager=command.channel_manager,
                tier=tier,
                effective_date=command.effective_date,
                actor=context.actor,
                source_ref=command.source_ref,
                correlation_id=context.correlation_id,
            )
            try:
                recordings = self.save(partner)
            except IntegrityError:
                existing = self._get(Partner, partner.id)
                differences = _differences(
                    {
                        "program_id": existing.program_id,
                        "display_name": existing.display_name,
                        "region": existing.region,
                        "channel_manager": existing.channel_manager,
                        "tier": existing.initial_tier,
                        "effective_date": existing.enrolled_on,
                    },
                    {
                        "program_id": program_id,
                        "display_name": command.display_name,
                        "region": command.region,
                        "channel_manager": command.channel_manager,
                        "tier": tier,
                        "effective_date": command.effective_date,
                    },
                )
                if differences:
                    raise ConflictError(
                        f"partner {command.partner_id!r} is already enrolled with different "
                        f"{', '.join(differences)}; send the enrolled values to retry, or "
                        "choose another partner id",
                        differences=differences,
                        field=next(iter(differences)),
                    ) from None
                return EnrollmentOutcome(False, self._position_of(existing.id, 1), tier)
            return EnrollmentOutcome(True, recordings[-1].notification.id, tier)

    def get_partner(self, partner_id: str) -> PartnerView:
        """Return partner ``partner_id``; raise :class:`NotFoundError` if unknown."""
        with _store_errors():
            partner = self._load_partner(partner_id)
        return PartnerView(
            partner_id=partner.partner_id,
            program_id=partner.program_id,
            display_name=partner.display_name,
            region=partner.region,
            channel_manager=partner.channel_manager,
            tier=partner.tier,
            enrolled_on=partner.enrolled_on,
        )

    def change_tier(
        self,
        partner_id: str,
        command: ChangeTier,
        idempotency_key: str,
        context: CommandContext,
    ) -> TierOutcome:
        """Move a partner to another tier, once per idempotency key."""
        _check_key(idempotency_key)
        request = {
            "tier": command.tier,
            "effective_date": command.effective_date.isoformat(),
            "reason": command.reason,
        }

        def attempt() -> TierOutcome:
            original = self._find_receipt(partner_id, "tier", idempotency_key, request)
            if original is not None:
                receipt, position = original
                return TierOutcome(
                    created=False,
                    partner_id=partner_id,
                    from_tier=receipt.outcome["from_tier"],
                    to_tier=receipt.outcome["to_tier"],
                    effective_date=command.effective_date,
                    reason=command.reason,
                    idempotency_key=idempotency_key,
                    position=position,
                )
            partner = self._load_partner(partner_id)
            program = self.get_program(partner.program_id)
            program.check_tier(command.tier)
            program.check_not_future(command.effective_date)
            from_tier = partner.tier
            partner.change_tier(
                to_tier=command.tier,
                effective_date=command.effective_date,
                reason=command.reason,
                actor=context.actor,
                idempotency_key=idempotency_key,
                correlation_id=context.correlation_id,
            )
            receipt = Receipt.issue(
                kind="tier",
                partner_id=partner_id,
                idempotency_key=idempotency_key,
                request=request,
                outcome={"from_tier": from_tier, "to_tier": command.tier},
                target_id=partner.id,
                target_version=partner.version,
            )
            recordings = self.save(partner, receipt)
            return TierOutcome(
                created=True,
                partner_id=partner_id,
                from_tier=from_tier,
                to_tier=command.tier,
                effective_date=command.effective_date,
                reason=command.reason,
                idempotency_key=idempotency_key,
                position=_position_for(recordings, partner.id),
            )

        return self._retry_on_race(attempt)

    # Activities -----------------------------------------------------------

    def record_activity(
        self, program_id: str, command: RecordActivity, context: CommandContext
    ) -> ActivityOutcome:
        """Price and record one activity.

        Returns the original outcome, with ``created=False``, when the source
        reference was already recorded with the same content.

        Raises:
            NotFoundError: The program or partner does not exist.
            ConflictError: The source reference exists with other content.
            InvalidInputError: No rule prices the activity, or its input is invalid.
        """
        item = self.record_activities(program_id, [command], context)[0]
        if item.error is not None:
            raise item.error
        assert item.outcome is not None
        return item.outcome

    def record_activities(
        self,
        program_id: str,
        commands: Sequence[RecordActivity],
        context: CommandContext,
    ) -> list[BatchItem]:
        """Record many activities, saving new ones in transactions of up to 500.

        Each command gets its own outcome or error, in order. A command whose
        source reference already exists is compared, not written; invalid
        commands are reported and nothing is written for them. Each earning is
        its own stream, so a failure between two transactions leaves whole
        earnings, and running the batch again records only the missing ones.

        Raises:
            NotFoundError: The program does not exist.
        """
        with _store_errors():
            for _ in range(_MAX_APPEND_ATTEMPTS - 1):
                try:
                    return self._record_batch(program_id, commands, context)
                except IntegrityError:
                    # Another writer recorded one of these source references
                    # since the lookup; the next attempt finds and compares it.
                    continue
            return self._record_batch(program_id, commands, context)

    def _record_batch(
        self,
        program_id: str,
        commands: Sequence[RecordActivity],
        context: CommandContext,
    ) -> list[BatchItem]:
        program = self._pricing_program(program_id)
        partners = self._load_partners({c.partner_id for c in commands})
        ids = [earning_id(program_id, c.source_ref) for c in commands]
        existing = self._load_first_events(ids)

        items: list[BatchItem | None] = [None] * len(commands)
        new: list[tuple[int, Earning.Earned]] = []
        seen: dict[UUID, int] = {}
        for index, (command, aggregate_id) in enumerate(zip(commands, ids, strict=True)):
            try:
                if aggregate_id in seen:
                    # Same source reference twice in one batch: the second
                    # behaves like a retry of the first.
                    first = seen[aggregate_id]
                    _compare_activity(_request_of(commands[first]), command)
                    continue
                seen[aggregate_id] = index
                stored = existing.get(aggregate_id)
                if stored is not None:
                    earned, position = stored
                    _compare_activity(_earned_request(earned), command)
                    items[index] = BatchItem(
                        ActivityOutcome(False, _earning_view(earned), position), None
                    )
                    continue
                new.append((index, self._price(program, partners, command, context)))
            except LedgerError as error:
                items[index] = BatchItem(None, error)

        for start in range(0, len(new), _SAVE_CHUNK):
            chunk = new[start : start + _SAVE_CHUNK]
            # New earnings are single-event streams with no snapshots or
            # subscribers, so their events go straight to the event store;
            # Application.save would spend a fifth of an import on checking
            # each object against its runtime protocols.
            events = [event for _, event in chunk]
            for (index, _), recording in zip(chunk, self.events.put(events), strict=True):
                created = recording.domain_event
                assert isinstance(created, Earning.Earned)
                items[index] = BatchItem(
                    ActivityOutcome(True, _earning_view(created), recording.notification.id), None
                )

        for index, command in enumerate(commands):
            if items[index] is None:
                # A duplicate within the batch: report the first's outcome.
                first_item = items[seen[ids[index]]]
                assert first_item is not None
                if first_item.outcome is not None:
                    items[index] = BatchItem(
                        ActivityOutcome(
                            False, first_item.outcome.earning, first_item.outcome.position
                        ),
                        None,
                    )
                else:
                    items[index] = first_item
        return [item for item in items if item is not None]

    def _price(
        self,
        program: Program,
        partners: Mapping[str, Partner],
        command: RecordActivity,
        context: CommandContext,
    ) -> Earning.Earned:
        """Check and price ``command``; return the event that records its earning."""
        if not command.source_ref.strip():
            raise InvalidInputError(
                "source_ref is empty; send the id of the activity in its source system",
                field="source_ref",
            )
        _check_attributes(command.attributes)
        partner = partners.get(command.partner_id)
        if partner is None:
            raise NotFoundError(
                f"partner {command.partner_id!r} is not enrolled; enroll it before "
                "recording its activities",
                field="partner_id",
                value=command.partner_id,
            )
        if partner.program_id != program.program_id:
            raise InvalidInputError(
                f"partner {command.partner_id!r} is enrolled in program "
                f"{partner.program_id!r}, not {program.program_id!r}; record the activity "
                f"in program {partner.program_id!r}",
                field="partner_id",
                value=command.partner_id,
            )
        partner.check_on_or_after_enrollment(command.effective_date)
        program.check_not_future(command.effective_date)
        rule_set = program.rule_set_on(command.effective_date)
        reward = compute_reward(
            rule_set,
            currency=program.currency,
            rounding=program.rounding,
            activity_type=command.activity_type,
            attributes=command.attributes,
            base=command.base_amount,
        )
        return Earning.earned(
            program_id=program.program_id,
            partner_id=command.partner_id,
            activity_type=command.activity_type,
            source_ref=command.source_ref,
            effective_date=command.effective_date,
            attributes=command.attributes,
            reward=reward,
            actor=context.actor,
            correlation_id=context.correlation_id,
        )

    # Adjustments and reversals -------------------------------------------

    def record_adjustment(
        self,
        partner_id: str,
        command: RecordAdjustment,
        idempotency_key: str,
        context: CommandContext,
    ) -> AdjustmentOutcome:
        """Credit or debit a partner once per idempotency key.

        Raises:
            NotFoundError: The partner does not exist.
            ConflictError: The key was used before with other content.
        """
        _check_key(idempotency_key)
        with _store_errors():
            partner = self._load_partner(partner_id)
            program = self.get_program(partner.program_id)
            partner.check_on_or_after_enrollment(command.effective_date)
            program.check_not_future(command.effective_date)
            adjustment = Adjustment.record(
                partner_id=partner_id,
                program_id=partner.program_id,
                program_currency=program.currency,
                amount=command.amount,
                effective_date=command.effective_date,
                reason=command.reason,
                actor=context.actor,
                idempotency_key=idempotency_key,
                source_ref=command.source_ref or idempotency_key,
                correlation_id=context.correlation_id,
            )
            try:
                recordings = self.save(adjustment)
                created, position = True, recordings[-1].notification.id
            except IntegrityError:
                original = self._get(Adjustment, adjustment_id(partner_id, idempotency_key))
                differences = _differences(original.request_fields(), adjustment.request_fields())
                if differences:
                    raise ConflictError(
                        f"idempotency key {idempotency_key!r} was used for another adjustment "
                        f"with different {', '.join(differences)}; use a new key for a new "
                        "adjustment",
                        differences=differences,
                        field=next(iter(differences)),
                    ) from None
                adjustment = original
                created, position = False, self._position_of(original.id, 1)
        return AdjustmentOutcome(
            created=created,
            adjustment_id=adjustment.id,
            partner_id=partner_id,
            amount=adjustment.amount,
            effective_date=adjustment.effective_date,
            reason=adjustment.reason,
            source_ref=adjustment.source_ref,
            idempotency_key=idempotency_key,
            recorded_at=adjustment.created_on,
            position=position,
        )

    def reverse_earning(
        self,
        partner_id: str,
        command: ReverseEarning,
        idempotency_key: str,
        context: CommandContext,
    ) -> ReversalOutcome:
        """Reverse all or part of a partner's earning once per idempotency key.

        Raises:
            NotFoundError: The partner, or its earning for the source reference,
                does not exist.
            ConflictError: The key was used before with other content.
            InvalidInputError: The amount does not fit what remains.
        """
        _check_key(idempotency_key)
        request = {
            "source_ref": command.source_ref,
            "effective_date": command.effective_date.isoformat(),
            "reason": command.reason,
            "amount": None if command.amount is None else str(command.amount),
            "base_amount": None if command.base_amount is None else str(command.base_amount),
        }

        def attempt() -> ReversalOutcome:
            original = self._find_receipt(partner_id, "reversal", idempotency_key, request)
            if original is not None:
                receipt, position = original
                currency = receipt.outcome["currency"]
                return ReversalOutcome(
                    created=False,
                    partner_id=partner_id,
                    source_ref=command.source_ref,
                    reversed_amount=Money(receipt.outcome["reversed_minor"], currency),
                    remaining_amount=Money(receipt.outcome["remaining_minor"], currency),
                    effective_date=command.effective_date,
                    reason=command.reason,
                    idempotency_key=idempotency_key,
                    position=position,
                )
            partner = self._load_partner(partner_id)
            earning = self._get(
                Earning,
                earning_id(partner.program_id, command.source_ref),
                what=f"earning {command.source_ref!r} of partner {partner_id!r}",
                field="source_ref",
                value=command.source_ref,
            )
            self.get_program(partner.program_id).check_not_future(command.effective_date)
            if earning.partner_id != partner_id:
                raise NotFoundError(
                    f"partner {partner_id!r} has no earning with source_ref "
                    f"{command.source_ref!r}; reverse it under the partner who earned it",
                    field="source_ref",
                    value=command.source_ref,
                )
            reversed_amount = earning.reverse(
                amount=command.amount,
                base=command.base_amount,
                effective_date=command.effective_date,
                reason=command.reason,
                actor=context.actor,
                idempotency_key=idempotency_key,
                correlation_id=context.correlation_id,
            )
            receipt = Receipt.issue(
                kind="reversal",
                partner_id=partner_id,
                idempotency_key=idempotency_key,
                request=request,
                outcome={
                    "currency": earning.currency,
                    "reversed_minor": reversed_amount.amount_minor,
                    "remaining_minor": earning.remaining.amount_minor,
                },
                target_id=earning.id,
                target_version=earning.version,
            )
            recordings = self.save(earning, receipt)
            return ReversalOutcome(
                created=True,
                partner_id=partner_id,
                source_ref=command.source_ref,
                reversed_amount=reversed_amount,
                remaining_amount=earning.remaining,
                effective_date=command.effective_date,
                reason=command.reason,
                idempotency_key=idempotency_key,
                position=_position_for(recordings, earning.id),
            )

        return self._retry_on_race(attempt)

    # Store helpers --------------------------------------------------------

    def head_position(self) -> int:
        """Return the highest event position in the store, 0 when empty."""
        with _store_errors():
            return self.recorder.max_notification_id() or 0

    def _retry_on_race(self, attempt: Callable[[], _T]) -> _T:
        # A concurrent command appended to the same stream or used the same
        # key between our read and our write: run again on fresh state, where
        # the receipt or the new version is visible.
        with _store_errors():
            for _ in range(_MAX_APPEND_ATTEMPTS - 1):
                try:
                    return attempt()
                except IntegrityError:
                    continue
            return attempt()

    def _get(
        self,
        cls: type[_A],
        aggregate_id: UUID,
        *,
        what: str | None = None,
        field: str | None = None,
        value: str | None = None,
    ) -> _A:
        """Load an aggregate; raise :class:`NotFoundError` naming ``field`` and ``value``."""
        aggregate: object
        try:
            aggregate = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            aggregate = None
        if not isinstance(aggregate, cls):
            raise NotFoundError(
                f"{what or cls.__name__.lower()} does not exist; check the id, or create it first",
                field=field,
                value=value if value is not None else str(aggregate_id),
            )
        return aggregate

    def _load_partner(self, partner_id: str) -> Partner:
        check_partner_id(partner_id)
        return self._get(
            Partner,
            partner_id_uuid(partner_id),
            what=f"partner {partner_id!r}",
            field="partner_id",
            value=partner_id,
        )

    def _load_partners(self, partner_ids: set[str]) -> dict[str, Partner]:
        """Return the enrolled partners among ``partner_ids``, for pricing only.

        The objects may be cached and stale on tier, so callers read only
        partner id, program id and enrollment date from them.
        """
        partners: dict[str, Partner] = {}
        for partner_id in partner_ids:
            with self._pricing_lock:
                partner = self._pricing_partners.get(partner_id)
                if partner is not None:
                    self._pricing_partners.move_to_end(partner_id)
            if partner is None:
                try:
                    partner = self._load_partner(partner_id)
                except (NotFoundError, InvalidInputError):
                    continue
                with self._pricing_lock:
                    self._pricing_partners[partner_id] = partner
                    # Evict the least recently used partner beyond the bound.
                    if len(self._pricing_partners) > _MAX_CACHED_PARTNERS:
                        self._pricing_partners.popitem(last=False)
            partners[partner_id] = partner
        return partners

    def _pricing_program(self, program_id: str) -> Program:
        """Return program ``program_id`` for pricing, reusing a copy that is still current.

        One primary-key lookup finds the stream's latest version; the program
        is replayed only when a rule set was published since it was cached.
        """
        cached = self._pricing_programs.get(program_id)
        if cached is not None:
            with self._connection() as conn:
                row = conn.execute(
                    "SELECT max(originator_version) AS version FROM ledger_events "
                    "WHERE originator_id = %s",
                    (cached.id,),
                ).fetchone()
            if row is not None and row["version"] == cached.version:
                return cached
        program = self.get_program(program_id)
        self._pricing_programs[program_id] = program
        return program

    def _find_receipt(
        self, partner_id: str, kind: str, key: str, request: dict[str, Any]
    ) -> tuple[Receipt, int] | None:
        try:
            receipt = self._get(Receipt, receipt_id(partner_id, kind, key))
        except NotFoundError:
            return None
        differences = _differences(receipt.request, request)
        if differences:
            command_name = _KEYED_COMMANDS[kind]
            raise ConflictError(
                f"idempotency key {key!r} was used for another {command_name} with different "
                f"{', '.join(differences)}; use a new key for a new {command_name}",
                differences=differences,
                field=next(iter(differences)),
            )
        return receipt, self._position_of(receipt.target_id, receipt.target_version)

    def _position_of(self, aggregate_id: UUID, version: int) -> int:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT notification_id FROM ledger_events "
                "WHERE originator_id = %s AND originator_version = %s",
                (aggregate_id, version),
            ).fetchone()
        return int(row["notification_id"]) if row else 0

    def _load_first_events(
        self, aggregate_ids: Sequence[UUID]
    ) -> dict[UUID, tuple[Earning.Earned, int]]:
        """Return the creation event and its position for each id already stored."""
        if not aggregate_ids:
            return {}
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT originator_id, topic, state, notification_id FROM ledger_events "
                "WHERE originator_id = ANY(%s) AND originator_version = 1",
                (list(aggregate_ids),),
            ).fetchall()
        found: dict[UUID, tuple[Earning.Earned, int]] = {}
        for row in rows:
            event = self.mapper.to_domain_event(
                StoredEvent(row["originator_id"], 1, row["topic"], bytes(row["state"]))
            )
            if isinstance(event, Earning.Earned):
                found[row["originator_id"]] = (event, int(row["notification_id"]))
        return found

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        datastore = self.recorder.datastore  # type: ignore[attr-defined]
        with datastore.get_connection() as conn:
            yield conn


def _rounding(value: str) -> RoundingMode:
    try:
        return RoundingMode(value)
    except ValueError:
        raise InvalidInputError(
            f"rounding {value!r} is not supported; use one of "
            f"{', '.join(mode.value for mode in RoundingMode)}",
            field="rounding",
            value=value,
        ) from None


def _check_attributes(attributes: Mapping[str, str]) -> None:
    if len(attributes) > _MAX_ATTRIBUTES:
        raise InvalidInputError(
            f"the activity has {len(attributes)} attributes; send at most {_MAX_ATTRIBUTES}",
            field="attributes",
        )
    for key, value in attributes.items():
        if not key or len(key) > _MAX_ATTRIBUTE_LENGTH or len(value) > _MAX_ATTRIBUTE_LENGTH:
            raise InvalidInputError(
                f"attribute {key[:50]!r} must have a name and a value of 1 to "
                f"{_MAX_ATTRIBUTE_LENGTH} characters",
                field=f"attributes.{key[:50]}",
                value=value[:50],
            )


def _check_key(key: str) -> None:
    if not key or len(key) > 200 or not key.isprintable():
        raise InvalidInputError(
            "Idempotency-Key is missing or invalid; send 1 to 200 printable characters, "
            "for example a UUID, and reuse it only to retry the same request",
            field="Idempotency-Key",
            value=key or None,
        )


def _display(value: Any) -> Any:
    if isinstance(value, Money):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def _differences(
    stored: Mapping[str, Any], requested: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    return {
        key: (_display(stored.get(key)), _display(requested.get(key)))
        for key in requested
        if stored.get(key) != requested.get(key)
    }


def _request_of(command: RecordActivity) -> dict[str, Any]:
    return {
        "partner_id": command.partner_id,
        "activity_type": command.activity_type,
        "effective_date": command.effective_date,
        "base_amount": command.base_amount,
        "attributes": dict(command.attributes),
    }


def _earned_request(event: Earning.Earned) -> dict[str, Any]:
    return {
        "partner_id": event.partner_id,
        "activity_type": event.activity_type,
        "effective_date": event.effective_date,
        "base_amount": None
        if event.base_minor is None
        else Money(event.base_minor, event.currency),
        "attributes": dict(event.attributes),
    }


def _compare_activity(stored: Mapping[str, Any], command: RecordActivity) -> None:
    differences = _differences(stored, _request_of(command))
    if differences:
        raise ConflictError(
            f"source_ref {command.source_ref!r} was already recorded with different "
            f"{', '.join(differences)}; a source reference names one activity, so send "
            "a new source_ref for a new activity or record a reversal to correct it",
            differences=differences,
            field=next(iter(differences)),
            value=command.source_ref,
        )


def _earning_view(event: Earning.Earned) -> EarningView:
    currency = event.currency
    return EarningView(
        earning_id=event.originator_id,
        program_id=event.program_id,
        partner_id=event.partner_id,
        activity_type=event.activity_type,
        source_ref=event.source_ref,
        effective_date=event.effective_date,
        attributes=dict(event.attributes),
        base_amount=None if event.base_minor is None else Money(event.base_minor, currency),
        rule_set_version=event.rule_set_version,
        rule_id=event.rule_id,
        rate=event.rate,
        fixed_amount=None if event.fixed_minor is None else Money(event.fixed_minor, currency),
        unrounded_minor=event.unrounded_minor,
        rounding=event.rounding,
        amount=Money(event.amount_minor, currency),
        recorded_at=event.timestamp,
    )


def _position_for(recordings: Sequence[Recording[UUID]], aggregate_id: UUID) -> int:
    return max(
        r.notification.id for r in recordings if r.domain_event.originator_id == aggregate_id
    )


@contextmanager
def _store_errors() -> Iterator[None]:
    """Translate database outages into :class:`StoreUnavailableError`."""
    try:
        yield
    except (OperationalError, psycopg.OperationalError) as error:
        raise StoreUnavailableError(
            f"the event store is unavailable: {str(error).strip()}; retry the request, "
            "it is safe to repeat"
        ) from error
