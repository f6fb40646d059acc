"""Tests for the NUL character check on command text."""

from __future__ import annotations

from datetime import date

import msgspec
import pytest

from ledger.application.commands import (
    ChangeTier,
    CommandContext,
    EnrollPartner,
    ProgramSpec,
    RecordActivity,
)
from ledger.domain.text import reject_nul
from ledger.errors import InvalidInputError


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("a\x00b", "name"),
        ({"series": "G\x00TX"}, "name.series"),
        ({"se\x00ries": "GTX"}, "name key"),
        (["ok", ["deep\x00"]], "name[1][0]"),
    ],
)
def test_reject_nul_names_the_path(value: object, field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        reject_nul("name", value)

    assert caught.value.field == field
    assert "\\u0000" in (caught.value.value or "")


@pytest.mark.parametrize("value", ["plain", "", {"k": "v"}, ["a", ("b",)], 5, None, date.today()])
def test_reject_nul_passes_clean_values(value: object) -> None:
    reject_nul("name", value)


def test_commands_reject_nul_in_text() -> None:
    day = date(2016, 1, 1)
    with pytest.raises(InvalidInputError) as activity:
        RecordActivity("p", "deal_won", "ref", day, attributes={"account": "A\x00"})
    with pytest.raises(InvalidInputError) as enrollment:
        EnrollPartner("p\x00", "Name", day)
    with pytest.raises(InvalidInputError) as tier:
        ChangeTier("gold", day, "re\x00view")
    with pytest.raises(InvalidInputError) as context:
        CommandContext("cli\x00", "id")

    assert activity.value.field == "attributes.account"
    assert enrollment.value.field == "partner_id"
    assert tier.value.field == "reason"
    assert context.value.field == "actor"


def test_program_spec_rejects_nul_in_rules() -> None:
    spec = {
        "id": "p",
        "name": "P",
        "currency": "USD",
        "rule_sets": [
            {
                "version": 1,
                "effective_from": "2016-01-01",
                "rules": [{"id": "r\x00", "activity_type": "deal_won", "fixed": "5.00"}],
            }
        ],
    }

    with pytest.raises(InvalidInputError) as caught:
        msgspec.convert(spec, ProgramSpec)

    assert caught.value.field == "program.rule_sets[0].rules[0].id"
