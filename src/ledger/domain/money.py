"""Money: integer minor units of an ISO 4217 currency.

Amounts are never floats. A :class:`Money` contains an ``int`` count of minor units
(cents for USD, yen for JPY, fils for BHD) and the currency code; the exponent
comes from :data:`CURRENCY_EXPONENTS`. Rates are :class:`~decimal.Decimal`, and
the only place a fractional result becomes minor units is :func:`round_minor`,
which takes the rounding mode explicitly so callers record it.

>>> usd = Money.parse("302.00", "USD")
>>> usd.amount_minor
30200
>>> apply_rate(usd, Decimal("0.20"), RoundingMode.HALF_UP).rounded.format()
'60.40'
"""

from __future__ import annotations

import decimal
import enum
from dataclasses import dataclass
from decimal import Decimal

from ledger.errors import InvalidInputError

__all__ = [
    "CURRENCY_EXPONENTS",
    "MAX_AMOUNT_MINOR",
    "Money",
    "RateResult",
    "RoundingMode",
    "apply_rate",
    "currency_exponent",
    "format_minor",
    "round_minor",
]

# ISO 4217 minor-unit exponents for the active currencies a partner program is
# likely to pay in. Unknown codes are rejected rather than guessed at 2.
CURRENCY_EXPONENTS: dict[str, int] = {
    "AED": 2,
    "ARS": 2,
    "AUD": 2,
    "BHD": 3,
    "BRL": 2,
    "CAD": 2,
    "CHF": 2,
    "CLP": 0,
    "CNY": 2,
    "COP": 2,
    "CZK": 2,
    "DKK": 2,
    "EGP": 2,
    "EUR": 2,
    "GBP": 2,
    "HKD": 2,
    "HUF": 2,
    "IDR": 2,
    "ILS": 2,
    "INR": 2,
    "ISK": 0,
    "JOD": 3,
    "JPY": 0,
    "KRW": 0,
    "KWD": 3,
    "MAD": 2,
    "MXN": 2,
    "MYR": 2,
    "NGN": 2,
    "NOK": 2,
    "NZD": 2,
    "OMR": 3,
    "PEN": 2,
    "PHP": 2,
    "PKR": 2,
    "PLN": 2,
    "QAR": 2,
    "RON": 2,
    "SAR": 2,
    "SEK": 2,
    "SGD": 2,
    "THB": 2,
    "TND": 3,
    "TRY": 2,
    "TWD": 2,
    "UAH": 2,
    "USD": 2,
    "VND": 0,
    "ZAR": 2,
}

# Largest magnitude one parsed amount may have, in minor units. Read models
# store sums in bigint (up to about 9.2e18), so a cap of 1e15 per amount leaves
# room for thousands of maximal amounts in one balance.
MAX_AMOUNT_MINOR = 10**15


class RoundingMode(enum.StrEnum):
    """Rule that turns a fractional count of minor units into an integer."""

    HALF_UP = "half-up"
    HALF_EVEN = "half-even"
    DOWN = "down"
    UP = "up"

    @property
    def decimal_rounding(self) -> str:
        """Return the matching :mod:`decimal` rounding constant."""
        return _DECIMAL_ROUNDING[self]


_DECIMAL_ROUNDING = {
    RoundingMode.HALF_UP: decimal.ROUND_HALF_UP,
    RoundingMode.HALF_EVEN: decimal.ROUND_HALF_EVEN,
    RoundingMode.DOWN: decimal.ROUND_DOWN,
    RoundingMode.UP: decimal.ROUND_UP,
}


def currency_exponent(currency: str, *, field: str = "currency") -> int:
    """Return the number of minor-unit digits of an ISO 4217 currency code.

    Raises:
        InvalidInputError: The code is not a supported ISO 4217 currency.
    """
    try:
        return CURRENCY_EXPONENTS[currency]
    except (KeyError, TypeError):
        raise InvalidInputError(
            f"currency {currency!r} is not a supported ISO 4217 code; "
            "use an upper-case code such as USD, EUR, JPY or BHD",
            field=field,
            value=currency,
        ) from None


def format_minor(amount_minor: int, currency: str) -> str:
    """Return minor units as a decimal string with exactly the currency's digits.

    The same text as ``Money(amount_minor, currency).format()``, for callers
    that format many amounts and need no :class:`Money`: 6040 USD is "60.40",
    -5 JPY is "-5" and 1250 BHD is "1.250".

    Raises:
        TypeError: ``amount_minor`` is not an ``int``.
        InvalidInputError: The currency is not a supported ISO 4217 code.
    """
    if type(amount_minor) is not int:
        raise TypeError(f"amount_minor must be int, got {type(amount_minor).__name__}")
    exponent = currency_exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    digits = str(abs(amount_minor))
    if exponent == 0:
        return sign + digits
    digits = digits.rjust(exponent + 1, "0")
    return f"{sign}{digits[:-exponent]}.{digits[-exponent:]}"


def round_minor(value: Decimal, mode: RoundingMode) -> int:
    """Round a fractional count of minor units to an integer with ``mode``."""
    return int(value.quantize(Decimal(1), rounding=mode.decimal_rounding))


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount: ``amount_minor`` minor units of ``currency``."""

    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        if type(self.amount_minor) is not int:
            raise TypeError(f"amount_minor must be int, got {type(self.amount_minor).__name__}")
        currency_exponent(self.currency)

    @property
    def exponent(self) -> int:
        """Number of digits after the decimal point for this currency."""
        return CURRENCY_EXPONENTS[self.currency]

    @classmethod
    def zero(cls, currency: str) -> Money:
        """Return zero in ``currency``."""
        return cls(0, currency)

    @classmethod
    def parse(cls, text: str, currency: str, *, field: str = "amount") -> Money:
        """Parse a decimal string such as ``"47.43"`` into exact minor units.

        The string may carry fewer digits than the currency's exponent
        (``"5"`` is 5.00 USD) but never more: ``"1.005"`` USD is rejected
        rather than silently rounded. Exponent notation (``"1e3"``), digit
        separators and non-ASCII digits are rejected too.

        Raises:
            InvalidInputError: The text is not a plain decimal number, has more
                fraction digits than the currency allows, or exceeds
                :data:`MAX_AMOUNT_MINOR`.
        """
        exponent = currency_exponent(currency, field=f"{field}.currency" if field else "currency")
        # Decimal() also accepts "1e3", "1_0", "NaN" and non-ASCII digits, and a
        # large exponent raises decimal.Overflow, so allow only these characters.
        allowed = set("+-.0123456789")
        if not isinstance(text, str) or not text.strip() or set(text.strip()) - allowed:
            raise InvalidInputError(
                f'amount {text!r} is not a decimal string; send it as text such as "47.43"',
                field=field,
                value=text,
            )
        try:
            value = Decimal(text.strip())
        except decimal.InvalidOperation:
            raise InvalidInputError(
                f"amount {text!r} is not a decimal number; send digits with an optional "
                f'sign and at most {exponent} decimal places, such as "47.43"',
                field=field,
                value=text,
            ) from None
        # The default context keeps 28 digits and would round a longer amount.
        scaled = value.scaleb(exponent, decimal.Context(prec=decimal.MAX_PREC))
        if scaled != scaled.to_integral_value():
            raise InvalidInputError(
                f"amount {text!r} has more than {exponent} decimal places, the minor unit "
                f"of {currency}; round it before sending",
                field=field,
                value=text,
            )
        minor = int(scaled)
        if abs(minor) > MAX_AMOUNT_MINOR:
            raise InvalidInputError(
                f"amount {text!r} exceeds the largest accepted amount, {MAX_AMOUNT_MINOR:,} "
                f"minor units of {currency}; split it or check the value",
                field=field,
                value=text,
            )
        return cls(minor, currency)

    def format(self) -> str:
        """Return the amount as a decimal string with exactly the currency's digits."""
        return format_minor(self.amount_minor, self.currency)

    def to_decimal(self) -> Decimal:
        """Return the amount in major units as an exact Decimal."""
        return Decimal(self.amount_minor).scaleb(-self.exponent)

    def _check_same_currency(self, other: Money) -> None:
        if other.currency != self.currency:
            raise InvalidInputError(
                f"cannot combine {self.currency} and {other.currency} amounts; "
                "the ledger does not convert currencies",
                field="currency",
                value=other.currency,
            )

    def __add__(self, other: Money) -> Money:
        self._check_same_currency(other)
        return Money(self.amount_minor + other.amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._check_same_currency(other)
        return Money(self.amount_minor - other.amount_minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount_minor, self.currency)

    def __str__(self) -> str:
        return f"{self.format()} {self.currency}"


@dataclass(frozen=True, slots=True)
class RateResult:
    """A rate applied to a base amount, before and after rounding.

    Attributes:
        unrounded_minor: ``base minor units × rate``, exact, in minor units.
        rounded: The result rounded once with ``rounding``.
        rounding: The rounding mode that produced ``rounded``.
    """

    unrounded_minor: Decimal
    rounded: Money
    rounding: RoundingMode


def apply_rate(base: Money, rate: Decimal, rounding: RoundingMode) -> RateResult:
    """Multiply ``base`` by ``rate`` exactly, then round once to minor units."""
    with decimal.localcontext() as context:
        # Enough precision that a product of two exact decimals is never
        # rounded by the context before the explicit quantize.
        context.prec = 60
        unrounded = Decimal(base.amount_minor) * rate
        rounded = round_minor(unrounded, rounding)
    return RateResult(unrounded, Money(rounded, base.currency), rounding)
