"""Per-request context: the request id, the actor and the command context.

The request id comes from the ``X-Request-ID`` header when the client sends a
valid one (1 to 100 printable ASCII characters), otherwise it is a new UUID4.
The middleware rejects an invalid header with a 400 problem document. The id
is stored in the ASGI scope on first use, so the middleware, the exception
handler and the route handlers of one request all see the same id. Every
event a write produces carries it as its correlation id.
"""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Request

from ledger.api.errors import BadRequestError
from ledger.application.commands import CommandContext

__all__ = [
    "ACTOR_HEADER",
    "DEFAULT_ACTOR",
    "MAX_HEADER_TEXT",
    "REQUEST_ID_HEADER",
    "command_context",
    "invalid_request_id",
    "request_id_of",
]

REQUEST_ID_HEADER = "X-Request-ID"
ACTOR_HEADER = "X-Actor"
DEFAULT_ACTOR = "api"
MAX_HEADER_TEXT = 100

_STATE_KEY = "ledger_request_id"


def _is_valid_text(value: str) -> bool:
    return 0 < len(value) <= MAX_HEADER_TEXT and value.isprintable() and value.isascii()


def _header(scope: Any, name: str) -> str | None:
    wanted = name.lower().encode("latin-1")
    for key, value in scope.get("headers", ()):
        if key.lower() == wanted:
            return bytes(value).decode("latin-1")
    return None


def invalid_request_id(scope: Any) -> BadRequestError | None:
    """Return the error for a malformed ``X-Request-ID`` header, or None if it is fine."""
    value = _header(scope, REQUEST_ID_HEADER)
    if value is None or _is_valid_text(value):
        return None
    return BadRequestError(
        f"header {REQUEST_ID_HEADER} must be 1 to {MAX_HEADER_TEXT} printable ASCII "
        "characters; send a shorter id such as a UUID, or leave the header out to get one",
        field=REQUEST_ID_HEADER,
        value=value[:MAX_HEADER_TEXT],
    )


def request_id_of(scope: Any) -> str:
    """Return the request id of the request in ``scope``, choosing it on first call."""
    state = scope.setdefault("state", {})
    request_id = state.get(_STATE_KEY)
    if request_id is None:
        sent = _header(scope, REQUEST_ID_HEADER)
        request_id = sent if sent is not None and _is_valid_text(sent) else str(uuid.uuid4())
        state[_STATE_KEY] = request_id
    return str(request_id)


def command_context(request: Request[Any, Any, Any], actor: str | None) -> CommandContext:
    """Return who issued a write request and its correlation id.

    Args:
        request: The write request.
        actor: The ``X-Actor`` header, or None when the client sent none.

    Raises:
        BadRequestError: ``X-Actor`` is present but empty, too long or not printable.
    """
    if actor is None:
        actor = DEFAULT_ACTOR
    elif not _is_valid_text(actor.strip()):
        raise BadRequestError(
            f"header {ACTOR_HEADER} must be 1 to {MAX_HEADER_TEXT} printable ASCII "
            "characters naming the user or service; leave it out to record the actor as "
            f"{DEFAULT_ACTOR!r}",
            field=ACTOR_HEADER,
            value=actor[:MAX_HEADER_TEXT],
        )
    return CommandContext(actor=actor.strip(), correlation_id=request_id_of(request.scope))
