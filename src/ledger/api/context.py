"""Per-request context: the request id, the actor and the command context.

The request id comes from the ``X-Request-ID`` header when the client sends a
valid one (1 to 100 printable ASCII characters), otherwise it is a new UUID4.
The middleware rejects an invalid header with a 400 problem document. The id
is stored in the ASGI scope on first use, so the middleware, the exception
handler and the route handlers of one request all see the same id. Every
event a write produces carries it as its correlation id.

:func:`require_json_body` runs before every handler and rejects a request
body that is not declared as JSON, before Litestar tries to decode it.
"""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Request
from litestar.params import QueryParameter

from ledger.api.errors import BadRequestError, UnsupportedMediaTypeError
from ledger.application.commands import CommandContext
from ledger.domain.text import reject_nul
from ledger.errors import InvalidInputError

__all__ = [
    "ACTOR_HEADER",
    "DEFAULT_ACTOR",
    "MAX_HEADER_TEXT",
    "REQUEST_ID_HEADER",
    "command_context",
    "invalid_request_id",
    "request_id_of",
    "require_json_body",
]

REQUEST_ID_HEADER = "X-Request-ID"
ACTOR_HEADER = "X-Actor"
DEFAULT_ACTOR = "api"
MAX_HEADER_TEXT = 100

_STATE_KEY = "ledger_request_id"

# Methods whose Content-Type is checked even when the body is empty.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _is_valid_text(value: str) -> bool:
    return 0 < len(value) <= MAX_HEADER_TEXT and value.isprintable() and value.isascii()


def _header(scope: Any, name: str) -> str | None:
    expected_name = name.lower().encode("latin-1")
    for key, value in scope.get("headers", ()):
        if key.lower() == expected_name:
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


def _is_json_media_type(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = media_type.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _has_body(request: Request[Any, Any, Any]) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in {"", "0"}
    return "transfer-encoding" in request.headers


def _accepted_query_parameters(request: Request[Any, Any, Any]) -> frozenset[str] | None:
    """Return the query parameters the request's route declares, or None for routes not ours."""
    handler = request.scope.get("route_handler")
    if handler is None or not request.url.path.startswith("/v1/"):
        return None
    return frozenset(
        definition.kwarg_definition.query or name
        for name, definition in handler.parsed_fn_signature.parameters.items()
        if isinstance(definition.kwarg_definition, QueryParameter)
    )


def _reject_unknown_query_parameters(request: Request[Any, Any, Any]) -> None:
    """Reject a query parameter the route does not declare, such as ``cursor`` for ``after``.

    A misspelled paging parameter would otherwise be ignored, and a client
    would read the first page again and again.
    """
    accepted = _accepted_query_parameters(request)
    if accepted is None:
        return
    for name in request.query_params:
        if name not in accepted:
            choices = ", ".join(sorted(accepted)) or "none"
            raise InvalidInputError(
                f"query parameter {name!r} is not accepted here; this endpoint accepts: {choices}",
                field=name[:MAX_HEADER_TEXT],
                value=request.query_params.get(name, "")[:MAX_HEADER_TEXT],
            )


def _reject_nul_in_url(request: Request[Any, Any, Any]) -> None:
    """Reject a path or query parameter containing U+0000, which no stored id can contain."""
    for name, value in request.path_params.items():
        reject_nul(name, value)
    for name, values in request.query_params.dict().items():
        for value in values:
            reject_nul(name, value)


async def require_json_body(request: Request[Any, Any, Any]) -> None:
    """Check the URL's text, then reject a body that is not JSON; Litestar ``before_request`` hook.

    A path or query parameter containing the NUL character, and a query
    parameter the route does not declare, are rejected first.

    A body with no Content-Type is rejected too. A POST, PUT or PATCH without
    a body or Content-Type passes, so the handler's validation reports the
    missing body, and so does any other request without a body.

    Raises:
        UnsupportedMediaTypeError: The body is not declared as
            ``application/json`` or another ``application/*+json`` type.
    """
    _reject_nul_in_url(request)
    _reject_unknown_query_parameters(request)
    has_body = _has_body(request)
    if request.method not in _BODY_METHODS and not has_body:
        return
    content_type = request.headers.get("content-type")
    if content_type is None:
        if not has_body:
            return
    elif _is_json_media_type(content_type):
        return
    sent_type = None if content_type is None else content_type[:MAX_HEADER_TEXT]
    raise UnsupportedMediaTypeError(
        f"Content-Type {sent_type or '(none)'} is not supported; send the body as JSON with "
        "the header Content-Type: application/json",
        field="Content-Type",
        value=sent_type,
    )
