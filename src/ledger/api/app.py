"""Assembly of the Litestar application.

:func:`create_app` wires the route handlers to one set of
:class:`~ledger.bootstrap.Services`. Its lifespan opens an asyncpg pool for
the read side, optionally runs the projector as a background task of the same
event loop, and on shutdown stops the projector and closes the pool.
:func:`openapi_document` builds the same application without services, so
the OpenAPI document can be exported without a database.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any, cast

import asyncpg
import structlog
from litestar import Litestar
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.params import HeaderParameter
from litestar.types import (
    HTTPScope,
    LifeSpanReceive,
    LifeSpanScope,
    LifeSpanSend,
    Receive,
    Scope,
    Send,
)

from ledger import projector
from ledger.api.context import MAX_HEADER_TEXT, REQUEST_ID_HEADER, require_json_body
from ledger.api.docs import SchemaIndexPlugin
from ledger.api.fast_reads import serve_statement
from ledger.api.middleware import RequestLogMiddleware
from ledger.api.problems import handle_exception
from ledger.api.routes import ROUTE_HANDLERS
from ledger.bootstrap import Services, bootstrap
from ledger.errors import StoreUnavailableError
from ledger.infrastructure.read_pool import create_fair_pool
from ledger.logs import configure_logging
from ledger.settings import Settings

__all__ = [
    "create_app",
    "create_worker_app",
    "create_worker_app_without_projector",
    "openapi_document",
]

_log = structlog.get_logger("ledger.api")

# Read connections each process opens at start. The pool grows up to the
# read_pool_size setting under load. A request uses one connection for one
# or a few queries, and the projector opens its own outside this pool.
_POOL_MIN_SIZE = 1
_CONNECT_TIMEOUT_SECONDS = 10.0

# Maximum wait for the projector to finish its current batch on shutdown.
# After it the task is cancelled, and the cancelled batch rolls back and is
# replayed by the next projector.
_PROJECTOR_STOP_SECONDS = 10.0

_DESCRIPTION = """\
Event-sourced rewards ledger for partner programs.

Money is always `{"amount": "47.43", "currency": "USD"}`: the amount is a
decimal string with the currency's minor-unit digits (none for JPY, three for
BHD), never a JSON number.

Writes return `position`. Pass it as `min_position` to any read to see that
write: the read waits until the projections it uses have applied it.

Every error is an RFC 9457 problem document (`application/problem+json`)
whose `errors` list names each field at fault, the value sent and the fix.
"""


def _package_version() -> str:
    try:
        return version("ledger")
    except PackageNotFoundError:
        return "0.0.0"


class _LedgerApp(Litestar):
    """Litestar application that serves plain statement reads on a short path.

    See :mod:`ledger.api.fast_reads`: every request that path declines goes
    through Litestar as usual.
    """

    async def __call__(
        self,
        scope: Scope | LifeSpanScope,
        receive: Receive | LifeSpanReceive,
        send: Send | LifeSpanSend,
    ) -> None:
        """Serve the request on the short path when it applies, else through Litestar."""
        if scope["type"] == ScopeType.HTTP and await serve_statement(
            self.state, cast(HTTPScope, scope), cast(Send, send)
        ):
            return
        await super().__call__(scope, receive, send)


def _build(
    *,
    state: State,
    lifespan: list[Callable[[Litestar], AbstractAsyncContextManager[None]]],
) -> Litestar:
    return _LedgerApp(
        route_handlers=ROUTE_HANDLERS,
        middleware=[RequestLogMiddleware()],
        exception_handlers={Exception: handle_exception},
        before_request=require_json_body,
        lifespan=lifespan,
        state=state,
        parameters={
            "x_request_id": HeaderParameter(
                name=REQUEST_ID_HEADER,
                annotation=str | None,
                required=False,
                description=(
                    f"Request id, 1 to {MAX_HEADER_TEXT} printable ASCII characters; echoed "
                    "in the response, written to the logs and stored as the correlation id "
                    "of the events a write produces. A new UUID is used when absent."
                ),
            )
        },
        openapi_config=OpenAPIConfig(
            title="ledger",
            version=_package_version(),
            description=_DESCRIPTION,
            path="/schema",
            # A plain page at /schema: the default viewers load scripts from
            # a CDN and stay blank offline.
            render_plugins=[SchemaIndexPlugin(), JsonRenderPlugin()],
        ),
        # The structlog request line replaces Litestar's own logging.
        logging_config=None,
    )


def create_app(
    services: Services, *, run_projector: bool = True, close_services: bool = False
) -> Litestar:
    """Return the HTTP application serving ``services``.

    Args:
        services: The assembled command side, settings and database.
        run_projector: Run :func:`ledger.projector.run_projector` inside this
            process while the application runs. Turn it off when a separate
            ``ledger project`` process keeps the projections current.
        close_services: Close ``services`` when the application shuts down,
            for an application that owns them.
    """
    if not structlog.is_configured():
        configure_logging(services.settings.log_format)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with _read_pool(services) as pool, _projector_task(services, run_projector) as task:
            app.state["pool"] = pool
            app.state["projector_task"] = task
            _log.info(
                "api_started",
                database=services.database.redacted,
                projector=run_projector,
                pid=os.getpid(),
            )
            try:
                yield
            finally:
                _log.info("api_stopping")
                if close_services:
                    services.close()

    return _build(state=State({"services": services}), lifespan=[lifespan])


def create_worker_app() -> Litestar:
    """Return the application of one ``ledger serve --workers`` process, with a projector.

    uvicorn calls this factory in each worker process. The settings come from
    the environment, where ``ledger serve`` has put the database it resolved
    and migrated, so a worker neither migrates nor starts an embedded server.
    Every worker runs the projector: each projection's advisory lock lets one
    worker apply it while the others wait, and a waiting worker takes over if
    the one holding the lock stops.
    """
    return _worker_app(run_projector=True)


def create_worker_app_without_projector() -> Litestar:
    """Return the application of one ``ledger serve --workers --no-projector`` process."""
    return _worker_app(run_projector=False)


def _worker_app(*, run_projector: bool) -> Litestar:
    settings = Settings.from_env()
    configure_logging(settings.log_format)
    services = bootstrap(settings, run_migrations=False)
    return create_app(services, run_projector=run_projector, close_services=True)


def openapi_document() -> dict[str, Any]:
    """Return the application's OpenAPI document as plain JSON data.

    The application built here has no services and is never started; only
    its routes and types matter for the schema.
    """
    app = _build(state=State({}), lifespan=[])
    return app.openapi_schema.to_schema()


@asynccontextmanager
async def _read_pool(services: Services) -> AsyncIterator[asyncpg.Pool]:
    try:
        pool = await create_fair_pool(
            services.database.url,
            min_size=_POOL_MIN_SIZE,
            max_size=services.settings.read_pool_size,
            timeout=_CONNECT_TIMEOUT_SECONDS,
            reset=_keep_session_state,
        )
    except (OSError, asyncpg.PostgresError) as error:
        raise StoreUnavailableError(
            f"cannot open the read pool on {services.database.redacted}: {error}; check "
            "LEDGER_DATABASE_URL and that the server runs"
        ) from error
    try:
        yield pool
    finally:
        await pool.close()


async def _keep_session_state(connection: asyncpg.Connection) -> None:
    """Reset nothing more when a read connection goes back to the pool.

    Before calling this hook asyncpg rolls back a transaction left open and
    drops listeners. Read requests only run queries and transactions, and
    change no session state: no SET outside a transaction, no LISTEN, no
    session advisory lock and no cursor WITH HOLD. So asyncpg's default reset,
    one more round trip per request running ``RESET ALL``, ``UNLISTEN *``,
    ``CLOSE ALL`` and ``pg_advisory_unlock_all()``, would find nothing to undo.
    """


@asynccontextmanager
async def _projector_task(
    services: Services, enabled: bool
) -> AsyncIterator[asyncio.Task[None] | None]:
    if not enabled:
        yield None
        return

    stop = asyncio.Event()
    task = asyncio.create_task(
        projector.run_projector(services.database, services.settings, stop=stop),
        name="ledger-projector",
    )
    task.add_done_callback(_log_projector_exit)
    try:
        yield task
    finally:
        # Ask the projector to finish its batch, then cancel it if it does not.
        # A failure of the task was already logged by its done callback.
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=_PROJECTOR_STOP_SECONDS)
        if not done:
            _log.warning("projector_stop_timed_out", seconds=_PROJECTOR_STOP_SECONDS)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _log_projector_exit(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        _log.info("projector_cancelled")
    elif (error := task.exception()) is not None:
        _log.error("projector_failed", error=type(error).__name__, exc_info=error)
    else:
        _log.info("projector_stopped")
