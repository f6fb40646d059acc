"""RFC 9457 problem documents for every error the API returns.

This is the only place that maps errors to HTTP. One Litestar exception
handler, :func:`handle_exception`, receives everything a request raises:

=====================================  ======  ======================
error                                  status  problem type
=====================================  ======  ======================
malformed JSON, wrong type, missing    400     invalid-request
field or header (Litestar validation)
``BadRequestError`` (bad header)       400     invalid-request
``UnsupportedMediaTypeError``          415     unsupported-media-type
``NotFoundError``, unknown path        404     not-found
``ConflictError``                      409     conflict
``RuleNotFoundError``                  422     rule-not-found
``InvalidInputError``                  422     invalid-input
``ProjectionLagError``                 503     projections-behind
``StoreUnavailableError``              503     store-unavailable
anything else                          500     internal-error
=====================================  ======  ======================

Each document carries ``errors: [{field, value, message}]`` naming the field
at fault, the value sent and the fix. An unexpected exception is logged with
its traceback and the request id, and the client sees only the request id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotFoundException,
    SerializationException,
    ValidationException,
)
from litestar.utils.scope.state import ScopeState

from ledger.api.context import REQUEST_ID_HEADER, request_id_of
from ledger.api.errors import BadRequestError, ProjectionsBehindError, UnsupportedMediaTypeError
from ledger.api.schemas import (
    ErrorDetail,
    ProblemDocument,
    ProblemTypeDoc,
    ProjectionHealth,
    ValueDifference,
)
from ledger.errors import (
    ConflictError,
    InvalidInputError,
    LedgerError,
    NotFoundError,
    ProjectionLagError,
    RuleNotFoundError,
    StoreUnavailableError,
)
from ledger.queries import MAX_EVENTS_LIMIT

__all__ = [
    "PARAMETER_ALIASES",
    "PROBLEM_MEDIA_TYPE",
    "PROBLEM_TYPES",
    "handle_exception",
    "problem_response",
    "problem_type_uri",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"

# Seconds a client should wait before retrying a 503; the projector usually
# applies a write within a second, and a database restart takes longer anyway.
RETRY_AFTER_SECONDS = 1

# Handler parameter names whose HTTP name differs (headers cannot be Python names).
PARAMETER_ALIASES = {
    "idempotency_key": "Idempotency-Key",
    "x_actor": "X-Actor",
}

_FIELD_HINTS = {
    "Idempotency-Key": (
        "send a unique key, such as a UUID, with every write, and reuse it only to retry "
        "the same request"
    ),
    "limit": f"ask for 1 to {MAX_EVENTS_LIMIT} entries per page",
    "after": "pass the next_cursor of the previous page, or leave it out to start at the beginning",
    "min_position": "pass the position a write returned, a whole number of 0 or more",
}

_log = structlog.get_logger("ledger.api")


@dataclass(frozen=True, slots=True)
class ProblemType:
    """A documented kind of problem, served at ``/problems/<slug>``."""

    slug: str
    title: str
    status: int
    description: str

    @property
    def uri(self) -> str:
        """The ``type`` member of documents of this kind."""
        return problem_type_uri(self.slug)

    def doc(self) -> ProblemTypeDoc:
        """Return the description served at :attr:`uri`."""
        return ProblemTypeDoc(
            type=self.uri, title=self.title, status=self.status, description=self.description
        )


def problem_type_uri(slug: str) -> str:
    """Return the ``type`` URI reference of problem ``slug``."""
    return f"/problems/{slug}"


PROBLEM_TYPES: dict[str, ProblemType] = {
    problem.slug: problem
    for problem in (
        ProblemType(
            "invalid-request",
            "Invalid request",
            400,
            "The request could not be decoded: malformed JSON, a value of the wrong JSON "
            "type, a missing or unknown field, or a missing or malformed header or query "
            "parameter. Each entry of errors names the field; fix it and send again.",
        ),
        ProblemType(
            "unsupported-media-type",
            "Unsupported media type",
            415,
            "The request body was sent with a Content-Type other than JSON, or with none. "
            "Send the body as JSON with the header Content-Type: application/json.",
        ),
        ProblemType(
            "not-found",
            "Not found",
            404,
            "The program, partner, earning or endpoint named by the request does not "
            "exist. A partner enrolled moments ago may not be visible yet; read again "
            "with min_position set to the position its enrollment returned.",
        ),
        ProblemType(
            "conflict",
            "Conflict with an earlier request",
            409,
            "The source_ref or Idempotency-Key was used before with other content. The "
            "differences member lists each field with the stored and the requested value. "
            "Use a new key for a new request.",
        ),
        ProblemType(
            "invalid-input",
            "Invalid input",
            422,
            "The request is well-formed but breaks a ledger rule: an unknown currency, "
            "more decimal places than the currency has, a negative base amount, a "
            "reversal larger than what remains, and so on.",
        ),
        ProblemType(
            "rule-not-found",
            "No rule prices the activity",
            422,
            "No rule of the rule set in force on the effective date matches the activity "
            "type and attributes, or no rule set is in force on that date yet.",
        ),
        ProblemType(
            "projections-behind",
            "Projections are behind",
            503,
            "The read asked for min_position, and the projections it reads did not reach "
            "that position in time. The projections member lists the position of each one. "
            "Retry after the Retry-After delay.",
        ),
        ProblemType(
            "store-unavailable",
            "Database unavailable",
            503,
            "The database could not be reached. Every write is idempotent, so retrying "
            "after the Retry-After delay is safe.",
        ),
        ProblemType(
            "internal-error",
            "Internal error",
            500,
            "An unexpected error occurred. The service logs hold the details under the "
            "document's request_id.",
        ),
    )
}


@dataclass(slots=True)
class _Problem:
    status: int
    detail: str
    slug: str | None = None
    errors: list[ErrorDetail] = field(default_factory=list)
    differences: list[ValueDifference] | None = None
    projections: list[ProjectionHealth] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def problem_response(request: Request[Any, Any, Any], exc: Exception) -> Response[ProblemDocument]:
    """Return the problem document response for ``exc`` raised by ``request``."""
    problem = _problem_for(request, exc)
    request_id = request_id_of(request.scope)
    kind = PROBLEM_TYPES.get(problem.slug or "")
    if kind is not None:
        type_uri, title = kind.uri, kind.title
    else:
        # Statuses with no problem type of their own (405, 413, ...) use the
        # RFC 9457 default type, whose title is the HTTP reason phrase.
        type_uri, title = "about:blank", HTTPStatus(problem.status).phrase
    document = ProblemDocument(
        type=type_uri,
        title=title,
        status=problem.status,
        detail=problem.detail,
        instance=request.url.path,
        request_id=request_id,
        errors=problem.errors,
        differences=problem.differences,
        projections=problem.projections,
    )
    headers = {**problem.headers, REQUEST_ID_HEADER: request_id}
    return Response(
        content=document,
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[ProblemDocument]:
    """Litestar exception handler: turn any exception into a problem document.

    Unexpected errors (status 500) are logged with their traceback. Requests
    that matched no route never reach the request-logging middleware, so
    their request line is logged here.
    """
    response = problem_response(request, exc)
    if response.status_code == 500:
        _log.error(
            "request_failed",
            method=request.method,
            path=request.url.path,
            request_id=request_id_of(request.scope),
            exc_info=exc,
        )
    elif isinstance(exc, StoreUnavailableError):
        _log.warning(
            "request_store_unavailable",
            path=request.url.path,
            request_id=request_id_of(request.scope),
            message=exc.message,
        )
    if request.scope.get("route_handler") is None:
        _log.info(
            "http_request",
            method=request.method,
            path=request.url.path,
            status=response.status_code,
            request_id=request_id_of(request.scope),
        )
    return response


def _problem_for(request: Request[Any, Any, Any], exc: Exception) -> _Problem:
    """Classify ``exc``; the most specific classes come first."""
    retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    match exc:
        case ProjectionsBehindError():
            return _Problem(
                503,
                exc.message,
                "projections-behind",
                [_ledger_detail(exc)],
                projections=exc.projections,
                headers=retry,
            )
        case ProjectionLagError():
            return _Problem(
                503, exc.message, "projections-behind", [_ledger_detail(exc)], headers=retry
            )
        case StoreUnavailableError():
            return _Problem(503, exc.message, "store-unavailable", headers=retry)
        case ConflictError():
            return _conflict(exc)
        case UnsupportedMediaTypeError():
            return _Problem(415, exc.message, "unsupported-media-type", [_ledger_detail(exc)])
        case BadRequestError():
            return _Problem(400, exc.message, "invalid-request", [_ledger_detail(exc)])
        case RuleNotFoundError():
            return _Problem(422, exc.message, "rule-not-found", [_ledger_detail(exc)])
        case InvalidInputError():
            return _Problem(422, exc.message, "invalid-input", [_ledger_detail(exc)])
        case NotFoundError():
            return _Problem(404, exc.message, "not-found", [_ledger_detail(exc)])
        case ValidationException():
            errors = _validation_errors(request, exc)
            return _Problem(400, _summary(errors), "invalid-request", errors)
        case NotFoundException():
            path = request.url.path
            return _Problem(
                404,
                f"no endpoint serves {path}; the API reference is at /schema",
                "not-found",
                [ErrorDetail(field="path", value=path, message=f"path {path} does not exist")],
            )
        case HTTPException() if isinstance(exc.__cause__, SerializationException):
            detail = (
                f"the request body is not valid JSON ({exc.detail}); send a JSON object "
                "with Content-Type: application/json"
            )
            return _Problem(
                400, detail, "invalid-request", [ErrorDetail(field="body", message=detail)]
            )
        case HTTPException() if exc.status_code < 500:
            return _Problem(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))
        case _:
            return _Problem(
                500,
                "an unexpected error occurred; report the request_id so operators can find "
                "the details in the service logs",
                "internal-error",
            )


def _ledger_detail(exc: LedgerError) -> ErrorDetail:
    return ErrorDetail(field=exc.field, value=exc.value, message=exc.message)


def _conflict(exc: ConflictError) -> _Problem:
    differences = [
        ValueDifference(field=name, stored=_jsonable(stored), requested=_jsonable(requested))
        for name, (stored, requested) in exc.differences.items()
    ]
    errors = [
        ErrorDetail(
            field=difference.field,
            value=difference.requested,
            message=(
                f"{difference.field} was {difference.stored!r} in the original request and is "
                f"{difference.requested!r} in this one; send the original value to retry. "
                "The detail says what to change for a new request"
            ),
        )
        for difference in differences
    ]
    if not errors:
        errors = [_ledger_detail(exc)]
    return _Problem(409, exc.message, "conflict", errors, differences=differences)


def _jsonable(value: Any) -> Any:
    # Conflict values come from the write side already rendered for display;
    # anything else (Decimal, UUID) becomes its text.
    return msgspec.to_builtins(value, enc_hook=str)


def _summary(errors: list[ErrorDetail]) -> str:
    if len(errors) == 1:
        return errors[0].message
    return f"{len(errors)} problems in the request: " + "; ".join(e.message for e in errors)


# Litestar reports a missing header, query or path parameter only in its detail text.
_MISSING_PARAMETER = re.compile(r"Missing required (\w+) parameter '([^']+)'")
_MISSING_FIELD = re.compile(r"missing required field `([^`]+)`")
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")
_PATH_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _validation_errors(
    request: Request[Any, Any, Any], exc: ValidationException
) -> list[ErrorDetail]:
    """Return one :class:`ErrorDetail` per message of a Litestar validation error."""
    if isinstance(exc.extra, list) and exc.extra:
        return [
            detail
            for item in exc.extra
            if isinstance(item, dict)
            for detail in _validation_details(request, item)
        ]
    missing = _MISSING_PARAMETER.search(str(exc.detail))
    if missing is not None:
        source, name = missing.groups()
        message = f"{source} {name} is missing"
        hint = _FIELD_HINTS.get(name)
        message = f"{message}; {hint}" if hint else f"{message}; add it to the request"
        return [ErrorDetail(field=name, value=None, message=message)]
    # NOTE: a Litestar validation error without structured details or a known
    # detail text is reported without a field; its detail is passed on as is.
    return [ErrorDetail(field=None, value=None, message=str(exc.detail))]


def _validation_details(request: Request[Any, Any, Any], item: dict[str, Any]) -> list[ErrorDetail]:
    """Return the details of one Litestar validation message.

    msgspec stops at the first missing field, so a missing field is reported
    together with every other required field missing from the same object.
    """
    missing = _MISSING_FIELD.search(str(item.get("message", "")))
    if missing is not None and _source_of(item) == "body":
        path = _body_path(str(item.get("key", "")))
        names = _missing_fields(request, path)
        if missing.group(1) not in names:
            names.insert(0, missing.group(1))
        return [
            ErrorDetail(field=name, message=f"{name} is missing; add it to the request body")
            for name in (_join(path, name) for name in names)
        ]
    return [_validation_detail(request, item)]


def _source_of(item: dict[str, Any]) -> str:
    # Litestar gives the source as a plain string for the body and as a
    # ParamType enum for parameters.
    raw_source = item.get("source", "")
    return str(getattr(raw_source, "value", raw_source))


def _body_path(key: str) -> str:
    # Litestar names the handler's "data" parameter for the body as a whole.
    return "" if key == "data" else key.replace("[...]", "")


def _missing_fields(request: Request[Any, Any, Any], path: str) -> list[str]:
    """Return the required fields of the object at ``path`` that the body lacks.

    Returns an empty list when the object's type or value cannot be found,
    and the caller then reports only the field msgspec named.
    """
    handler = request.scope.get("route_handler")
    data = getattr(handler, "parsed_fn_signature", None)
    field_definition = data.parameters.get("data") if data is not None else None
    if field_definition is None:
        return []
    value = ScopeState.from_scope(request.scope).json if not path else _body_value(request, path)
    struct = _struct_info(msgspec.inspect.type_info(field_definition.annotation))
    for step in path.split(".") if path else []:
        if struct is None:
            return []
        field = next((f for f in struct.fields if f.encode_name == step), None)
        struct = None if field is None else _struct_info(field.type)
    if struct is None or not isinstance(value, dict):
        return []
    return [f.encode_name for f in struct.fields if f.required and f.encode_name not in value]


def _struct_info(info: msgspec.inspect.Type) -> msgspec.inspect.StructType | None:
    """Return the Struct type of ``info``, looking inside ``Optional`` and unions."""
    if isinstance(info, msgspec.inspect.StructType):
        return info
    if isinstance(info, msgspec.inspect.UnionType):
        structs = [t for t in info.types if isinstance(t, msgspec.inspect.StructType)]
        return structs[0] if len(structs) == 1 else None
    return None


def _validation_detail(request: Request[Any, Any, Any], item: dict[str, Any]) -> ErrorDetail:
    key = str(item.get("key", ""))
    source = _source_of(item)
    text = str(item.get("message", "invalid value"))

    if source == "body":
        path = _body_path(key)
        if key.endswith("[...]"):
            # msgspec names a mapping's entry only as "[...]"; find the entry
            # whose value is not text, which is what the body's mappings hold.
            path = _first_non_text_entry(request, path)
        if text == "'data'":
            return ErrorDetail(
                field="body",
                message="the request body is missing; send a JSON object",
            )
        unknown = _UNKNOWN_FIELD.search(text)
        if unknown is not None:
            name = _join(path, unknown.group(1))
            return ErrorDetail(
                field=name,
                value=_body_value(request, name),
                message=f"{name} is not a field of this request; remove it or fix its spelling",
            )
        name = path or "body"
        return ErrorDetail(
            field=name, value=_body_value(request, path), message=_invalid_body_message(name, text)
        )

    # Query, path and header parameters.
    name = PARAMETER_ALIASES.get(key, key)
    value: Any = None
    if source == "query":
        value = request.query_params.get(name)
    elif source == "path":
        value = request.path_params.get(key)
    elif source == "header":
        value = request.headers.get(name)
    message = f"{name} is invalid: {_lower_first(text)}"
    hint = _FIELD_HINTS.get(name)
    return ErrorDetail(field=name, value=value, message=f"{message}; {hint}" if hint else message)


def _first_non_text_entry(request: Request[Any, Any, Any], path: str) -> str:
    """Return ``path.key`` of the first entry of the mapping at ``path`` whose value is not text."""
    mapping = _body_value(request, path)
    if isinstance(mapping, dict):
        for name, value in mapping.items():
            if not isinstance(value, str):
                return f"{path}.{name}"
    return path


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


# msgspec's wording for a string outside its length bounds.
_STRING_TOO_SHORT = re.compile(r"Expected `str` of length >= (\d+)")
_STRING_TOO_LONG = re.compile(r"Expected `str` of length <= (\d+)")

_MONEY_EXAMPLE = '{"amount": "100.00", "currency": "USD"}'


def _invalid_body_message(name: str, text: str) -> str:
    """Return the message for body field ``name`` that msgspec rejected with ``text``."""
    if (too_short := _STRING_TOO_SHORT.search(text)) is not None:
        if too_short.group(1) == "1":
            return f"{name} is empty; send a non-empty string"
        return f"{name} is too short; send at least {too_short.group(1)} characters"
    if (too_long := _STRING_TOO_LONG.search(text)) is not None:
        return f"{name} is too long; send at most {too_long.group(1)} characters"
    return f"{name} is invalid: {_lower_first(text)}{_type_hint(name, text)}"


def _type_hint(name: str, text: str) -> str:
    # Money fields are the request fields named amount or ending in _amount.
    is_money = name.rsplit(".", 1)[-1] == "amount" or name.endswith("_amount")
    if is_money and "Expected `object" in text:
        return f"; send money as an object such as {_MONEY_EXAMPLE}, in the program's currency"
    if name.endswith("amount") and "Expected `str`" in text:
        return '; send money amounts as decimal strings such as "47.43", never as JSON numbers'
    if "RFC3339 encoded date" in text:
        return "; write dates as YYYY-MM-DD, such as 2016-03-31"
    if "Expected `str`" in text:
        return "; send this value as a JSON string"
    return ""


def _body_value(request: Request[Any, Any, Any], path: str) -> Any:
    """Return the value at dotted ``path`` of the decoded body, or None if unknown."""
    document = ScopeState.from_scope(request.scope).json
    if not path or not isinstance(document, dict | list):
        return None
    current: Any = document
    for step in _PATH_STEP.finditer(path):
        name, index = step.groups()
        if name is not None and isinstance(current, dict) and name in current:
            current = current[name]
        elif index is not None and isinstance(current, list) and int(index) < len(current):
            current = current[int(index)]
        else:
            return None
    return current
