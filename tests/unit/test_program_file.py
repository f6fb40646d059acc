"""Tests for program files: TOML decoding, error paths and the published example."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import InvalidInputError
from ledger.importing.program_file import decode_program, load_program_file

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "programs" / "crm-channel.toml"

VALID = """
id = "demo"
name = "Demo program"
currency = "USD"

[[rule_sets]]
version = 1
effective_from = 2024-01-01

[[rule_sets.rules]]
id = "won"
activity_type = "deal_won"
rate = "0.045"

[[rule_sets.rules]]
id = "engaged"
activity_type = "pipeline_engaged"
fixed = "5.00"
"""


def decode_error(text: str) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as caught:
        decode_program(text, source="demo.toml")
    return caught.value


def test_example_file_decodes_to_crm_program() -> None:
    spec = load_program_file(EXAMPLE)

    assert spec.id == "crm-channel"
    assert spec.currency == "USD"
    assert spec.time_zone == "UTC"
    assert spec.rounding == "half-up"
    assert [rule_set.version for rule_set in spec.rule_sets] == [1]
    assert spec.rule_sets[0].effective_from == date(2016, 10, 1)


def test_example_file_prices_each_series() -> None:
    rules = {rule.id: rule for rule in load_program_file(EXAMPLE).rule_sets[0].rules}

    assert set(rules) == {"won-gtx", "won-mg", "won-gtk", "engaged"}
    assert rules["won-gtx"].match == {"series": "GTX"}
    assert rules["won-gtx"].rate == Decimal("0.045")
    assert rules["won-mg"].match == {"series": "MG"}
    assert rules["won-mg"].rate == Decimal("0.06")
    assert rules["won-gtk"].match == {"series": "GTK"}
    assert rules["won-gtk"].rate == Decimal("0.0325")
    assert rules["engaged"].activity_type == "pipeline_engaged"
    assert rules["engaged"].fixed == "5.00"
    assert all(rule.description for rule in rules.values())


def test_defaults_apply_when_omitted() -> None:
    spec = decode_program(VALID)

    assert spec.time_zone == "UTC"
    assert spec.rounding == "half-up"
    assert spec.rule_sets[0].rules[0].match == {}


def test_float_rate_with_exact_digits_is_accepted() -> None:
    spec = decode_program(VALID.replace('rate = "0.045"', "rate = 0.045"))

    assert spec.rule_sets[0].rules[0].rate == Decimal("0.045")


def test_float_rate_losing_digits_is_rejected() -> None:
    error = decode_error(VALID.replace('rate = "0.045"', "rate = 0.0333333333333333333"))

    assert error.field == "rule_sets[0].rules[0].rate"
    assert "0.0333333333333333333" in error.message
    assert 'rate = "0.0333333333333333333"' in error.message


@given(
    st.decimals(
        min_value=Decimal(0), max_value=Decimal(1), places=6, allow_nan=False, allow_infinity=False
    )
)
def test_short_float_rates_decode_exactly(rate: Decimal) -> None:
    # places=6 quantizes every example, so the fixed-point form always has a point.
    text = VALID.replace('rate = "0.045"', f"rate = {rate:f}")

    decoded = decode_program(text).rule_sets[0].rules[0].rate

    assert decoded == rate


def test_string_rate_that_is_not_decimal_names_path() -> None:
    error = decode_error(VALID.replace('rate = "0.045"', 'rate = "4.5%"'))

    assert error.field == "rule_sets[0].rules[0].rate"
    assert error.message.startswith("demo.toml: rule_sets[0].rules[0].rate is invalid")
    assert 'rate = "0.045"' in error.message


def test_wrong_type_names_path_and_fix() -> None:
    error = decode_error(VALID.replace("version = 1", 'version = "1"'))

    assert error.field == "rule_sets[0].version"
    assert "expected `int`, got `str`" in error.message
    assert "version = 1" in error.message


def test_quoted_date_names_path_and_fix() -> None:
    error = decode_error(VALID.replace("effective_from = 2024-01-01", 'effective_from = "2024"'))

    assert error.field == "rule_sets[0].effective_from"
    assert "without quotes" in error.message


def test_fixed_as_float_names_path_and_fix() -> None:
    error = decode_error(VALID.replace('fixed = "5.00"', "fixed = 5.00"))

    assert error.field == "rule_sets[0].rules[1].fixed"
    assert 'fixed = "5.00"' in error.message


def test_missing_field_names_it() -> None:
    error = decode_error(VALID.replace('currency = "USD"\n', ""))

    assert error.field == "currency"
    assert error.message.startswith("demo.toml: currency is missing")


def test_missing_nested_field_names_its_path() -> None:
    error = decode_error(VALID.replace('activity_type = "deal_won"\n', ""))

    assert error.field == "rule_sets[0].rules[0].activity_type"
    assert "is missing" in error.message


def test_unknown_field_lists_known_fields() -> None:
    error = decode_error(VALID.replace('rate = "0.045"', 'rat = "0.045"'))

    assert error.field == "rule_sets[0].rules[0].rat"
    assert "not a known field" in error.message
    assert "activity_type, match, rate, fixed" in error.message


def test_invalid_toml_reports_line() -> None:
    error = decode_error(VALID.replace('rate = "0.045"', "rate = "))

    assert "not valid TOML" in error.message
    assert "line 13" in error.message


def test_rate_and_fixed_together_names_rule() -> None:
    error = decode_error(VALID.replace('fixed = "5.00"', 'fixed = "5.00"\nrate = "0.1"'))

    assert error.field == "rule_sets[0].rules[1].rate"
    assert "'engaged' must set exactly one of rate or fixed" in error.message


def test_rate_above_one_names_fix() -> None:
    error = decode_error(VALID.replace('rate = "0.045"', 'rate = "4.5"'))

    assert error.field == "rule_sets[0].rules[0].rate"
    assert "4.5% is written 0.045" in error.message


def test_unknown_currency_is_rejected() -> None:
    error = decode_error(VALID.replace('"USD"', '"usd"'))

    assert error.field == "currency"
    assert "'usd'" in error.message


def test_unknown_time_zone_is_rejected() -> None:
    error = decode_error(VALID.replace('currency = "USD"', 'currency = "USD"\ntime_zone = "Mars"'))

    assert error.field == "time_zone"
    assert "'Mars'" in error.message


def test_unknown_rounding_is_rejected() -> None:
    error = decode_error(
        VALID.replace('currency = "USD"', 'currency = "USD"\nrounding = "bankers"')
    )

    assert error.field == "rounding"
    assert "half-up, half-even, down, up" in error.message


def test_invalid_program_id_is_rejected() -> None:
    error = decode_error(VALID.replace('id = "demo"', 'id = "demo program"'))

    assert error.field == "id"


def test_empty_rule_sets_is_rejected() -> None:
    text = 'id = "demo"\nname = "Demo"\ncurrency = "USD"\nrule_sets = []\n'

    error = decode_error(text)

    assert error.field == "rule_sets"


SECOND_SET = """
[[rule_sets]]
version = {version}
effective_from = {effective_from}

[[rule_sets.rules]]
id = "won"
activity_type = "deal_won"
rate = "0.05"
"""


def test_duplicate_version_is_rejected() -> None:
    error = decode_error(VALID + SECOND_SET.format(version=1, effective_from="2024-06-01"))

    assert error.field == "rule_sets[1].version"
    assert "rule_sets[0]" in error.message


def test_version_gap_is_rejected() -> None:
    error = decode_error(VALID + SECOND_SET.format(version=3, effective_from="2024-06-01"))

    assert error.field == "rule_sets.version"
    assert "does not follow version 1" in error.message


def test_later_version_must_start_later() -> None:
    error = decode_error(VALID + SECOND_SET.format(version=2, effective_from="2023-12-31"))

    assert error.field == "rule_sets.effective_from"
    assert "choose a later effective_from" in error.message


def test_second_version_in_order_is_accepted() -> None:
    spec = decode_program(VALID + SECOND_SET.format(version=2, effective_from="2024-06-01"))

    assert [rule_set.version for rule_set in spec.rule_sets] == [1, 2]


def test_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"

    with pytest.raises(InvalidInputError) as caught:
        load_program_file(missing)

    assert str(missing) in caught.value.message
    assert "does not exist" in caught.value.message
