"""The projector's garbage collector setting while batches run."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ledger.projector.batch import fewer_collections


@pytest.fixture
def default_thresholds() -> Iterator[tuple[int, int, int]]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        yield gc.get_threshold()
    finally:
        gc.set_threshold(*saved)


def test_threshold_raised_inside_block(default_thresholds: tuple[int, int, int]) -> None:
    with fewer_collections():
        first, *older = gc.get_threshold()

    assert first > default_thresholds[0]
    assert older == list(default_thresholds[1:])


def test_nested_blocks_restore_on_last_exit(default_thresholds: tuple[int, int, int]) -> None:
    outer = fewer_collections()
    inner = fewer_collections()
    outer.__enter__()
    inner.__enter__()
    raised = gc.get_threshold()

    outer.__exit__(None, None, None)
    after_first_exit = gc.get_threshold()
    inner.__exit__(None, None, None)

    assert after_first_exit == raised
    assert gc.get_threshold() == default_thresholds


def test_threshold_restored_after_error(default_thresholds: tuple[int, int, int]) -> None:
    with pytest.raises(RuntimeError), fewer_collections():
        raise RuntimeError("batch failed")

    assert gc.get_threshold() == default_thresholds
