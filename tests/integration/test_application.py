"""Tests for the command side (LedgerApplication) on a real PostgreSQL.

Races are made deterministic without sleeps. The test holds an EXCLUSIVE lock
on ``ledger_events`` and starts the competing commands. Once PostgreSQL reports
each of them blocked on that lock, each has read the streams it decided on, and
the test releases the lock.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
import pytest

from ledger.application.commands import (
    ChangeTier,
    CommandContext,
    EnrollPartner,
    ProgramSpec,
    RecordActivity,
    RecordAdjustment,
    ReverseEarning,
)
from ledger.bootstrap import Services
from ledger.domain.earning import Earning
from ledger.domain.ids import earning_id, partner_id_uuid, program_id_uuid
from ledger.domain.money import Money
from ledger.domain.rules import Rule, RuleSet
from ledger.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    RuleNotFoundError,
)
from ledger.infrastructure.database import DatabaseUrl

PROGRAM = "crm-channel"
PARTNER = "darcel-schlecht"
OTHER_PARTNER = "moses-frase"
CONTEXT = CommandContext(actor="tester", correlation_id="corr-1")

V1 = RuleSet(
    version=1,
    effective_from=date(2024, 1, 1),
    rules=(
        Rule(id="deal", activity_type="deal_won", rate=Decimal("0.20")),
        Rule(
            id="deal-gtx", activity_type="deal_won", match={"series": "GTX"}, rate=Decimal("0.045")
        ),
        Rule(id="certified", activity_type="certification", fixed="250.00"),
    ),
)
V2 = RuleSet(
    version=2,
    effective_from=date(2024, 7, 1),
    rules=(Rule(id="deal", activity_type="deal_won", rate=Decimal("0.10")),),
)

# Maximum wait for the competing commands to block on the table lock. It only
# guards against a hang, because the tests assert on outcomes, never on durations.
BLOCK_WAIT_SECONDS = 60.0


def program_spec(*rule_sets: RuleSet, currency: str = "USD") -> ProgramSpec:
    return ProgramSpec(
        id=PROGRAM,
        name="CRM channel",
        currency=currency,
        rule_sets=list(rule_sets or (V1,)),
        time_zone="Europe/Berlin",
    )


def enroll(
    services: Services,
    partner_id: str = PARTNER,
    *,
    effective_date: date = date(2024, 1, 15),
    display_name: str = "Darcel Schlecht",
    region: str = "Central",
) -> tuple[bool, int]:
    outcome = services.app.enroll_partner(
        PROGRAM,
        EnrollPartner(
            partner_id=partner_id,
            display_name=display_name,
            effective_date=effective_date,
            region=region,
        ),
        CONTEXT,
    )
    return outcome.created, outcome.position


def activity(
    source_ref: str = "OPP-1",
    *,
    partner_id: str = PARTNER,
    activity_type: str = "deal_won",
    effective_date: date = date(2024, 2, 1),
    base: str | None = "302.00",
    attributes: dict[str, str] | None = None,
) -> RecordActivity:
    return RecordActivity(
        partner_id=partner_id,
        activity_type=activity_type,
        source_ref=source_ref,
        effective_date=effective_date,
        base_amount=None if base is None else Money.parse(base, "USD"),
        attributes=attributes or {},
    )


def reversal(
    source_ref: str = "OPP-1",
    *,
    amount: str | None = None,
    base: str | None = None,
    reason: str = "deal refunded",
) -> ReverseEarning:
    return ReverseEarning(
        source_ref=source_ref,
        effective_date=date(2024, 3, 1),
        reason=reason,
        amount=None if amount is None else Money.parse(amount, "USD"),
        base_amount=None if base is None else Money.parse(base, "USD"),
    )


@pytest.fixture
def ledger(services: Services) -> Services:
    """Services with the program published and PARTNER enrolled."""
    services.app.publish_program(program_spec(), CONTEXT)
    enroll(services)
    return services


def stream_length(database: DatabaseUrl, aggregate_id: UUID) -> int:
    with psycopg.connect(database.url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ledger_events WHERE originator_id = %s", (aggregate_id,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def position_of(database: DatabaseUrl, aggregate_id: UUID, version: int) -> int:
    with psycopg.connect(database.url) as conn:
        row = conn.execute(
            "SELECT notification_id FROM ledger_events "
            "WHERE originator_id = %s AND originator_version = %s",
            (aggregate_id, version),
        ).fetchone()
    assert row is not None
    return int(row[0])


def outcome_of(future: Future[Any]) -> Any:
    """Return the future's result, or the exception it raised."""
    error = future.exception()
    return error if error is not None else future.result()


def race(database: DatabaseUrl, commands: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run ``commands`` so that all of them read before any of them writes.

    Returns each command's result or raised exception, in order.
    """
    waiting_query = (
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'relation' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND relation = 'ledger_events'::regclass"
    )
    with (
        psycopg.connect(database.url) as blocker,
        psycopg.connect(database.url, autocommit=True) as observer,
        ThreadPoolExecutor(max_workers=len(commands)) as pool,
    ):
        # Hold the lock every event insert takes, so each command stops at its write.
        blocker.execute("LOCK TABLE ledger_events IN EXCLUSIVE MODE")
        futures = [pool.submit(command) for command in commands]

        # Wait until every command is blocked on the lock, or one ends early.
        deadline = time.monotonic() + BLOCK_WAIT_SECONDS
        waiting = 0
        while time.monotonic() < deadline and not any(f.done() for f in futures):
            row = observer.execute(waiting_query).fetchone()
            waiting = int(row[0]) if row else 0
            if waiting == len(commands):
                break
            time.sleep(0.02)

        blocker.rollback()
        outcomes = [outcome_of(future) for future in futures]
    assert waiting == len(commands), f"only {waiting} commands reached the write: {outcomes}"
    return outcomes


# Programs and partners ------------------------------------------------------


def test_publish_program_is_idempotent(services: Services) -> None:
    first = services.app.publish_program(program_spec(), CONTEXT)
    again = services.app.publish_program(program_spec(), CONTEXT)

    assert first.created is True
    assert first.published_versions == [1]
    assert again.created is False
    assert again.published_versions == []
    assert again.unchanged_versions == [1]
    assert again.position == first.position
    assert stream_length(services.database, program_id_uuid(PROGRAM)) == 2


def test_publish_program_appends_new_version(services: Services) -> None:
    services.app.publish_program(program_spec(V1), CONTEXT)

    outcome = services.app.publish_program(program_spec(V1, V2), CONTEXT)

    assert outcome.published_versions == [2]
    assert outcome.unchanged_versions == [1]
    assert [rs.version for rs in services.app.get_program(PROGRAM).rule_sets] == [1, 2]


def test_publish_program_other_currency_conflicts(services: Services) -> None:
    services.app.publish_program(program_spec(), CONTEXT)

    with pytest.raises(ConflictError) as raised:
        services.app.publish_program(program_spec(currency="EUR"), CONTEXT)

    assert raised.value.differences == {"currency": ("USD", "EUR")}


def test_publish_changed_version_conflicts(services: Services) -> None:
    services.app.publish_program(program_spec(), CONTEXT)
    changed = RuleSet(version=1, effective_from=V1.effective_from, rules=V2.rules)

    with pytest.raises(ConflictError, match="version 1"):
        services.app.publish_program(program_spec(changed), CONTEXT)

    assert stream_length(services.database, program_id_uuid(PROGRAM)) == 2


def test_unknown_program_not_found(services: Services) -> None:
    with pytest.raises(NotFoundError, match="'nope'"):
        services.app.get_program("nope")


def test_enroll_is_idempotent(services: Services) -> None:
    services.app.publish_program(program_spec(), CONTEXT)

    created, position = enroll(services)
    again_created, again_position = enroll(services)

    assert created is True
    assert again_created is False
    assert again_position == position
    assert position == position_of(services.database, partner_id_uuid(PARTNER), 1)
    assert stream_length(services.database, partner_id_uuid(PARTNER)) == 1


def test_enroll_conflict_names_differing_fields(services: Services) -> None:
    services.app.publish_program(program_spec(), CONTEXT)
    enroll(services)

    with pytest.raises(ConflictError) as raised:
        enroll(services, display_name="D. Schlecht", region="East")

    assert raised.value.differences == {
        "display_name": ("Darcel Schlecht", "D. Schlecht"),
        "region": ("Central", "East"),
    }
    assert "display_name" in raised.value.message
    assert "region" in raised.value.message
    assert services.app.get_partner(PARTNER).display_name == "Darcel Schlecht"


def test_enroll_conflict_on_initial_tier(services: Services) -> None:
    services.app.publish_program(program_spec(), CONTEXT)
    enroll(services)
    gold = EnrollPartner(
        partner_id=PARTNER,
        display_name="Darcel Schlecht",
        effective_date=date(2024, 1, 15),
        region="Central",
        tier="gold",
    )

    with pytest.raises(ConflictError) as raised:
        services.app.enroll_partner(PROGRAM, gold, CONTEXT)

    assert set(raised.value.differences) == {"tier"}


def test_enroll_unknown_program_not_found(services: Services) -> None:
    with pytest.raises(NotFoundError):
        enroll(services)


# Recording activities ---------------------------------------------------------


def test_record_activity_creates_earning(ledger: Services) -> None:
    outcome = ledger.app.record_activity(PROGRAM, activity(), CONTEXT)

    earning = outcome.earning
    assert outcome.created is True
    assert outcome.position == position_of(ledger.database, earning_id(PROGRAM, "OPP-1"), 1)
    assert earning.earning_id == earning_id(PROGRAM, "OPP-1")
    assert earning.amount == Money(6040, "USD")
    assert earning.rule_id == "deal"
    assert earning.rule_set_version == 1
    assert earning.rate == Decimal("0.20")
    assert earning.rounding == "half-up"
    assert earning.base_amount == Money(30200, "USD")


def test_identical_retry_returns_original(ledger: Services) -> None:
    first = ledger.app.record_activity(PROGRAM, activity(), CONTEXT)

    retry = ledger.app.record_activity(PROGRAM, activity(), CONTEXT)

    assert retry.created is False
    assert retry.position == first.position
    assert retry.earning == first.earning
    assert stream_length(ledger.database, earning_id(PROGRAM, "OPP-1")) == 1


def test_conflicting_retry_names_changed_fields(ledger: Services) -> None:
    ledger.app.record_activity(PROGRAM, activity(), CONTEXT)
    changed = activity(base="303.00", attributes={"series": "GTX"})

    with pytest.raises(ConflictError) as raised:
        ledger.app.record_activity(PROGRAM, changed, CONTEXT)

    assert raised.value.differences == {
        "base_amount": ("302.00 USD", "303.00 USD"),
        "attributes": ({}, {"series": "GTX"}),
    }
    assert "'OPP-1'" in raised.value.message
    assert raised.value.value == "OPP-1"


def test_conflicting_retry_names_date_only(ledger: Services) -> None:
    ledger.app.record_activity(PROGRAM, activity(), CONTEXT)

    with pytest.raises(ConflictError) as raised:
        ledger.app.record_activity(PROGRAM, activity(effective_date=date(2024, 2, 2)), CONTEXT)

    assert raised.value.differences == {"effective_date": ("2024-02-01", "2024-02-02")}


def test_fixed_reward_needs_no_base(ledger: Services) -> None:
    outcome = ledger.app.record_activity(
        PROGRAM, activity(activity_type="certification", base=None), CONTEXT
    )

    assert outcome.earning.amount == Money(25000, "USD")
    assert outcome.earning.fixed_amount == Money(25000, "USD")


def test_record_unknown_program_not_found(ledger: Services) -> None:
    with pytest.raises(NotFoundError):
        ledger.app.record_activity("other-program", activity(), CONTEXT)


def test_batch_reports_each_row(ledger: Services) -> None:
    # OTHER_PARTNER enrolls before rule set 1 takes effect.
    enroll(ledger, OTHER_PARTNER, effective_date=date(2023, 12, 1), display_name="Moses Frase")
    commands = [
        activity("OPP-1"),
        activity("OPP-1"),
        activity("OPP-2", partner_id="ghost"),
        activity("OPP-3", activity_type="webinar"),
        activity("OPP-4", effective_date=date(2024, 1, 10)),
        activity("OPP-5", partner_id=OTHER_PARTNER, effective_date=date(2023, 12, 15)),
        activity("OPP-6", attributes={"series": "GTX"}),
        activity("OPP-1", base="1.00"),
        activity("", base="1.00"),
    ]

    items = ledger.app.record_activities(PROGRAM, commands, CONTEXT)

    assert len(items) == len(commands)
    first, duplicate, ghost, webinar, early, no_rules, gtx, changed, blank = items
    assert first.outcome is not None
    assert first.outcome.created is True
    assert duplicate.outcome is not None
    assert duplicate.outcome.created is False
    assert duplicate.outcome.position == first.outcome.position
    assert duplicate.outcome.earning == first.outcome.earning
    assert isinstance(ghost.error, NotFoundError)
    assert ghost.error.field == "partner_id"
    assert isinstance(webinar.error, RuleNotFoundError)
    assert "'webinar'" in webinar.error.message
    assert isinstance(early.error, InvalidInputError)
    assert "before partner" in early.error.message
    assert early.error.field == "effective_date"
    assert isinstance(no_rules.error, RuleNotFoundError)
    assert "no rule set is in force on 2023-12-15" in no_rules.error.message
    assert gtx.outcome is not None
    assert gtx.outcome.created is True
    assert gtx.outcome.earning.amount == Money(1359, "USD")
    assert isinstance(changed.error, ConflictError)
    assert changed.error.differences == {"base_amount": ("302.00 USD", "1.00 USD")}
    assert isinstance(blank.error, InvalidInputError)
    assert blank.error.field == "source_ref"
    for item in items:
        assert (item.outcome is None) != (item.error is None)
    written = {
        ref
        for ref in ("OPP-1", "OPP-2", "OPP-3", "OPP-4", "OPP-5", "OPP-6")
        if stream_length(ledger.database, earning_id(PROGRAM, ref))
    }
    assert written == {"OPP-1", "OPP-6"}


def test_batch_retry_returns_stored_rows(ledger: Services) -> None:
    commands = [activity("OPP-1"), activity("OPP-2", base="10.00")]
    first = ledger.app.record_activities(PROGRAM, commands, CONTEXT)

    again = ledger.app.record_activities(PROGRAM, commands, CONTEXT)

    for before, after in zip(first, again, strict=True):
        assert before.outcome is not None
        assert after.outcome is not None
        assert after.outcome.created is False
        assert after.outcome.position == before.outcome.position
        assert after.outcome.earning == before.outcome.earning


def test_later_rule_set_keeps_earlier_earnings(ledger: Services) -> None:
    early = ledger.app.record_activity(PROGRAM, activity("OPP-1"), CONTEXT)

    ledger.app.publish_program(program_spec(V1, V2), CONTEXT)
    stored = ledger.app.repository.get(earning_id(PROGRAM, "OPP-1"))
    retry = ledger.app.record_activity(PROGRAM, activity("OPP-1"), CONTEXT)
    before_v2 = ledger.app.record_activity(
        PROGRAM, activity("OPP-2", effective_date=date(2024, 6, 30)), CONTEXT
    )
    after_v2 = ledger.app.record_activity(
        PROGRAM, activity("OPP-3", effective_date=date(2024, 7, 1)), CONTEXT
    )

    assert isinstance(stored, Earning)
    assert stored.amount == Money(6040, "USD")
    assert stored.rule_set_version == 1
    assert stored.rate == Decimal("0.20")
    assert retry.earning == early.earning
    assert before_v2.earning.rule_set_version == 1
    assert before_v2.earning.amount == Money(6040, "USD")
    assert after_v2.earning.rule_set_version == 2
    assert after_v2.earning.rate == Decimal("0.10")
    assert after_v2.earning.amount == Money(3020, "USD")


def test_base_reversal_uses_frozen_rate(ledger: Services) -> None:
    ledger.app.record_activity(PROGRAM, activity("OPP-1"), CONTEXT)
    ledger.app.publish_program(program_spec(V1, V2), CONTEXT)

    outcome = ledger.app.reverse_earning(PARTNER, reversal(base="100.00"), "rev-1", CONTEXT)

    assert outcome.reversed_amount == Money(2000, "USD")
    assert outcome.remaining_amount == Money(4040, "USD")


def test_partner_stream_stays_short(ledger: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = ledger.app.recorder
    original_select = recorder.select_events
    loaded: list[tuple[UUID, int]] = []

    def counting_select(originator_id: Any, **kwargs: Any) -> Any:
        events = original_select(originator_id, **kwargs)
        loaded.append((originator_id, len(events)))
        return events

    monkeypatch.setattr(recorder, "select_events", counting_select)

    ledger.app.record_activity(PROGRAM, activity("OPP-first"), CONTEXT)
    loaded_for_first = list(loaded)
    for batch in range(5):
        commands = [activity(f"OPP-{batch}-{i}", base="1.00") for i in range(100)]
        items = ledger.app.record_activities(PROGRAM, commands, CONTEXT)
        assert all(item.outcome is not None and item.outcome.created for item in items)
    loaded.clear()
    ledger.app.record_activity(PROGRAM, activity("OPP-last"), CONTEXT)

    assert stream_length(ledger.database, partner_id_uuid(PARTNER)) == 1
    assert stream_length(ledger.database, program_id_uuid(PROGRAM)) == 2
    # The application may reuse a program or partner it loaded before, so the
    # last recording loads at most what the first one did: the program (2
    # events) and the partner (1 event), never the 500 earnings in between.
    assert set(loaded) <= set(loaded_for_first)
    assert {originator_id for originator_id, _ in loaded_for_first} <= {
        program_id_uuid(PROGRAM),
        partner_id_uuid(PARTNER),
    }
    assert sum(count for _, count in loaded) <= 3


# Adjustments --------------------------------------------------------------------


def adjustment(amount: str = "25.00", reason: str = "goodwill credit") -> RecordAdjustment:
    return RecordAdjustment(
        amount=Money.parse(amount, "USD"), effective_date=date(2024, 2, 1), reason=reason
    )


def test_adjustment_retry_returns_original(ledger: Services) -> None:
    first = ledger.app.record_adjustment(PARTNER, adjustment(), "adj-1", CONTEXT)

    retry = ledger.app.record_adjustment(PARTNER, adjustment(), "adj-1", CONTEXT)

    assert first.created is True
    assert first.amount == Money(2500, "USD")
    assert first.source_ref == "adj-1"
    assert retry.created is False
    assert retry == dataclasses.replace(first, created=False)


def test_adjustment_key_reuse_conflicts(ledger: Services) -> None:
    ledger.app.record_adjustment(PARTNER, adjustment(), "adj-1", CONTEXT)

    with pytest.raises(ConflictError) as raised:
        ledger.app.record_adjustment(PARTNER, adjustment(amount="-25.00"), "adj-1", CONTEXT)

    assert raised.value.differences == {"amount": ("25.00 USD", "-25.00 USD")}
    assert "'adj-1'" in raised.value.message


def test_adjustment_key_is_per_partner(ledger: Services) -> None:
    enroll(ledger, OTHER_PARTNER, display_name="Moses Frase")

    mine = ledger.app.record_adjustment(PARTNER, adjustment(), "adj-1", CONTEXT)
    theirs = ledger.app.record_adjustment(OTHER_PARTNER, adjustment("5.00"), "adj-1", CONTEXT)

    assert mine.created is True
    assert theirs.created is True
    assert mine.adjustment_id != theirs.adjustment_id


def test_adjustment_unknown_partner_not_found(ledger: Services) -> None:
    with pytest.raises(NotFoundError, match="'ghost'"):
        ledger.app.record_adjustment("ghost", adjustment(), "adj-1", CONTEXT)


@pytest.mark.parametrize("key", ["", "x" * 201, "tab\there"])
def test_invalid_idempotency_key_is_rejected(ledger: Services, key: str) -> None:
    with pytest.raises(InvalidInputError) as raised:
        ledger.app.record_adjustment(PARTNER, adjustment(), key, CONTEXT)

    assert raised.value.field == "Idempotency-Key"


# Reversals ----------------------------------------------------------------------


def test_reversal_retry_returns_original(ledger: Services) -> None:
    ledger.app.record_activity(PROGRAM, activity(), CONTEXT)

    first = ledger.app.reverse_earning(PARTNER, reversal(amount="10.00"), "rev-1", CONTEXT)
    retry = ledger.app.reverse_earning(PARTNER, reversal(amount="10.00"), "rev-1", CONTEXT)

    assert first.created is True
    assert first.reversed_amount == Money(1000, "USD")
    assert first.remaining_amount == Money(5040, "USD")
    assert retry.created is False
    assert retry.position == first.position
    assert retry.reversed_amount == first.reversed_amount
    assert retry.remaining_amount == first.remaining_amount
    assert first.position == position_of(ledger.database, earning_id(PROGRAM, "OPP-1"), 2)
    assert stream_length(ledger.database, earning_id(PROGRAM, "OPP-1")) == 2


def test_reversal_key_reuse_conflicts(ledger: Services) -> None:
    ledger.app.record_activity(PROGRAM, activity(), CONTEXT)
    ledger.app.reverse_earning(PARTNER, reversal(amount="10.00"), "rev-1", CONTEXT)

    with pytest.raises(ConflictError) as raised:
        ledger.app.reverse_earning(PARTNER, reversal(amount="20.00"), "rev-1", CONTEXT)

    assert raised.value.differences == {"amount": ("10.00 USD", "20.00 USD")}
    assert stream_length(ledger.database, earning_id(PROGRAM, "OPP-1")) == 2


def test_full_reversal_then_again_is_rejected(ledger: Services) -> None:
    ledger.app.record_activity(PROGRAM, activity(), CONTEXT)
    ledger.app.reverse_earning(PARTNER, reversal(), "rev-1", CONTEXT)

    with pytest.raises(InvalidInputError, match="already fully reversed"):
        ledger.app.reverse_earning(PARTNER, reversal(), "rev-2", CONTEXT)


def test_other_partners_earning_not_found(ledger: Services) -> None:
    enroll(ledger, OTHER_PARTNER, display_name="Moses Frase")
    ledger.app.record_activity(PROGRAM, activity(), CONTEXT)

    with pytest.raises(NotFoundError) as raised:
        ledger.app.reverse_earning(OTHER_PARTNER, reversal(), "rev-1", CONTEXT)

    assert raised.value.field == "source_ref"
    assert f"'{OTHER_PARTNER}'" in raised.value.message
    assert stream_length(ledger.database, earning_id(PROGRAM, "OPP-1")) == 1


def test_reversal_unknown_source_ref_not_found(ledger: Services) -> None:
    with pytest.raises(NotFoundError, match="'OPP-404'"):
        ledger.app.reverse_earning(PARTNER, reversal("OPP-404"), "rev-1", CONTEXT)


# Tier changes -------------------------------------------------------------------


def tier(to_tier: str = "gold", reason: str = "quota met") -> ChangeTier:
    return ChangeTier(tier=to_tier, effective_date=date(2024, 5, 1), reason=reason)


def test_tier_change_retry_returns_original(ledger: Services) -> None:
    first = ledger.app.change_tier(PARTNER, tier(), "tier-1", CONTEXT)

    retry = ledger.app.change_tier(PARTNER, tier(), "tier-1", CONTEXT)

    assert first.created is True
    assert (first.from_tier, first.to_tier) == ("registered", "gold")
    assert retry.created is False
    assert (retry.from_tier, retry.to_tier) == ("registered", "gold")
    assert retry.position == first.position
    assert ledger.app.get_partner(PARTNER).tier == "gold"
    assert stream_length(ledger.database, partner_id_uuid(PARTNER)) == 2


def test_tier_key_reuse_conflicts(ledger: Services) -> None:
    ledger.app.change_tier(PARTNER, tier(), "tier-1", CONTEXT)

    with pytest.raises(ConflictError) as raised:
        ledger.app.change_tier(PARTNER, tier("platinum"), "tier-1", CONTEXT)

    assert raised.value.differences == {"tier": ("gold", "platinum")}
    assert ledger.app.get_partner(PARTNER).tier == "gold"


def test_tier_change_to_current_tier_is_rejected(ledger: Services) -> None:
    with pytest.raises(InvalidInputError, match="already in tier 'registered'"):
        ledger.app.change_tier(PARTNER, tier("registered"), "tier-1", CONTEXT)


# Concurrency --------------------------------------------------------------------


def test_concurrent_same_activity_creates_once(ledger: Services) -> None:
    def record() -> Any:
        return ledger.app.record_activity(PROGRAM, activity(), CONTEXT)

    outcomes = race(ledger.database, [record, record])

    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    assert sorted(o.created for o in outcomes) == [False, True]
    assert outcomes[0].position == outcomes[1].position
    assert outcomes[0].earning == outcomes[1].earning
    assert stream_length(ledger.database, earning_id(PROGRAM, "OPP-1")) == 1


def test_concurrent_different_content_conflicts(ledger: Services) -> None:
    def record(base: str) -> Callable[[], Any]:
        return lambda: ledger.app.record_activity(PROGRAM, activity(base=base), CONTEXT)

    outcomes = race(ledger.database, [record("302.00"), record("303.00")])

    created = [o for o in outcomes if not isinstance(o, BaseException)]
    conflicts = [o for o in outcomes if isinstance(o, ConflictError)]
    assert len(created) == 1
    assert created[0].created is True
    assert len(conflicts) == 1
    assert set(conflicts[0].differences) == {"base_amount"}
    assert stream_length(ledger.database, earning_id(PROGRAM, "OPP-1")) == 1


def test_concurrent_full_reversals_succeed_once(ledger: Services) -> None:
    ledger.app.record_activity(PROGRAM, activity(), CONTEXT)

    def reverse(key: str) -> Callable[[], Any]:
        return lambda: ledger.app.reverse_earning(PARTNER, reversal(), key, CONTEXT)

    outcomes = race(ledger.database, [reverse("rev-a"), reverse("rev-b")])

    succeeded = [o for o in outcomes if not isinstance(o, BaseException)]
    rejected = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(succeeded) == 1
    assert succeeded[0].reversed_amount == Money(6040, "USD")
    assert len(rejected) == 1
    assert isinstance(rejected[0], InvalidInputError)
    assert "already fully reversed" in rejected[0].message
    assert stream_length(ledger.database, earning_id(PROGRAM, "OPP-1")) == 2


# Dates and tiers ----------------------------------------------------------------


def tiered_program() -> ProgramSpec:
    return ProgramSpec(
        id=PROGRAM,
        name="CRM channel",
        currency="USD",
        rule_sets=[V1],
        time_zone="Europe/Berlin",
        tiers=["registered", "silver", "gold"],
    )


def test_future_activity_is_rejected(services: Services) -> None:
    services.app.publish_program(program_spec(), CONTEXT)
    enroll(services)

    with pytest.raises(InvalidInputError) as raised:
        services.app.record_activity(PROGRAM, activity(effective_date=date(2999, 12, 31)), CONTEXT)

    assert raised.value.field == "effective_date"
    assert "in the future" in raised.value.message


def test_future_adjustment_is_rejected(services: Services) -> None:
    services.app.publish_program(program_spec(), CONTEXT)
    enroll(services)
    command = RecordAdjustment(
        amount=Money(100, "USD"), effective_date=date(9999, 12, 31), reason="bonus"
    )

    with pytest.raises(InvalidInputError) as raised:
        services.app.record_adjustment(PARTNER, command, "adj-future", CONTEXT)

    assert raised.value.field == "effective_date"


def test_future_enrollment_is_rejected(services: Services) -> None:
    services.app.publish_program(program_spec(), CONTEXT)

    with pytest.raises(InvalidInputError) as raised:
        enroll(services, effective_date=date(2999, 1, 1))

    assert raised.value.field == "effective_date"


def test_adjustment_before_enrollment_is_rejected(services: Services) -> None:
    services.app.publish_program(program_spec(), CONTEXT)
    enroll(services)
    command = RecordAdjustment(
        amount=Money(100, "USD"), effective_date=date(2010, 1, 1), reason="bonus"
    )

    with pytest.raises(InvalidInputError) as raised:
        services.app.record_adjustment(PARTNER, command, "adj-early", CONTEXT)

    assert raised.value.field == "effective_date"
    assert "2024-01-15" in raised.value.message


def test_tier_outside_program_tiers_is_rejected(services: Services) -> None:
    services.app.publish_program(tiered_program(), CONTEXT)
    enroll(services)
    typo = ChangeTier(tier="glod", effective_date=date(2024, 3, 1), reason="review")

    with pytest.raises(InvalidInputError) as raised:
        services.app.change_tier(PARTNER, typo, "tier-typo", CONTEXT)

    assert raised.value.field == "tier"
    assert "registered, silver, gold" in raised.value.message


def test_enrollment_tier_outside_program_tiers_is_rejected(services: Services) -> None:
    services.app.publish_program(tiered_program(), CONTEXT)
    command = EnrollPartner(
        partner_id=PARTNER,
        display_name="Darcel Schlecht",
        effective_date=date(2024, 1, 15),
        tier="diamond",
    )

    with pytest.raises(InvalidInputError) as raised:
        services.app.enroll_partner(PROGRAM, command, CONTEXT)

    assert raised.value.field == "tier"


def test_tier_changes_are_recorded_in_date_order(services: Services) -> None:
    services.app.publish_program(tiered_program(), CONTEXT)
    enroll(services)
    services.app.change_tier(
        PARTNER,
        ChangeTier(tier="gold", effective_date=date(2024, 5, 1), reason="review"),
        "tier-may",
        CONTEXT,
    )
    earlier = ChangeTier(tier="silver", effective_date=date(2024, 1, 20), reason="review")

    with pytest.raises(InvalidInputError) as raised:
        services.app.change_tier(PARTNER, earlier, "tier-january", CONTEXT)

    assert raised.value.field == "effective_date"
    assert services.app.get_partner(PARTNER).tier == "gold"


def test_program_tiers_cannot_change(services: Services) -> None:
    services.app.publish_program(tiered_program(), CONTEXT)
    changed = ProgramSpec(
        id=PROGRAM,
        name="CRM channel",
        currency="USD",
        rule_sets=[V1],
        time_zone="Europe/Berlin",
        tiers=["registered", "gold"],
    )

    with pytest.raises(ConflictError) as raised:
        services.app.publish_program(changed, CONTEXT)

    assert set(raised.value.differences) == {"tiers"}


def test_enrollment_defaults_to_lowest_tier(services: Services) -> None:
    spec = tiered_program()
    services.app.publish_program(
        ProgramSpec(
            id=spec.id,
            name=spec.name,
            currency=spec.currency,
            rule_sets=spec.rule_sets,
            time_zone=spec.time_zone,
            tiers=["bronze", "silver", "gold"],
        ),
        CONTEXT,
    )

    outcome = services.app.enroll_partner(
        PROGRAM,
        EnrollPartner(
            partner_id=PARTNER, display_name="Darcel Schlecht", effective_date=date(2024, 1, 15)
        ),
        CONTEXT,
    )

    assert outcome.created
    assert outcome.tier == "bronze"
    assert services.app.get_partner(PARTNER).tier == "bronze"


def test_pricing_cache_stays_bounded(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ledger.application.service._MAX_CACHED_PARTNERS", 1)
    services.app.publish_program(program_spec(), CONTEXT)
    enroll(services)
    enroll(services, OTHER_PARTNER, display_name="Moses Frase")

    first = services.app.record_activity(PROGRAM, activity("OPP-A"), CONTEXT)
    second = services.app.record_activity(
        PROGRAM, activity("OPP-B", partner_id=OTHER_PARTNER), CONTEXT
    )
    third = services.app.record_activity(PROGRAM, activity("OPP-C"), CONTEXT)

    assert [first.created, second.created, third.created] == [True, True, True]
    assert third.earning.partner_id == PARTNER
    assert len(services.app._pricing_partners) == 1


def test_program_name_cannot_change(services: Services) -> None:
    services.app.publish_program(program_spec(), CONTEXT)
    renamed = ProgramSpec(
        id=PROGRAM,
        name="Renamed channel",
        currency="USD",
        rule_sets=[V1],
        time_zone="Europe/Berlin",
    )

    with pytest.raises(ConflictError) as raised:
        services.app.publish_program(renamed, CONTEXT)

    assert raised.value.differences == {"name": ("CRM channel", "Renamed channel")}
