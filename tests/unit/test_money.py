"""Tests for ledger.domain.money: exact parsing, formatting and rounding of minor units."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.money import (
    CURRENCY_EXPONENTS,
    MAX_AMOUNT_MINOR,
    Money,
    RoundingMode,
    apply_rate,
    currency_exponent,
    round_minor,
)
from ledger.errors import InvalidInputError

SUPPORTED_CURRENCIES = sorted(CURRENCY_EXPONENTS)


def round_fraction(value: Fraction, mode: RoundingMode) -> int:
    """Round an exact fraction to an integer with integer arithmetic only.

    This is the test oracle for ``apply_rate``: it shares no code with the
    ``decimal`` module that the implementation uses.
    """
    floor = value.numerator // value.denominator
    remainder = value - floor
    if remainder == 0:
        return floor
    away_from_zero = floor + 1 if value > 0 else floor
    toward_zero = floor if value > 0 else floor + 1
    if mode is RoundingMode.UP:
        return away_from_zero
    if mode is RoundingMode.DOWN:
        return toward_zero
    if remainder != Fraction(1, 2):
        return floor + 1 if remainder > Fraction(1, 2) else floor
    if mode is RoundingMode.HALF_UP:
        return away_from_zero
    return floor if floor % 2 == 0 else floor + 1


# Parsing and formatting -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "currency", "minor", "formatted"),
    [
        ("47.43", "USD", 4743, "47.43"),
        ("5", "USD", 500, "5.00"),
        ("0.1", "USD", 10, "0.10"),
        ("-12.05", "USD", -1205, "-12.05"),
        ("-0.05", "USD", -5, "-0.05"),
        ("1.000", "USD", 100, "1.00"),
        (" 7.10 ", "USD", 710, "7.10"),
        ("80", "JPY", 80, "80"),
        ("-80", "JPY", -80, "-80"),
        ("1.234", "BHD", 1234, "1.234"),
        ("0.005", "BHD", 5, "0.005"),
        ("12", "BHD", 12000, "12.000"),
    ],
)
def test_parse_and_format(text: str, currency: str, minor: int, formatted: str) -> None:
    money = Money.parse(text, currency)

    assert money == Money(minor, currency)
    assert money.format() == formatted
    assert Money.parse(money.format(), currency) == money


def test_jpy_has_no_minor_digits() -> None:
    money = Money.parse("80", "JPY")

    assert money.amount_minor == 80
    assert money.exponent == 0
    assert str(money) == "80 JPY"


def test_bhd_has_three_minor_digits() -> None:
    money = Money(1, "BHD")

    assert money.exponent == 3
    assert money.format() == "0.001"
    assert money.to_decimal() == Decimal("0.001")


@pytest.mark.parametrize(
    ("text", "currency", "expected_in_message"),
    [
        ("1.005", "USD", "more than 2 decimal places"),
        ("0.5", "JPY", "more than 0 decimal places"),
        ("1.0005", "BHD", "more than 3 decimal places"),
        ("NaN", "USD", "'NaN'"),
        ("Infinity", "USD", "'Infinity'"),
        ("-inf", "USD", "'-inf'"),
        ("", "USD", "''"),
        ("   ", "USD", "'   '"),
        ("1_000", "USD", "'1_000'"),
        ("12abc", "USD", "'12abc'"),
        ("1.2.3", "USD", "'1.2.3'"),
        ("+-5", "USD", "'+-5'"),
    ],
)
def test_parse_rejects_invalid_text(text: str, currency: str, expected_in_message: str) -> None:
    with pytest.raises(InvalidInputError) as raised:
        Money.parse(text, currency, field="base_amount.amount")

    assert expected_in_message in raised.value.message
    assert raised.value.field == "base_amount.amount"
    assert raised.value.value == text


@pytest.mark.parametrize("text", ["1e3", "1E-2", "5e0", "1e999999999"])
def test_parse_rejects_exponent_notation(text: str) -> None:
    # A money amount is written out in digits. Decimal() alone would accept
    # these, and "1e999999999" used to escape as decimal.Overflow.
    with pytest.raises(InvalidInputError) as raised:
        Money.parse(text, "USD")

    assert repr(text) in raised.value.message


def test_parse_rejects_non_ascii_digits() -> None:
    with pytest.raises(InvalidInputError):
        Money.parse("\u0661\u0662", "USD")


@pytest.mark.parametrize("value", [1.5, 0.1, 2, Decimal("1.50"), None])
def test_parse_rejects_non_string(value: object) -> None:
    with pytest.raises(InvalidInputError) as raised:
        Money.parse(value, "USD")  # type: ignore[arg-type]

    assert "decimal string" in raised.value.message


@pytest.mark.parametrize("value", [1.5, 100.0, True, Decimal(5), "5"])
def test_money_rejects_non_int_minor_units(value: object) -> None:
    with pytest.raises(TypeError, match="amount_minor must be int"):
        Money(value, "USD")  # type: ignore[arg-type]


@pytest.mark.parametrize("currency", ["XXY", "usd", "US", "", "EURO"])
def test_unknown_currency_names_the_value(currency: str) -> None:
    with pytest.raises(InvalidInputError) as raised:
        Money.parse("1.00", currency)

    assert repr(currency) in raised.value.message
    assert "ISO 4217" in raised.value.message
    assert raised.value.field == "amount.currency"
    assert raised.value.value == currency


def test_money_constructor_rejects_unknown_currency() -> None:
    with pytest.raises(InvalidInputError, match="'ABC'"):
        Money(100, "ABC")


def test_currency_exponent_rejects_non_string() -> None:
    with pytest.raises(InvalidInputError) as raised:
        currency_exponent(None)  # type: ignore[arg-type]

    assert raised.value.field == "currency"


def test_parse_rejects_amount_beyond_maximum() -> None:
    with pytest.raises(InvalidInputError) as raised:
        Money.parse("1" + "0" * 18, "USD")

    assert raised.value.field == "amount"
    assert "largest accepted amount" in raised.value.message


def test_parse_accepts_maximum_amount() -> None:
    assert Money.parse("10000000000000.00", "USD").amount_minor == MAX_AMOUNT_MINOR


# Arithmetic -----------------------------------------------------------------


def test_add_and_subtract_same_currency() -> None:
    total = Money(1050, "USD") + Money(-75, "USD")

    assert total == Money(975, "USD")
    assert total - Money(975, "USD") == Money.zero("USD")
    assert -total == Money(-975, "USD")


def test_combining_currencies_is_rejected() -> None:
    with pytest.raises(InvalidInputError) as raised:
        _ = Money(100, "USD") + Money(100, "EUR")

    assert "USD" in raised.value.message
    assert "EUR" in raised.value.message
    assert raised.value.value == "EUR"


# Rates and rounding ---------------------------------------------------------


def test_rate_on_302_is_exactly_60_40() -> None:
    result = apply_rate(Money.parse("302.00", "USD"), Decimal("0.20"), RoundingMode.HALF_UP)

    assert result.rounded == Money(6040, "USD")
    assert result.rounded.format() == "60.40"
    assert result.unrounded_minor == Decimal(6040)
    assert result.rounding is RoundingMode.HALF_UP


@pytest.mark.parametrize(
    ("unrounded", "half_up", "half_even"),
    [
        (Decimal("12.5"), 13, 12),
        (Decimal("13.5"), 14, 14),
        (Decimal("0.5"), 1, 0),
        (Decimal("-12.5"), -13, -12),
        (Decimal("2.5000"), 3, 2),
    ],
)
def test_half_up_and_half_even_differ_on_ties(
    unrounded: Decimal, half_up: int, half_even: int
) -> None:
    assert round_minor(unrounded, RoundingMode.HALF_UP) == half_up
    assert round_minor(unrounded, RoundingMode.HALF_EVEN) == half_even


def test_apply_rate_tie_depends_on_mode() -> None:
    base = Money(25, "USD")
    rate = Decimal("0.5")

    assert apply_rate(base, rate, RoundingMode.HALF_UP).rounded == Money(13, "USD")
    assert apply_rate(base, rate, RoundingMode.HALF_EVEN).rounded == Money(12, "USD")
    assert apply_rate(base, rate, RoundingMode.DOWN).rounded == Money(12, "USD")
    assert apply_rate(base, rate, RoundingMode.UP).rounded == Money(13, "USD")


@pytest.mark.parametrize(
    ("unrounded", "down", "up"),
    [(Decimal("12.01"), 12, 13), (Decimal("-12.01"), -12, -13), (Decimal(7), 7, 7)],
)
def test_down_and_up_rounding(unrounded: Decimal, down: int, up: int) -> None:
    assert round_minor(unrounded, RoundingMode.DOWN) == down
    assert round_minor(unrounded, RoundingMode.UP) == up


def test_rounding_mode_values_are_stable() -> None:
    # Events store the mode by value, so renaming a value orphans stored events.
    assert [mode.value for mode in RoundingMode] == ["half-up", "half-even", "down", "up"]


def test_apply_rate_exceeds_context_precision() -> None:
    # 28 significant digits is the default decimal context; the product here has 37.
    base = Money(999_999_999_999_999_999, "USD")
    rate = Decimal("0.123456789012345678")

    result = apply_rate(base, rate, RoundingMode.HALF_UP)

    assert Fraction(result.unrounded_minor) == Fraction(base.amount_minor) * Fraction(rate)


# Properties -----------------------------------------------------------------

minor_units = st.integers(min_value=-MAX_AMOUNT_MINOR, max_value=MAX_AMOUNT_MINOR)
currencies = st.sampled_from(SUPPORTED_CURRENCIES)
rates = st.decimals(min_value=0, max_value=1, places=8, allow_nan=False, allow_infinity=False)
rounding_modes = st.sampled_from(list(RoundingMode))


@given(amount_minor=minor_units, currency=currencies)
def test_format_then_parse_round_trips(amount_minor: int, currency: str) -> None:
    money = Money(amount_minor, currency)

    assert Money.parse(money.format(), currency) == money


@given(
    amount_minor=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    rate=rates,
    mode=rounding_modes,
)
def test_apply_rate_matches_exact_math(
    amount_minor: int, rate: Decimal, mode: RoundingMode
) -> None:
    exact = Fraction(amount_minor) * Fraction(rate)

    result = apply_rate(Money(amount_minor, "USD"), rate, mode)

    assert Fraction(result.unrounded_minor) == exact
    assert result.rounded == Money(round_fraction(exact, mode), "USD")
