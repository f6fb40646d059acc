"""A short path for the hottest read: a plain ``GET`` of a monthly statement.

Litestar's routing, parameter parsing, middleware and response objects took
about a quarter of the server's CPU per statement read (measured with wrk at
64 connections on a 2-core VM). For a request that needs none of them,
:func:`serve_statement` sends a response with the same bytes, headers and
log line as the ``get_statement`` route and the request log middleware. It declines, so that Litestar handles the request,
whenever that request could need anything else:

* another method, path or any query string (``min_position`` needs the
  projections wait, and unknown parameters get Litestar's checks);
* a request body, or an ``X-Request-ID`` header that is not valid;
* no read pool yet, or any error while reading the statement. Litestar then
  reads the statement again and turns the error into a problem document.

The route in :mod:`ledger.api.routes` stays the documented contract and the
path for every other case. A test compares both paths' responses.
"""

from __future__ import annotations

import time

import structlog
from litestar.datastructures import State
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, HTTPScope, Send

from ledger import queries
from ledger.api.context import invalid_request_id, request_id_of

__all__ = ["serve_statement"]

_log = structlog.get_logger("ledger.api")

_PREFIX = "/v1/partners/"
_BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding"})


def _statement_target(scope: HTTPScope) -> tuple[str, str] | None:
    """Return the partner id and period of a plain statement read, or None."""
    if scope["method"] != "GET" or scope.get("query_string") or scope.get("root_path"):
        return None
    path = scope["path"]
    if not path.startswith(_PREFIX):
        return None
    # "/v1/partners/{partner_id}/statements/{period}" splits into six parts.
    parts = path.split("/")
    if len(parts) != 6 or parts[4] != "statements" or not parts[3] or not parts[5]:
        return None
    for name, value in scope["headers"]:
        if name.lower() in _BODY_HEADERS and value.strip() not in (b"", b"0"):
            return None
    return parts[3], parts[5]


async def serve_statement(state: State, scope: HTTPScope, send: Send) -> bool:
    """Send the response to a plain statement read; return False, having sent nothing, to decline it.

    Args:
        state: The application state, which contains the read pool once the
            application has started.
        scope: The request's ASGI scope.
        send: The ASGI send callable.
    """
    target = _statement_target(scope)
    pool = state.get("pool")
    if target is None or pool is None or invalid_request_id(scope) is not None:
        return False
    started = time.perf_counter()
    partner_id, period = target
    try:
        body = await queries.fetch_statement_json(pool, partner_id, period)
    except Exception:  # noqa: BLE001
        # Litestar reads again and responds with the problem document for
        # whatever went wrong, as for any request, and logs it.
        return False

    request_id = request_id_of(scope)
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("latin-1")),
            (b"x-request-id", request_id.encode("latin-1")),
        ],
    }
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)

    tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        _log.info(
            "http_request",
            method="GET",
            path=scope["path"],
            status=200,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            partner_id=partner_id,
        )
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
    return True
