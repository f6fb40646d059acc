"""Request middleware: request id, response header and one log line per request.

:class:`RequestLogMiddleware` runs for every request that matches a route.
It chooses the request id (see :mod:`ledger.api.context`) and binds it to
structlog's context variables, so every log line of the request carries it.
It echoes the id in the ``X-Request-ID`` response header and rejects a
malformed ``X-Request-ID`` with a 400 problem document. At the end it logs
one ``http_request`` line with the method, path, status, duration and the
partner or program id from the path. Bodies are never logged.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from litestar import Request
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from ledger.api.context import REQUEST_ID_HEADER, invalid_request_id, request_id_of
from ledger.api.problems import problem_response

__all__ = ["RequestLogMiddleware"]

_log = structlog.get_logger("ledger.api")

# Path parameters copied into the request log line.
_LOGGED_PATH_PARAMS = ("partner_id", "program_id")


class RequestLogMiddleware(ASGIMiddleware):
    """Set the request id, echo it in the response and log the request."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """Run the request with its id bound to the log context, then log one line."""
        started = time.perf_counter()
        request_id = request_id_of(scope)
        status = 500

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableScopeHeaders.from_message(message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                rejected = invalid_request_id(scope)
                if rejected is not None:
                    request: Request[Any, Any, Any] = Request(scope, receive)
                    response = problem_response(request, rejected).to_asgi_response(
                        app=None, request=request
                    )
                    await response(scope, receive, send_with_request_id)
                else:
                    await next_app(scope, receive, send_with_request_id)
            finally:
                path_params = scope.get("path_params") or {}
                ids = {key: path_params[key] for key in _LOGGED_PATH_PARAMS if key in path_params}
                _log.info(
                    "http_request",
                    method=scope.get("method"),
                    path=scope.get("path"),
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    **ids,
                )
