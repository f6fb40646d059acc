"""Route handlers of the HTTP API.

Writes run the synchronous command side (eventsourcing on psycopg) in a
worker thread and return 201 with the new record, or 200 with the original
when the request repeats an earlier one exactly. Every write response carries
``position``. A read that passes it back as ``min_position`` waits until the
projections it reads have applied that position. After
``Settings.read_wait_seconds`` without that, it returns 503.

The handlers read the assembled services and the asyncpg pool from the
application state, which :func:`ledger.api.app.create_app` fills in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio.to_thread
import asyncpg
import structlog
from litestar import MediaType, Request, Response, get, post
from litestar.openapi import ResponseSpec
from litestar.params import HeaderParameter, JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_503_SERVICE_UNAVAILABLE

from ledger import queries
from ledger.api.context import ACTOR_HEADER, MAX_HEADER_TEXT, command_context
from ledger.api.errors import ProjectionsBehindError
from ledger.api.problems import PROBLEM_MEDIA_TYPE, PROBLEM_TYPES
from ledger.api.schemas import (
    ActivityRequest,
    AdjustmentRequest,
    AdjustmentResponse,
    EarningResponse,
    EnrollmentRequest,
    EnrollmentResponse,
    HealthResponse,
    ProblemDocument,
    ProblemTypeDoc,
    ProjectionHealth,
    ReversalRequest,
    ReversalResponse,
    TierRequest,
    TierResponse,
    parse_money,
)
from ledger.application.commands import (
    ChangeTier,
    EnrollPartner,
    RecordActivity,
    RecordAdjustment,
    ReverseEarning,
)
from ledger.bootstrap import Services
from ledger.errors import InvalidInputError, NotFoundError, StoreUnavailableError
from ledger.projector import (
    ProjectionStatus,
    failing_projections,
    projection_status,
    wait_for_position,
)

__all__ = ["ROUTE_HANDLERS"]

_T = TypeVar("_T")

_log = structlog.get_logger("ledger.api")

# Projections each read endpoint needs before it can honour min_position.
_STATEMENTS = ("statements",)
_HISTORY = ("history",)

_Request = Request[Any, Any, Any]

_PERIOD_RANGE = f"{queries.FIRST_PERIOD:%Y-%m} to {queries.LAST_PERIOD:%Y-%m}"


# Shared parameters --------------------------------------------------------

_MinPosition = Annotated[
    int | None,
    QueryParameter(
        ge=0,
        description=(
            "Wait until the projections this endpoint reads have applied this event "
            "position (the position a write returned). Answers 503 when they do not get "
            "there within the configured wait."
        ),
    ),
]
_IdempotencyKey = Annotated[
    str,
    HeaderParameter(
        name="Idempotency-Key",
        description=(
            "1 to 200 printable characters, unique per intended write (a UUID works). "
            "Repeating a request with the same key and body returns the original result; "
            "the same key with another body is a 409 conflict."
        ),
    ),
]
_Actor = Annotated[
    str | None,
    HeaderParameter(
        name=ACTOR_HEADER,
        description=(
            "User or service issuing the write, recorded on its events; 1 to "
            f"{MAX_HEADER_TEXT} printable ASCII characters. Defaults to 'api'."
        ),
    ),
]
_PartnerId = Annotated[str, PathParameter(description="Partner id, such as darcel-schlecht.")]
_ProgramId = Annotated[str, PathParameter(description="Program id, such as crm-channel.")]


def _problem(description: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=ProblemDocument,
        description=description,
        media_type=PROBLEM_MEDIA_TYPE,
        generate_examples=False,
    )


_READ_PROBLEMS = {
    400: _problem("A query parameter is malformed."),
    404: _problem("The partner does not exist."),
    503: _problem("The projections did not reach min_position in time, or the database is down."),
}
_PROGRAM_READ_PROBLEMS = {**_READ_PROBLEMS, 404: _problem("The program does not exist.")}


def _write_problems(retry_model: type[Any]) -> dict[int, ResponseSpec]:
    return {
        200: ResponseSpec(
            data_container=retry_model,
            description="An identical earlier request: its original result.",
            generate_examples=False,
        ),
        400: _problem("Malformed JSON, a wrong JSON type, or a missing field or header."),
        404: _problem("The program, partner or earning does not exist."),
        409: _problem("The key or source_ref was used before with other content."),
        415: _problem("The body is not sent as JSON (Content-Type: application/json)."),
        422: _problem("The input breaks a ledger rule."),
        503: _problem("The database is unavailable; retrying is safe."),
    }


# Helpers -------------------------------------------------------------------


def _services(request: _Request) -> Services:
    services: Services = request.app.state["services"]
    return services


def _pool(request: _Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state["pool"]
    return pool


def _written(body: Any, created: bool) -> Response[Any]:
    return Response(body, status_code=HTTP_201_CREATED if created else HTTP_200_OK)


async def _run_command(command: Callable[[], _T]) -> _T:
    """Run a synchronous write command in a worker thread."""
    return await anyio.to_thread.run_sync(command)


async def _await_projections(
    request: _Request, min_position: int | None, names: Sequence[str]
) -> None:
    """Wait until ``names`` have applied ``min_position``, or raise a 503 error."""
    if min_position is None or min_position == 0:
        return
    pool = _pool(request)
    timeout = _services(request).settings.read_wait_seconds
    try:
        reached = await wait_for_position(pool, min_position, names=names, timeout=timeout)
        if reached:
            return
        statuses = await projection_status(pool)
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as error:
        raise StoreUnavailableError(
            f"the read database is unavailable: {error}; retry the request"
        ) from error
    head = max((status.head for status in statuses), default=0)
    if min_position > head:
        # No wait can help: no event has this position yet.
        raise InvalidInputError(
            f"min_position {min_position} is past the event store head {head}; pass a "
            "position that a write returned",
            field="min_position",
            value=min_position,
        )
    failures = failing_projections()
    projections = [
        _projection_health(status, failures.get(status.name))
        for status in statuses
        if status.name in names
    ]
    behind = ", ".join(f"{p.name} at {p.position}" for p in projections)
    raise ProjectionsBehindError(
        f"projections are behind: min_position {min_position} was not reached within "
        f"{timeout:g} s ({behind}); retry after the Retry-After delay",
        projections=projections,
        field="min_position",
        value=min_position,
    )


def _projection_health(status: ProjectionStatus, error: str | None) -> ProjectionHealth:
    return ProjectionHealth(
        name=status.name, position=status.position, head=status.head, lag=status.lag, error=error
    )


# Writes --------------------------------------------------------------------


@post(
    "/v1/programs/{program_id:str}/partners",
    status_code=HTTP_201_CREATED,
    tags=["writes"],
    summary="Enroll a partner",
    description=(
        "Enroll a partner in the program from effective_date on. A partner id belongs to "
        "one program. Sending the same enrollment again returns it with 200, and sending "
        "other details for an enrolled partner id is a 409 conflict listing the differing "
        "fields."
    ),
    responses=_write_problems(EnrollmentResponse),
)
async def enroll_partner(
    request: _Request,
    program_id: _ProgramId,
    data: JSONBody[EnrollmentRequest],
    x_actor: _Actor = None,
) -> Response[EnrollmentResponse]:
    """Enroll a partner in ``program_id``."""
    context = command_context(request, x_actor)
    app = _services(request).app

    command = EnrollPartner(
        partner_id=data.partner_id,
        display_name=data.display_name,
        effective_date=data.effective_date,
        region=data.region,
        channel_manager=data.channel_manager,
        tier=data.tier,
        source_ref=data.source_ref,
    )
    outcome = await _run_command(partial(app.enroll_partner, program_id, command, context))
    created, position, tier = outcome.created, outcome.position, outcome.tier
    # A repeated enrollment only succeeds with the same details as the stored
    # one, so the response can echo the request and the resolved tier.
    body = EnrollmentResponse(
        created=created,
        partner_id=command.partner_id,
        program_id=program_id,
        display_name=command.display_name,
        region=command.region,
        channel_manager=command.channel_manager,
        tier=tier,
        enrolled_on=command.effective_date,
        position=position,
    )
    return _written(body, created)


@post(
    "/v1/programs/{program_id:str}/activities",
    status_code=HTTP_201_CREATED,
    tags=["writes"],
    summary="Record an activity",
    description=(
        "Price an activity with the rule set in force on its effective date and record the "
        "earning. The source_ref identifies the activity within the program: sending the "
        "same activity again returns the original earning with 200, and sending other "
        "content with the same source_ref is a 409 conflict listing the differing fields."
    ),
    responses=_write_problems(EarningResponse),
)
async def record_activity(
    request: _Request,
    program_id: _ProgramId,
    data: JSONBody[ActivityRequest],
    x_actor: _Actor = None,
) -> Response[EarningResponse]:
    """Record one activity of ``program_id``."""
    context = command_context(request, x_actor)
    command = RecordActivity(
        partner_id=data.partner_id,
        activity_type=data.activity_type,
        source_ref=data.source_ref,
        effective_date=data.effective_date,
        base_amount=None
        if data.base_amount is None
        else parse_money(data.base_amount, "base_amount"),
        attributes=dict(data.attributes),
    )
    app = _services(request).app
    try:
        outcome = await _run_command(
            partial(app.record_activity, program_id, command, context),
        )
    except NotFoundError as error:
        if error.field != "partner_id":
            raise
        raise NotFoundError(
            f"partner {command.partner_id!r} is not enrolled; enroll it first with "
            f"POST /v1/programs/{program_id}/partners, then record its activities",
            field="partner_id",
            value=command.partner_id,
        ) from error
    return _written(EarningResponse.from_outcome(outcome), outcome.created)


@post(
    "/v1/partners/{partner_id:str}/adjustments",
    status_code=HTTP_201_CREATED,
    tags=["writes"],
    summary="Credit or debit a partner",
    description=(
        "Record a manual adjustment in the program currency: a positive amount credits "
        "the partner, a negative one debits it. Requires an Idempotency-Key."
    ),
    responses=_write_problems(AdjustmentResponse),
)
async def record_adjustment(
    request: _Request,
    partner_id: _PartnerId,
    data: JSONBody[AdjustmentRequest],
    idempotency_key: _IdempotencyKey,
    x_actor: _Actor = None,
) -> Response[AdjustmentResponse]:
    """Record an adjustment for ``partner_id``."""
    context = command_context(request, x_actor)
    command = RecordAdjustment(
        amount=parse_money(data.amount, "amount"),
        effective_date=data.effective_date,
        reason=data.reason,
        source_ref=data.source_ref,
    )
    app = _services(request).app
    outcome = await _run_command(
        partial(app.record_adjustment, partner_id, command, idempotency_key, context),
    )
    return _written(AdjustmentResponse.from_outcome(outcome), outcome.created)


@post(
    "/v1/partners/{partner_id:str}/reversals",
    status_code=HTTP_201_CREATED,
    tags=["writes"],
    summary="Reverse an earning",
    description=(
        "Reverse all or part of the earning recorded for source_ref. Send amount (the "
        "reward to take back) or base_amount (the part of the base clawed back, priced at "
        "the earning's frozen rate), or neither to reverse what remains. Requires an "
        "Idempotency-Key."
    ),
    responses=_write_problems(ReversalResponse),
)
async def reverse_earning(
    request: _Request,
    partner_id: _PartnerId,
    data: JSONBody[ReversalRequest],
    idempotency_key: _IdempotencyKey,
    x_actor: _Actor = None,
) -> Response[ReversalResponse]:
    """Reverse an earning of ``partner_id``."""
    context = command_context(request, x_actor)
    command = ReverseEarning(
        source_ref=data.source_ref,
        effective_date=data.effective_date,
        reason=data.reason,
        amount=None if data.amount is None else parse_money(data.amount, "amount"),
        base_amount=None
        if data.base_amount is None
        else parse_money(data.base_amount, "base_amount"),
    )
    app = _services(request).app
    outcome = await _run_command(
        partial(app.reverse_earning, partner_id, command, idempotency_key, context),
    )
    return _written(ReversalResponse.from_outcome(outcome), outcome.created)


@post(
    "/v1/partners/{partner_id:str}/tier",
    status_code=HTTP_201_CREATED,
    tags=["writes"],
    summary="Change a partner's tier",
    description="Move the partner to another tier. Requires an Idempotency-Key.",
    responses=_write_problems(TierResponse),
)
async def change_tier(
    request: _Request,
    partner_id: _PartnerId,
    data: JSONBody[TierRequest],
    idempotency_key: _IdempotencyKey,
    x_actor: _Actor = None,
) -> Response[TierResponse]:
    """Change the tier of ``partner_id``."""
    context = command_context(request, x_actor)
    command = ChangeTier(tier=data.tier, effective_date=data.effective_date, reason=data.reason)
    app = _services(request).app
    outcome = await _run_command(
        partial(app.change_tier, partner_id, command, idempotency_key, context),
    )
    return _written(TierResponse.from_outcome(outcome), outcome.created)


# Reads ---------------------------------------------------------------------


@get(
    "/v1/programs",
    tags=["reads"],
    summary="List programs",
    description="Every program, ordered by program_id, with its number of partners.",
    responses={status: problem for status, problem in _READ_PROBLEMS.items() if status != 404},
)
async def list_programs(
    request: _Request, min_position: _MinPosition = None
) -> list[queries.ProgramSummary]:
    """Return every program from the statements projection."""
    await _await_projections(request, min_position, _STATEMENTS)
    return await queries.fetch_programs(_pool(request))


@get(
    "/v1/programs/{program_id:str}",
    tags=["reads"],
    summary="Read a program and its rules",
    description=(
        "The program's currency, time zone and rounding, and every published rule set "
        "with its rules: the rules that priced each earning, named by rule_set_version "
        "and rule_id on earnings and statement lines."
    ),
    responses=_PROGRAM_READ_PROBLEMS,
)
async def get_program(
    request: _Request, program_id: _ProgramId, min_position: _MinPosition = None
) -> queries.ProgramView:
    """Return ``program_id`` from the statements projection."""
    await _await_projections(request, min_position, _STATEMENTS)
    return await queries.fetch_program(_pool(request), program_id)


@get(
    "/v1/programs/{program_id:str}/partners",
    tags=["reads"],
    summary="List a program's partners",
    description=(
        "Partners ordered by partner_id. Pass next_cursor as after to read the next page; "
        "next_cursor is null on the last page."
    ),
    responses=_PROGRAM_READ_PROBLEMS,
)
async def list_partners(
    request: _Request,
    program_id: _ProgramId,
    after: Annotated[
        str | None,
        QueryParameter(
            max_length=100, description="Return partners whose id sorts after this cursor."
        ),
    ] = None,
    limit: Annotated[
        int,
        QueryParameter(ge=1, le=queries.MAX_PARTNERS_LIMIT, description="Partners per page."),
    ] = queries.DEFAULT_PARTNERS_LIMIT,
    min_position: _MinPosition = None,
) -> queries.PartnerPage:
    """Return a page of the partners of ``program_id``."""
    await _await_projections(request, min_position, _STATEMENTS)
    return await queries.fetch_program_partners(_pool(request), program_id, after, limit)


@get(
    "/v1/partners/{partner_id:str}",
    tags=["reads"],
    summary="Read a partner's profile",
    responses=_READ_PROBLEMS,
)
async def get_partner(
    request: _Request, partner_id: _PartnerId, min_position: _MinPosition = None
) -> queries.PartnerProfile:
    """Return the profile of ``partner_id`` from the statements projection."""
    await _await_projections(request, min_position, _STATEMENTS)
    return await queries.fetch_partner(_pool(request), partner_id)


@get(
    "/v1/partners/{partner_id:str}/balance",
    tags=["reads"],
    summary="Read a partner's balance",
    responses=_READ_PROBLEMS,
)
async def get_balance(
    request: _Request, partner_id: _PartnerId, min_position: _MinPosition = None
) -> queries.BalanceView:
    """Return the balance of ``partner_id`` in its program currency."""
    await _await_projections(request, min_position, _STATEMENTS)
    return await queries.fetch_balance(_pool(request), partner_id)


@get(
    "/v1/partners/{partner_id:str}/statements/{period:str}",
    tags=["reads"],
    summary="Read a monthly statement",
    description=(
        "The statement of one calendar month (YYYY-MM) in the program's time zone: the "
        "opening balance, every line effective in the month with its explanation, and the "
        "closing balance, which equals the opening balance plus the lines."
    ),
    responses={
        # The handler returns the JSON bytes of a StatementView, so the
        # schema of the 200 response is named here.
        HTTP_200_OK: ResponseSpec(
            data_container=queries.StatementView,
            description="Request fulfilled, document follows",
            generate_examples=False,
        ),
        **_READ_PROBLEMS,
        422: _problem(f"The period is not YYYY-MM, or is outside {_PERIOD_RANGE}."),
    },
)
async def get_statement(
    request: _Request,
    partner_id: _PartnerId,
    period: Annotated[
        str,
        PathParameter(
            description=f"Calendar month, YYYY-MM, from {_PERIOD_RANGE}, such as 2016-03."
        ),
    ],
    min_position: _MinPosition = None,
) -> Response[bytes]:
    """Return the statement of ``partner_id`` for ``period``."""
    queries.parse_period(period)
    await _await_projections(request, min_position, _STATEMENTS)
    body = await queries.fetch_statement_json(_pool(request), partner_id, period)
    return Response(body, media_type=MediaType.JSON)


@get(
    "/v1/partners/{partner_id:str}/events",
    tags=["reads"],
    summary="Page through a partner's event history",
    description=(
        "Events in position order. Pass next_cursor as after to read the next page; "
        "next_cursor is null on the last page. Positions are unique, so paging never "
        "repeats or skips an event."
    ),
    responses=_READ_PROBLEMS,
)
async def get_partner_events(
    request: _Request,
    partner_id: _PartnerId,
    after: Annotated[
        int | None,
        QueryParameter(ge=0, description="Return events with a position greater than this cursor."),
    ] = None,
    limit: Annotated[
        int, QueryParameter(ge=1, le=queries.MAX_EVENTS_LIMIT, description="Events per page.")
    ] = queries.DEFAULT_EVENTS_LIMIT,
    min_position: _MinPosition = None,
) -> queries.EventPage:
    """Return a page of the history of ``partner_id``."""
    await _await_projections(request, min_position, _HISTORY)
    return await queries.fetch_partner_events(_pool(request), partner_id, after, limit)


# Operations ----------------------------------------------------------------


def _projector_state(request: _Request) -> str:
    task = request.app.state.get("projector_task")
    if task is None:
        return "external"
    if not task.done():
        return "failing" if failing_projections() else "running"
    if not task.cancelled() and task.exception() is not None:
        return "failed"
    return "stopped"


@get(
    "/health",
    tags=["operations"],
    summary="Report service health",
    description=(
        "200 when the database replies and the projector runs (here or in another "
        "process), 503 otherwise, also while this process's projector retries a projection "
        'it failed to apply (projector "failing", the error on that projection). Lists '
        "each projection's position, the event store head and the lag between them."
    ),
    responses={
        503: ResponseSpec(
            data_container=HealthResponse,
            description=(
                "The database is unreachable, or the in-process projector stopped or is "
                "failing to apply a projection."
            ),
            generate_examples=False,
        )
    },
)
async def health(request: _Request) -> Response[HealthResponse]:
    """Return database reachability, projector state and projection lag."""
    projector = _projector_state(request)
    try:
        statuses = await projection_status(_pool(request))
    except (
        StoreUnavailableError,
        OSError,
        asyncpg.PostgresConnectionError,
        asyncpg.CannotConnectNowError,
    ) as error:
        _log.warning("health_database_unavailable", error=str(error) or type(error).__name__)
        body = HealthResponse(
            status="unavailable", database=False, projector=projector, projections=[]
        )
        return Response(body, status_code=HTTP_503_SERVICE_UNAVAILABLE)
    healthy = projector in {"running", "external"}
    failures = failing_projections()
    body = HealthResponse(
        status="ok" if healthy else "degraded",
        database=True,
        projector=projector,
        projections=[_projection_health(status, failures.get(status.name)) for status in statuses],
    )
    return Response(body, status_code=HTTP_200_OK if healthy else HTTP_503_SERVICE_UNAVAILABLE)


@get(
    "/problems/{slug:str}",
    tags=["operations"],
    summary="Describe a problem type",
    description="The documentation behind the type URI of a problem document.",
    responses={404: _problem("No problem type has this name.")},
)
async def describe_problem(
    slug: Annotated[str, PathParameter(description="Problem type name, such as not-found.")],
) -> ProblemTypeDoc:
    """Return the description of problem type ``slug``."""
    kind = PROBLEM_TYPES.get(slug)
    if kind is None:
        raise NotFoundError(
            f"problem type {slug!r} does not exist; known types are "
            f"{', '.join(sorted(PROBLEM_TYPES))}",
            field="slug",
            value=slug,
        )
    return kind.doc()


ROUTE_HANDLERS = [
    enroll_partner,
    record_activity,
    record_adjustment,
    reverse_earning,
    change_tier,
    list_programs,
    get_program,
    list_partners,
    get_partner,
    get_balance,
    get_statement,
    get_partner_events,
    health,
    describe_problem,
]
