"""Tests for the aggregates: Earning reversals, Program publishing, Partner tiers, Adjustment."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Mapper
from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.adjustment import Adjustment
from ledger.domain.earning import Earning
from ledger.domain.ids import earning_id, partner_id_uuid, program_id_uuid
from ledger.domain.money import Money, RoundingMode
from ledger.domain.partner import Partner
from ledger.domain.program import Program
from ledger.domain.rules import Rule, RuleSet, compute_reward
from ledger.errors import ConflictError, InvalidInputError
from ledger.infrastructure.transcoder import MsgspecTranscoder

EARNED_ON = date(2024, 3, 10)


def make_earning(
    *,
    base: str | None = "302.00",
    rate: str | None = "0.20",
    fixed: str | None = None,
    rounding: RoundingMode = RoundingMode.HALF_UP,
    currency: str = "USD",
) -> Earning:
    """Price one activity with a one-rule set and record it as an earning."""
    rule = Rule(
        id="r1",
        activity_type="deal_won",
        rate=None if rate is None else Decimal(rate),
        fixed=fixed,
    )
    rules = RuleSet(version=1, effective_from=date(2024, 1, 1), rules=(rule,))
    reward = compute_reward(
        rules,
        currency=currency,
        rounding=rounding,
        activity_type="deal_won",
        attributes={},
        base=None if base is None else Money.parse(base, currency),
    )
    return earning_from_reward(reward)


def earning_from_reward(reward: Any) -> Earning:
    return Earning.earn(
        program_id="crm",
        partner_id="p-1",
        activity_type="deal_won",
        source_ref="OPP-1",
        effective_date=EARNED_ON,
        attributes={"series": "GTX"},
        reward=reward,
        actor="tester",
        correlation_id="corr-1",
    )


def reverse(earning: Earning, **overrides: Any) -> Money:
    arguments: dict[str, Any] = {
        "amount": None,
        "base": None,
        "effective_date": EARNED_ON,
        "reason": "deal refunded",
        "actor": "tester",
        "idempotency_key": "key-1",
        "correlation_id": "corr-2",
    }
    arguments.update(overrides)
    return earning.reverse(**arguments)


def replay(events: Sequence[Any]) -> Any:
    """Rebuild an aggregate from events sent through the ledger's transcoder."""
    mapper: Mapper[Any] = Mapper(transcoder=MsgspecTranscoder())
    aggregate: Aggregate | None = None
    for event in events:
        stored = mapper.to_stored_event(event)
        aggregate = mapper.to_domain_event(stored).mutate(aggregate)  # type: ignore[attr-defined]
    return aggregate


# Earning ----------------------------------------------------------------------


def test_earning_freezes_pricing() -> None:
    earning = make_earning()

    assert earning.id == earning_id("crm", "OPP-1")
    assert earning.amount == Money(6040, "USD")
    assert earning.remaining == Money(6040, "USD")
    assert earning.rate == Decimal("0.20")
    assert earning.base_minor == 30200
    assert earning.rule_set_version == 1
    assert earning.rounding is RoundingMode.HALF_UP
    assert earning.request_fields() == {
        "partner_id": "p-1",
        "activity_type": "deal_won",
        "effective_date": EARNED_ON,
        "base_amount": Money(30200, "USD"),
        "attributes": {"series": "GTX"},
    }


def test_earned_event_matches_earn() -> None:
    reward = compute_reward(
        RuleSet(
            version=1,
            effective_from=date(2024, 1, 1),
            rules=(Rule(id="r1", activity_type="deal_won", rate=Decimal("0.05")),),
        ),
        currency="USD",
        rounding=RoundingMode.HALF_EVEN,
        activity_type="deal_won",
        attributes={},
        base=Money.parse("1234.56", "USD"),
    )
    arguments: dict[str, Any] = {
        "program_id": "crm",
        "partner_id": "p-1",
        "activity_type": "deal_won",
        "source_ref": "OPP-1",
        "effective_date": EARNED_ON,
        "attributes": {"series": "GTX"},
        "reward": reward,
        "actor": "tester",
        "correlation_id": "corr-1",
    }

    made = Earning.earn(**arguments).pending_events[0]
    built = Earning.earned(**arguments)

    assert type(built) is type(made)
    assert {**vars(built), "timestamp": None} == {**vars(made), "timestamp": None}
    assert built.timestamp.tzinfo == made.timestamp.tzinfo
    mapper: Mapper[Any] = Mapper(transcoder=MsgspecTranscoder())
    assert mapper.to_stored_event(built).topic == mapper.to_stored_event(made).topic
    rebuilt = replay([built])
    assert isinstance(rebuilt, Earning)
    assert rebuilt.id == earning_id("crm", "OPP-1")
    assert rebuilt.version == 1
    assert rebuilt.amount == Money(6173, "USD")
    assert rebuilt.request_fields() == made.mutate(None).request_fields()


def test_full_reversal_reverses_remaining() -> None:
    earning = make_earning()

    reversed_amount = reverse(earning)

    assert reversed_amount == Money(6040, "USD")
    assert earning.remaining == Money(0, "USD")
    assert earning.version == 2


def test_full_reversal_after_partial_takes_rest() -> None:
    earning = make_earning()
    reverse(earning, amount=Money(1000, "USD"))

    reversed_amount = reverse(earning, idempotency_key="key-2")

    assert reversed_amount == Money(5040, "USD")
    assert earning.remaining == Money(0, "USD")


def test_second_full_reversal_is_rejected() -> None:
    earning = make_earning()
    reverse(earning)

    with pytest.raises(InvalidInputError) as raised:
        reverse(earning, idempotency_key="key-2")

    assert "already fully reversed" in raised.value.message
    assert "'OPP-1'" in raised.value.message
    assert earning.version == 2


def test_partial_reversal_by_amount() -> None:
    earning = make_earning()

    reversed_amount = reverse(earning, amount=Money(1040, "USD"))

    assert reversed_amount == Money(1040, "USD")
    assert earning.remaining == Money(5000, "USD")
    assert earning.reversed_base_minor == 0


@pytest.mark.parametrize("amount_minor", [6041, 0, -1])
def test_reversal_amount_outside_remaining_is_rejected(amount_minor: int) -> None:
    earning = make_earning()

    with pytest.raises(InvalidInputError) as raised:
        reverse(earning, amount=Money(amount_minor, "USD"))

    assert "60.40 USD" in raised.value.message
    assert raised.value.field == "amount.amount"
    assert earning.remaining == Money(6040, "USD")


def test_over_reversal_after_partial_is_rejected() -> None:
    earning = make_earning()
    reverse(earning, amount=Money(6000, "USD"))

    with pytest.raises(InvalidInputError, match="at most the remaining 0.40 USD"):
        reverse(earning, amount=Money(41, "USD"), idempotency_key="key-2")

    assert earning.remaining == Money(40, "USD")


def test_reversal_in_other_currency_is_rejected() -> None:
    earning = make_earning()

    with pytest.raises(InvalidInputError) as raised:
        reverse(earning, amount=Money(100, "EUR"))

    assert raised.value.field == "amount.currency"


def test_reversal_with_amount_and_base_is_rejected() -> None:
    earning = make_earning()

    with pytest.raises(InvalidInputError, match="not both") as raised:
        reverse(earning, amount=Money(100, "USD"), base=Money(250, "USD"))

    assert raised.value.field == "base_amount"
    assert raised.value.value == "2.50"


def test_reversal_needs_reason() -> None:
    earning = make_earning()

    with pytest.raises(InvalidInputError) as raised:
        reverse(earning, reason="  ")

    assert raised.value.field == "reason"


def test_reversal_before_earning_date_is_rejected() -> None:
    earning = make_earning()

    with pytest.raises(InvalidInputError) as raised:
        reverse(earning, effective_date=date(2024, 3, 9))

    assert "2024-03-09" in raised.value.message
    assert "2024-03-10" in raised.value.message
    assert raised.value.field == "effective_date"


def test_base_reversal_uses_frozen_rate() -> None:
    earning = make_earning()

    first = reverse(earning, base=Money.parse("100.00", "USD"))
    second = reverse(earning, base=Money.parse("202.00", "USD"), idempotency_key="key-2")

    assert first == Money(2000, "USD")
    assert second == Money(4040, "USD")
    assert earning.remaining == Money(0, "USD")
    assert earning.reversed_base_minor == 30200


def test_last_base_piece_takes_rounding_residue() -> None:
    # 10% of 0.05 USD is 0.5 cent, earned as 1 cent (half-up). Each 0.01 USD of
    # base prices at 0.1 cent, which rounds to 0. The last piece takes the cent.
    earning = make_earning(base="0.05", rate="0.10")
    assert earning.amount == Money(1, "USD")

    pieces = [reverse(earning, base=Money(1, "USD"), idempotency_key=f"k{i}") for i in range(5)]

    assert pieces == [Money(0, "USD")] * 4 + [Money(1, "USD")]
    assert earning.remaining == Money(0, "USD")


def test_base_pieces_never_exceed_earning() -> None:
    # 50% of 0.05 USD is 2.5 cents, earned as 3 cents (half-up). Each 0.01 USD
    # of base prices at 0.5 cent, which rounds up to 1 cent, so the third
    # piece already reverses everything and the fourth has nothing left.
    earning = make_earning(base="0.05", rate="0.50")
    assert earning.amount == Money(3, "USD")

    pieces = [reverse(earning, base=Money(1, "USD"), idempotency_key=f"k{i}") for i in range(3)]
    with pytest.raises(InvalidInputError, match="already fully reversed"):
        reverse(earning, base=Money(1, "USD"), idempotency_key="k3")

    assert pieces == [Money(1, "USD")] * 3
    assert earning.remaining == Money(0, "USD")


@pytest.mark.parametrize("base_minor", [0, -100, 30201])
def test_base_outside_unreversed_base_is_rejected(base_minor: int) -> None:
    earning = make_earning()

    with pytest.raises(InvalidInputError) as raised:
        reverse(earning, base=Money(base_minor, "USD"))

    assert "302.00 USD" in raised.value.message
    assert raised.value.field == "base_amount.amount"


def test_base_beyond_rest_after_partial_is_rejected() -> None:
    earning = make_earning()
    reverse(earning, base=Money.parse("300.00", "USD"))

    with pytest.raises(InvalidInputError, match="unreversed base 2.00 USD"):
        reverse(earning, base=Money.parse("2.01", "USD"), idempotency_key="key-2")


def test_base_reversal_of_fixed_reward_is_rejected() -> None:
    earning = make_earning(base=None, rate=None, fixed="250.00")

    with pytest.raises(InvalidInputError, match="fixed reward") as raised:
        reverse(earning, base=Money.parse("10.00", "USD"))

    assert raised.value.field == "base_amount"


def test_base_reversal_in_other_currency_is_rejected() -> None:
    earning = make_earning()

    with pytest.raises(InvalidInputError) as raised:
        reverse(earning, base=Money.parse("10.00", "EUR"))

    assert raised.value.field == "base_amount.currency"


def test_reversed_earning_replays_to_same_state() -> None:
    earning = make_earning()
    reverse(earning, base=Money.parse("100.00", "USD"))
    reverse(earning, amount=Money(40, "USD"), idempotency_key="key-2")

    copy = replay(earning.collect_events())

    assert isinstance(copy, Earning)
    assert copy.remaining == earning.remaining == Money(4000, "USD")
    assert copy.reversed_base_minor == 10000
    assert copy.rate == Decimal("0.20")
    assert copy.version == 3


@st.composite
def base_splits(draw: st.DrawFn) -> tuple[int, list[int]]:
    """Draw a base in minor units and a split of it into positive parts."""
    base_minor = draw(st.integers(min_value=1, max_value=10**9))
    cut_count = draw(st.integers(min_value=0, max_value=min(base_minor - 1, 12)))
    cuts = draw(
        st.lists(
            st.integers(min_value=1, max_value=base_minor - 1),
            min_size=cut_count,
            max_size=cut_count,
            unique=True,
        )
        if cut_count
        else st.just([])
    )
    edges = [0, *sorted(cuts), base_minor]
    return base_minor, [high - low for low, high in itertools.pairwise(edges)]


@given(
    split=base_splits(),
    rate=st.decimals(min_value=0, max_value=1, places=4, allow_nan=False, allow_infinity=False),
    rounding=st.sampled_from(list(RoundingMode)),
)
def test_base_pieces_sum_to_earning(
    split: tuple[int, list[int]], rate: Decimal, rounding: RoundingMode
) -> None:
    base_minor, parts = split
    base = Money(base_minor, "USD").format()
    earning = make_earning(base=base, rate=str(rate), rounding=rounding)
    earned = earning.amount_minor

    reversed_total = 0
    for index, part in enumerate(parts):
        try:
            piece = reverse(earning, base=Money(part, "USD"), idempotency_key=f"k{index}")
        except InvalidInputError as error:
            # Rounding up can use the whole reward before the last piece.
            assert "already fully reversed" in error.message
            assert earning.remaining.amount_minor == 0
            continue
        assert piece.amount_minor >= 0
        reversed_total += piece.amount_minor
        assert reversed_total <= earned

    assert reversed_total == earned
    assert earning.remaining == Money(0, "USD")


# Program ----------------------------------------------------------------------


RULE_A = Rule(id="deal", activity_type="deal_won", rate=Decimal("0.03"))
RULE_B = Rule(id="deal", activity_type="deal_won", rate=Decimal("0.04"))
V1 = RuleSet(version=1, effective_from=date(2024, 1, 1), rules=(RULE_A,))


def make_program(currency: str = "USD") -> Program:
    return Program.create(
        program_id="crm-channel",
        name="CRM channel",
        currency=currency,
        time_zone="Europe/Berlin",
        rounding=RoundingMode.HALF_EVEN,
        actor="tester",
        correlation_id="corr-1",
    )


def publish(program: Program, rule_set: RuleSet) -> bool:
    return program.publish(rule_set, actor="tester", correlation_id="corr-1")


def test_program_create_records_settings() -> None:
    program = make_program()

    assert program.id == program_id_uuid("crm-channel")
    assert program.currency == "USD"
    assert program.rounding is RoundingMode.HALF_EVEN
    assert program.zone.key == "Europe/Berlin"
    assert program.rule_sets == []


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"program_id": "crm channel"}, "id"),
        ({"program_id": ""}, "id"),
        ({"currency": "usd"}, "currency"),
        ({"time_zone": "Mars/Olympus"}, "time_zone"),
    ],
)
def test_program_create_rejects_bad_settings(overrides: dict[str, str], field: str) -> None:
    arguments: dict[str, Any] = {
        "program_id": "crm",
        "name": "CRM",
        "currency": "USD",
        "time_zone": "UTC",
        "rounding": RoundingMode.HALF_UP,
        "actor": "tester",
        "correlation_id": "corr-1",
    }
    arguments.update(overrides)

    with pytest.raises(InvalidInputError) as raised:
        Program.create(**arguments)

    assert raised.value.field == field


def test_publish_appends_rule_set() -> None:
    program = make_program()

    assert publish(program, V1) is True

    assert program.rule_sets == [V1]
    assert program.rule_set_on(date(2024, 6, 1)) == V1
    assert program.version == 2


def test_identical_republish_is_noop() -> None:
    program = make_program()
    publish(program, V1)
    program.collect_events()

    assert publish(program, V1) is False

    assert program.collect_events() == []
    assert program.rule_sets == [V1]


def test_identical_republish_after_replay_is_noop() -> None:
    # A program loaded from the store contains rule sets decoded from events.
    # They must still compare equal to the same file published again.
    program = make_program()
    publish(program, V1)
    loaded = replay(program.collect_events())

    assert publish(loaded, V1) is False
    assert loaded.collect_events() == []


def test_changed_version_raises_conflict() -> None:
    program = make_program()
    publish(program, V1)
    changed = RuleSet(version=1, effective_from=date(2024, 1, 1), rules=(RULE_B,))

    with pytest.raises(ConflictError) as raised:
        publish(program, changed)

    assert "version 1" in raised.value.message
    assert "'crm-channel'" in raised.value.message
    assert "version 2" in raised.value.message
    assert raised.value.field == "rule_sets.version"
    assert program.rule_sets == [V1]


def test_next_version_must_start_later() -> None:
    program = make_program()
    publish(program, V1)

    for effective_from in (date(2024, 1, 1), date(2023, 12, 31)):
        retroactive = RuleSet(version=2, effective_from=effective_from, rules=(RULE_B,))
        with pytest.raises(InvalidInputError) as raised:
            publish(program, retroactive)
        assert "never change retroactively" in raised.value.message
        assert raised.value.field == "rule_sets.effective_from"
        assert raised.value.value == effective_from.isoformat()

    assert program.rule_sets == [V1]


def test_version_gap_is_rejected() -> None:
    program = make_program()
    publish(program, V1)
    skipped = RuleSet(version=3, effective_from=date(2024, 6, 1), rules=(RULE_B,))

    with pytest.raises(InvalidInputError, match="publish version 2"):
        publish(program, skipped)


def test_later_version_keeps_earlier_dates() -> None:
    program = make_program()
    publish(program, V1)
    v2 = RuleSet(version=2, effective_from=date(2024, 6, 1), rules=(RULE_B,))

    assert publish(program, v2) is True

    assert program.rule_set_on(date(2024, 5, 31)) == V1
    assert program.rule_set_on(date(2024, 6, 1)) == v2
    assert publish(program, V1) is False


def test_publish_validates_in_program_currency() -> None:
    program = make_program(currency="JPY")
    fractional = Rule(id="signup", activity_type="signup", fixed="0.50")

    with pytest.raises(InvalidInputError, match="JPY"):
        publish(program, RuleSet(version=1, effective_from=date(2024, 1, 1), rules=(fractional,)))

    assert program.rule_sets == []


# Partner ----------------------------------------------------------------------


def make_partner() -> Partner:
    return Partner.enroll(
        partner_id="darcel-schlecht",
        program_id="crm-channel",
        display_name="Darcel Schlecht",
        region="Central",
        channel_manager="Melvin Marxen",
        tier="registered",
        effective_date=date(2024, 1, 15),
        actor="tester",
        source_ref="",
        correlation_id="corr-1",
    )


def change_tier(partner: Partner, to_tier: str) -> None:
    partner.change_tier(
        to_tier=to_tier,
        effective_date=date(2024, 5, 1),
        reason="quota met",
        actor="tester",
        idempotency_key="key-1",
        correlation_id="corr-2",
    )


def test_enroll_partner() -> None:
    partner = make_partner()

    assert partner.id == partner_id_uuid("darcel-schlecht")
    assert partner.tier == "registered"
    assert partner.enrolled_on == date(2024, 1, 15)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"partner_id": "has space"}, "partner_id"),
        ({"partner_id": ""}, "partner_id"),
        ({"partner_id": "x" * 101}, "partner_id"),
        ({"display_name": " "}, "display_name"),
        ({"tier": ""}, "tier"),
    ],
)
def test_enroll_rejects_bad_details(overrides: dict[str, str], field: str) -> None:
    arguments: dict[str, Any] = {
        "partner_id": "p-1",
        "program_id": "crm",
        "display_name": "P One",
        "region": "",
        "channel_manager": "",
        "tier": "registered",
        "effective_date": date(2024, 1, 1),
        "actor": "tester",
        "source_ref": "",
        "correlation_id": "corr-1",
    }
    arguments.update(overrides)

    with pytest.raises(InvalidInputError) as raised:
        Partner.enroll(**arguments)

    assert raised.value.field == field


def test_change_tier_records_move() -> None:
    partner = make_partner()

    change_tier(partner, "gold")

    events = partner.collect_events()
    assert partner.tier == "gold"
    assert isinstance(events[-1], Partner.TierChanged)
    assert events[-1].from_tier == "registered"
    assert events[-1].to_tier == "gold"
    assert events[-1].reason == "quota met"
    assert replay(events).tier == "gold"


def test_change_to_same_tier_is_rejected() -> None:
    partner = make_partner()

    with pytest.raises(InvalidInputError, match="already in tier 'registered'"):
        change_tier(partner, "registered")

    assert partner.version == 1


def test_change_to_empty_tier_is_rejected() -> None:
    partner = make_partner()

    with pytest.raises(InvalidInputError) as raised:
        change_tier(partner, " ")

    assert raised.value.field == "tier"


def test_tier_changed_v1_upcasts_with_empty_reason() -> None:
    state: dict[str, object] = {"from_tier": "registered", "to_tier": "gold"}

    Partner.TierChanged.upcast_v1_v2(state)

    assert state == {"from_tier": "registered", "to_tier": "gold", "reason": ""}
    assert Partner.TierChanged.class_version == 2


# Adjustment -------------------------------------------------------------------


def record_adjustment(amount: Money, reason: str = "goodwill credit") -> Adjustment:
    return Adjustment.record(
        partner_id="p-1",
        program_id="crm",
        program_currency="USD",
        amount=amount,
        effective_date=date(2024, 2, 1),
        reason=reason,
        actor="tester",
        idempotency_key="adj-1",
        source_ref="",
        correlation_id="corr-1",
    )


@pytest.mark.parametrize("amount_minor", [2500, -2500])
def test_adjustment_credits_or_debits(amount_minor: int) -> None:
    adjustment = record_adjustment(Money(amount_minor, "USD"))

    assert adjustment.amount == Money(amount_minor, "USD")
    assert adjustment.request_fields()["amount"] == Money(amount_minor, "USD")


@pytest.mark.parametrize(
    ("amount", "reason", "field"),
    [
        (Money(0, "USD"), "goodwill credit", "amount.amount"),
        (Money(100, "EUR"), "goodwill credit", "amount.currency"),
        (Money(100, "USD"), " ", "reason"),
    ],
)
def test_adjustment_rejects_bad_input(amount: Money, reason: str, field: str) -> None:
    with pytest.raises(InvalidInputError) as raised:
        record_adjustment(amount, reason)

    assert raised.value.field == field
