"""Tests for reading settings from LEDGER_* environment variables."""

from __future__ import annotations

import pytest

from ledger.errors import InvalidInputError
from ledger.settings import Settings


def test_read_pool_size_comes_from_the_environment() -> None:
    assert Settings.from_env({"LEDGER_READ_POOL_SIZE": "8"}).read_pool_size == 8
    assert Settings.from_env({}).read_pool_size == Settings().read_pool_size


@pytest.mark.parametrize("value", ["0", "-3", "1001", "many"])
def test_invalid_read_pool_size_names_the_variable(value: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        Settings.from_env({"LEDGER_READ_POOL_SIZE": value})

    assert caught.value.field == "LEDGER_READ_POOL_SIZE"
    assert "LEDGER_READ_POOL_SIZE" in str(caught.value)
