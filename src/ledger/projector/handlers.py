"""The projections the projector maintains, by name."""

from __future__ import annotations

from collections.abc import Sequence

from ledger.errors import InvalidInputError
from ledger.infrastructure.schema import PROJECTION_NAMES
from ledger.projector.base import Projection
from ledger.projector.history import HistoryProjection
from ledger.projector.journal import JournalProjection
from ledger.projector.statements import StatementsProjection

__all__ = ["PROJECTIONS", "get_projections"]

PROJECTIONS: dict[str, Projection] = {
    projection.name: projection
    for projection in (StatementsProjection(), JournalProjection(), HistoryProjection())
}
assert set(PROJECTIONS) == set(PROJECTION_NAMES), "every projection schema needs a handler"


def get_projections(names: Sequence[str]) -> list[Projection]:
    """Return the projections named ``names``, in order, without duplicates.

    Raises:
        InvalidInputError: A name is not a known projection.
    """
    if isinstance(names, str):
        # A bare string is a sequence of letters, which is never what a caller means.
        names = [names]
    projections: list[Projection] = []
    for name in names:
        projection = PROJECTIONS.get(name)
        if projection is None:
            raise InvalidInputError(
                f"unknown projection {name!r}; use one of {', '.join(PROJECTION_NAMES)}",
                field="names",
                value=name,
            )
        if projection not in projections:
            projections.append(projection)
    return projections
