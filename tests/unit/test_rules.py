"""Tests for ledger.domain.rules: choosing the rule set and rule, validation, pricing."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import msgspec
import pytest

from ledger.domain.money import Money, RoundingMode
from ledger.domain.rules import (
    Rule,
    RuleSet,
    compute_reward,
    find_pricing_rule,
    rule_set_in_force,
)
from ledger.errors import InvalidInputError, RuleNotFoundError


def rule_set(version: int, effective_from: date, *rules: Rule) -> RuleSet:
    return RuleSet(version=version, effective_from=effective_from, rules=rules)


GENERIC = Rule(id="deal-any", activity_type="deal_won", rate=Decimal("0.03"))
SERIES = Rule(
    id="deal-gtx", activity_type="deal_won", match={"series": "GTX"}, rate=Decimal("0.045")
)
SERIES_REGION = Rule(
    id="deal-gtx-emea",
    activity_type="deal_won",
    match={"series": "GTX", "region": "EMEA"},
    rate=Decimal("0.05"),
)
CERTIFIED = Rule(id="certified", activity_type="certification", fixed="250.00")


# Rule set in force ------------------------------------------------------------


def test_rule_set_in_force_takes_latest_started() -> None:
    first = rule_set(1, date(2024, 1, 1), GENERIC)
    second = rule_set(2, date(2024, 4, 1), GENERIC)
    third = rule_set(3, date(2024, 7, 1), GENERIC)
    # Out of order on purpose: the choice depends on dates, not list position.
    sets = [third, first, second]

    assert rule_set_in_force(sets, date(2024, 1, 1)) is first
    assert rule_set_in_force(sets, date(2024, 3, 31)) is first
    assert rule_set_in_force(sets, date(2024, 4, 1)) is second
    assert rule_set_in_force(sets, date(2024, 6, 30)) is second
    assert rule_set_in_force(sets, date(2030, 1, 1)) is third


def test_rule_set_in_force_before_first_names_start() -> None:
    sets = [rule_set(1, date(2024, 1, 1), GENERIC)]

    with pytest.raises(RuleNotFoundError) as raised:
        rule_set_in_force(sets, date(2023, 12, 31))

    assert "2023-12-31" in raised.value.message
    assert "2024-01-01" in raised.value.message
    assert raised.value.field == "effective_date"
    assert raised.value.value == "2023-12-31"


def test_rule_set_in_force_without_sets_says_publish() -> None:
    with pytest.raises(RuleNotFoundError, match="no published rule set"):
        rule_set_in_force([], date(2024, 1, 1))


# Most specific rule -------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "expected_rule"),
    [
        ({"series": "GTX", "region": "EMEA"}, "deal-gtx-emea"),
        ({"series": "GTX", "region": "APAC"}, "deal-gtx"),
        ({"series": "GTX"}, "deal-gtx"),
        ({"series": "MG", "region": "EMEA"}, "deal-any"),
        ({}, "deal-any"),
    ],
)
def test_most_specific_rule_wins(attributes: dict[str, str], expected_rule: str) -> None:
    # Most specific first and last, so list order cannot decide the outcome.
    forward = rule_set(1, date(2024, 1, 1), SERIES_REGION, SERIES, GENERIC)
    backward = rule_set(1, date(2024, 1, 1), GENERIC, SERIES, SERIES_REGION)

    assert forward.find_rule("deal_won", attributes).id == expected_rule
    assert backward.find_rule("deal_won", attributes).id == expected_rule


def test_find_rule_ignores_other_activity_types() -> None:
    rules = rule_set(1, date(2024, 1, 1), CERTIFIED, SERIES)

    with pytest.raises(RuleNotFoundError) as raised:
        rules.find_rule("deal_won", {"series": "MG"})

    assert "'deal_won'" in raised.value.message
    assert "certification" in raised.value.message
    assert "accept series GTX" in raised.value.message
    assert raised.value.field == "attributes.series"
    assert raised.value.value == "MG"


def test_equally_specific_overlap_is_rejected() -> None:
    # A GTX deal in EMEA would match both rules with one key each.
    by_region = Rule(
        id="deal-emea", activity_type="deal_won", match={"region": "EMEA"}, rate=Decimal("0.02")
    )
    rules = rule_set(1, date(2024, 1, 1), SERIES, by_region)

    with pytest.raises(InvalidInputError) as raised:
        rules.validate("USD")

    assert "deal-emea" in raised.value.message


# Validation -------------------------------------------------------------------


def test_valid_rule_set_passes() -> None:
    rule_set(1, date(2024, 1, 1), GENERIC, SERIES, SERIES_REGION, CERTIFIED).validate("USD")


def test_duplicate_rule_id_is_named() -> None:
    clash = Rule(id="deal-gtx", activity_type="deal_won", match={"x": "y"}, rate=Decimal("0.01"))
    rules = rule_set(3, date(2024, 1, 1), SERIES, clash)

    with pytest.raises(InvalidInputError) as raised:
        rules.validate("USD")

    assert "'deal-gtx'" in raised.value.message
    assert "rule set 3" in raised.value.message
    assert raised.value.field == "rule_sets[3].rules[1].id"
    assert raised.value.value == "deal-gtx"


def test_rate_and_fixed_together_is_named() -> None:
    both = Rule(id="both", activity_type="deal_won", rate=Decimal("0.01"), fixed="5.00")

    with pytest.raises(InvalidInputError) as raised:
        rule_set(1, date(2024, 1, 1), both).validate("USD")

    assert "'both'" in raised.value.message
    assert "exactly one of rate or fixed" in raised.value.message
    assert raised.value.field == "rule_sets[1].rules[0].rate"


def test_neither_rate_nor_fixed_is_named() -> None:
    neither = Rule(id="neither", activity_type="deal_won")

    with pytest.raises(InvalidInputError, match="'neither' must set exactly one"):
        rule_set(1, date(2024, 1, 1), neither).validate("USD")


@pytest.mark.parametrize("rate", ["1.01", "4.5", "-0.01", "NaN", "Infinity"])
def test_rate_outside_zero_to_one_is_named(rate: str) -> None:
    bad = Rule(id="too-much", activity_type="deal_won", rate=Decimal(rate))

    with pytest.raises(InvalidInputError) as raised:
        rule_set(1, date(2024, 1, 1), bad).validate("USD")

    assert "'too-much'" in raised.value.message
    assert "0.045" in raised.value.message
    assert raised.value.field == "rule_sets[1].rules[0].rate"


@pytest.mark.parametrize("rate", ["0", "1", "0.045"])
def test_rate_bounds_are_inclusive(rate: str) -> None:
    ok = Rule(id="ok", activity_type="deal_won", rate=Decimal(rate))

    rule_set(1, date(2024, 1, 1), ok).validate("USD")


def test_same_match_twice_names_both_rules() -> None:
    twin = Rule(
        id="deal-gtx-2", activity_type="deal_won", match={"series": "GTX"}, rate=Decimal("0.05")
    )

    with pytest.raises(InvalidInputError) as raised:
        rule_set(1, date(2024, 1, 1), SERIES, twin).validate("USD")

    assert "'deal-gtx'" in raised.value.message
    assert "'deal-gtx-2'" in raised.value.message
    assert raised.value.field == "rule_sets[1].rules[1].match"


def test_negative_fixed_is_named() -> None:
    bad = Rule(id="penalty", activity_type="late", fixed="-5.00")

    with pytest.raises(InvalidInputError) as raised:
        rule_set(1, date(2024, 1, 1), bad).validate("USD")

    assert "'penalty'" in raised.value.message
    assert raised.value.field == "rule_sets[1].rules[0].fixed"


def test_fixed_with_too_many_digits_names_field() -> None:
    bad = Rule(id="yen", activity_type="signup", fixed="5.5")

    with pytest.raises(InvalidInputError) as raised:
        rule_set(1, date(2024, 1, 1), bad).validate("JPY")

    assert raised.value.field == "rule_sets[1].rules[0].fixed"
    assert "JPY" in raised.value.message


@pytest.mark.parametrize("version", [0, -1])
def test_version_must_be_positive(version: int) -> None:
    with pytest.raises(InvalidInputError, match="not positive"):
        rule_set(version, date(2024, 1, 1), GENERIC).validate("USD")


def test_empty_rule_set_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="has no rules"):
        rule_set(1, date(2024, 1, 1)).validate("USD")


def test_empty_id_and_activity_type_are_rejected() -> None:
    no_id = Rule(id="", activity_type="deal_won", rate=Decimal("0.01"))
    no_type = Rule(id="typeless", activity_type="", rate=Decimal("0.01"))

    with pytest.raises(InvalidInputError, match="empty id"):
        rule_set(1, date(2024, 1, 1), no_id).validate("USD")
    with pytest.raises(InvalidInputError, match="'typeless' has no activity_type"):
        rule_set(1, date(2024, 1, 1), no_type).validate("USD")


def test_rule_set_decodes_from_program_file_shape() -> None:
    raw = {
        "version": 1,
        "effective_from": "2024-01-01",
        "rules": [
            {
                "id": "deal-gtx",
                "activity_type": "deal_won",
                "match": {"series": "GTX"},
                "rate": "0.045",
            }
        ],
    }

    decoded = msgspec.convert(raw, RuleSet)

    assert decoded == rule_set(1, date(2024, 1, 1), SERIES)
    assert decoded.rules[0].rate == Decimal("0.045")


def test_unknown_rule_field_is_rejected() -> None:
    raw = {"id": "r", "activity_type": "deal_won", "rate": "0.1", "percent": "10"}

    with pytest.raises(msgspec.ValidationError, match="percent"):
        msgspec.convert(raw, Rule)


# Pricing ----------------------------------------------------------------------


PRICING = rule_set(4, date(2024, 1, 1), GENERIC, SERIES, CERTIFIED)


def test_rate_reward_records_inputs() -> None:
    base = Money.parse("302.00", "USD")

    reward = compute_reward(
        rule_set(
            4, date(2024, 1, 1), Rule(id="r20", activity_type="deal_won", rate=Decimal("0.20"))
        ),
        currency="USD",
        rounding=RoundingMode.HALF_UP,
        activity_type="deal_won",
        attributes={},
        base=base,
    )

    assert reward.amount == Money(6040, "USD")
    assert reward.rule_set_version == 4
    assert reward.rule_id == "r20"
    assert reward.base == base
    assert reward.rate == Decimal("0.20")
    assert reward.fixed is None
    assert reward.unrounded_minor == Decimal(6040)
    assert reward.rounding is RoundingMode.HALF_UP


def test_rate_reward_rounds_once_with_program_mode() -> None:
    # 4.5% of 12.50 is 56.25 cents: 56 half-even, 56 down, 57 half-up and up.
    base = Money.parse("12.50", "USD")
    expected = {
        RoundingMode.HALF_UP: 56,
        RoundingMode.HALF_EVEN: 56,
        RoundingMode.DOWN: 56,
        RoundingMode.UP: 57,
    }

    for mode, amount_minor in expected.items():
        reward = compute_reward(
            PRICING,
            currency="USD",
            rounding=mode,
            activity_type="deal_won",
            attributes={"series": "GTX"},
            base=base,
        )
        assert reward.unrounded_minor == Decimal("56.25")
        assert reward.amount == Money(amount_minor, "USD"), mode
        assert reward.rounding is mode


def test_fixed_reward_ignores_base() -> None:
    reward = compute_reward(
        PRICING,
        currency="USD",
        rounding=RoundingMode.HALF_UP,
        activity_type="certification",
        attributes={},
        base=None,
    )

    assert reward.amount == Money(25000, "USD")
    assert reward.fixed == Money(25000, "USD")
    assert reward.rate is None
    assert reward.base is None
    assert reward.unrounded_minor == Decimal(25000)


def test_rate_rule_without_base_is_rejected() -> None:
    with pytest.raises(InvalidInputError) as raised:
        compute_reward(
            PRICING,
            currency="USD",
            rounding=RoundingMode.HALF_UP,
            activity_type="deal_won",
            attributes={"series": "GTX"},
            base=None,
        )

    assert "'deal-gtx'" in raised.value.message
    assert raised.value.field == "base_amount"


def test_base_in_other_currency_is_rejected() -> None:
    with pytest.raises(InvalidInputError) as raised:
        compute_reward(
            PRICING,
            currency="USD",
            rounding=RoundingMode.HALF_UP,
            activity_type="deal_won",
            attributes={},
            base=Money.parse("100.00", "EUR"),
        )

    assert "EUR" in raised.value.message
    assert "USD" in raised.value.message
    assert raised.value.field == "base_amount.currency"
    assert raised.value.value == "EUR"


def test_negative_base_is_rejected() -> None:
    with pytest.raises(InvalidInputError) as raised:
        compute_reward(
            PRICING,
            currency="USD",
            rounding=RoundingMode.HALF_UP,
            activity_type="deal_won",
            attributes={},
            base=Money.parse("-10.00", "USD"),
        )

    assert raised.value.field == "base_amount.amount"
    assert raised.value.value == "-10.00"


def test_unpriced_activity_raises_rule_not_found() -> None:
    with pytest.raises(RuleNotFoundError, match="'webinar'"):
        compute_reward(
            PRICING,
            currency="USD",
            rounding=RoundingMode.HALF_UP,
            activity_type="webinar",
            attributes={},
            base=None,
        )


def test_missing_match_attribute_is_named() -> None:
    rules = rule_set(1, date(2024, 1, 1), SERIES)

    with pytest.raises(RuleNotFoundError) as raised:
        rules.find_rule("deal_won", {})

    assert raised.value.field == "attributes.series"
    assert raised.value.value is None
    assert "no series" in raised.value.message


@pytest.mark.parametrize(
    ("activity_type", "attributes", "base"),
    [
        ("deal_won", {"series": "GTX"}, Money.parse("100.00", "USD")),
        ("deal_won", {}, Money.parse("0.00", "USD")),
        ("certification", {}, None),
        ("deal_won", {"series": "GTX"}, None),
        ("deal_won", {}, Money.parse("100.00", "EUR")),
        ("deal_won", {}, Money(-1, "USD")),
        ("referral", {}, None),
    ],
)
def test_find_pricing_rule_fails_when_pricing_fails(
    activity_type: str, attributes: dict[str, str], base: Money | None
) -> None:
    rules = rule_set(1, date(2024, 1, 1), GENERIC, SERIES, CERTIFIED)
    arguments = {"activity_type": activity_type, "attributes": attributes, "base": base}

    try:
        reward = compute_reward(rules, currency="USD", rounding=RoundingMode.HALF_UP, **arguments)
    except InvalidInputError as priced_error:
        with pytest.raises(type(priced_error)) as caught:
            find_pricing_rule(rules, currency="USD", **arguments)
        assert caught.value.message == priced_error.message
        assert caught.value.field == priced_error.field
    else:
        assert find_pricing_rule(rules, currency="USD", **arguments).id == reward.rule_id
