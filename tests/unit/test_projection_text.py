"""Text forms of money and decimals in read-model rows."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ledger.domain.money import Money, format_minor
from ledger.errors import InvalidInputError
from ledger.projector.base import major_units_text, money_text


@pytest.mark.parametrize(
    ("amount_minor", "currency", "text"),
    [
        (6040, "USD", "60.40"),
        (-6040, "USD", "-60.40"),
        (5, "USD", "0.05"),
        (-5, "USD", "-0.05"),
        (0, "USD", "0.00"),
        (-5, "JPY", "-5"),
        (1250, "BHD", "1.250"),
        (7, "BHD", "0.007"),
    ],
)
def test_format_minor_matches_money(amount_minor: int, currency: str, text: str) -> None:
    assert format_minor(amount_minor, currency) == text
    assert Money(amount_minor, currency).format() == text
    assert money_text(amount_minor, currency) == text


def test_format_minor_rejects_bad_input() -> None:
    with pytest.raises(InvalidInputError, match="'usd' is not a supported ISO 4217 code"):
        format_minor(5, "usd")
    with pytest.raises(TypeError, match="amount_minor must be int, got Decimal"):
        format_minor(Decimal(5), "USD")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value_minor", "currency", "text"),
    [
        (Decimal("1359.495"), "USD", "13.59495"),
        (Decimal("1359.00"), "USD", "13.5900"),
        (Decimal("-0.5"), "USD", "-0.005"),
        (Decimal("1E+5"), "USD", "1000"),
        (Decimal("1359.495"), "JPY", "1359.495"),
        (Decimal("1359.495"), "BHD", "1.359495"),
        # 45 digits: more than the default context precision of 28 keeps.
        (
            Decimal("123456789012345678901234567890123.456789012345"),
            "USD",
            "1234567890123456789012345678901.23456789012345",
        ),
        (Decimal("NaN"), "USD", "NaN"),
    ],
)
def test_major_units_text_is_exact(value_minor: Decimal, currency: str, text: str) -> None:
    assert major_units_text(value_minor, currency) == text
