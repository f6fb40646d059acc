"""Checks on text that the ledger stores in events and read models.

PostgreSQL's ``text`` and ``json`` types cannot hold the NUL character
(U+0000). An event that carried one would be stored, because the event store
keeps states as bytes, but no projection could ever write it, and events are
never deleted. So every command rejects NUL in its text before anything is
recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ledger.errors import InvalidInputError

__all__ = ["reject_nul"]

_NUL = "\x00"


def reject_nul(field: str, value: Any) -> None:
    """Raise if ``value``, or any text nested in it, contains the NUL character.

    ``value`` may be text, a mapping (keys are checked too) or a list or tuple
    of these; other values pass. The error names the dotted path of the text.

    Raises:
        InvalidInputError: Some text contains U+0000.
    """
    if isinstance(value, str):
        if _NUL in value:
            raise InvalidInputError(
                f"{field} contains the NUL character (U+0000), which the ledger cannot "
                "store; remove it and send the request again",
                field=field,
                value=value.replace(_NUL, "\\u0000"),
            )
    elif isinstance(value, Mapping):
        for key, item in value.items():
            reject_nul(f"{field} key", key)
            reject_nul(f"{field}.{key}", item)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            reject_nul(f"{field}[{index}]", item)
