"""Every error leaves the API as application/problem+json with a stable `code` (DESIGN §6)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InternalError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.schemas import Problem
from core.db import may_pass, refused_as_read_only
from core.errors import DomainError, Unauthorized

log = logging.getLogger(__name__)

# What a request meets while the database restarts, or its pool is exhausted: a 503 to retry (and, during a
# failover, a write refused as read-only: see on_internal_database_error). Of the OperationalErrors, only those
# core.db.may_pass says a later try may not meet.
DATABASE_UNAVAILABLE = (OperationalError, PoolTimeout)
PROBLEM_TYPE_BASE = "https://docs.voiceappoint.app/errors/"
PROBLEM_MEDIA_TYPE = "application/problem+json"
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "unavailable",
}


def problem(
    status: int, code: str, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "code": code,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


ERROR_DESCRIPTIONS = {
    400: "The body is not a JSON object",
    401: "No API key, or one that is not valid",
    403: "The business offers no availability and takes no bookings or moves while its subscription is suspended or cancelled",
    404: "No such resource in this business",
    409: "A conflict: an Idempotency-Key reused for another request, a change not allowed",
    413: "The body is larger than 64 KiB",
    422: "The request is not valid; `code` says why (and `errors` lists the fields)",
    429: "Too many requests: this API key has too many in progress, or (bookings and changes) its business has"
    " sent its limit for this minute; retry after `Retry-After` seconds",
    500: "With `?wait=`: the job failed with `internal_error`; safe to retry with a new Idempotency-Key",
    503: "The database is briefly unavailable, or the API is overloaded; retry (`Retry-After`)",
}


def documented_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entries of the problem responses an operation can give (see `problem_media_type`). An
    operation that takes an API key (401) can also refuse a key over its share of the process (429)."""
    if 401 in statuses:
        statuses = (*statuses, 429)
    return {
        status: {"model": Problem, "description": ERROR_DESCRIPTIONS[status]} for status in sorted(statuses)
    }


def problem_media_type(spec: dict[str, Any]) -> dict[str, Any]:
    """Error responses are problem+json on the wire, and validation errors are Problems too (see
    `install`); FastAPI documents every model as application/json and its own 422 body."""
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    for path, operations in spec.get("paths", {}).items():
        for operation in operations.values():
            _document_problems(path, operation, problem_ref)
    for unused in ("HTTPValidationError", "ValidationError"):
        spec.get("components", {}).get("schemas", {}).pop(unused, None)
    return spec


def _document_problems(path: str, operation: dict[str, Any], problem_ref: dict[str, str]) -> None:
    # FastAPI adds a 422 to any operation with a dependency that reads the request (the API key's header).
    # A /v1 operation can always give one (a query parameter it does not take is unknown_field); a probe
    # without parameters cannot.
    responses = operation.get("responses", {})
    if path.startswith("/v1/"):
        responses.setdefault("422", {})
    elif not operation.get("parameters") and "requestBody" not in operation:
        responses.pop("422", None)
    for status, response in responses.items():
        content = response.get("content", {})
        if status[0] in "45" and "application/json" in content:
            content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
        if status == "422":
            response.update(
                description=ERROR_DESCRIPTIONS[422], content={PROBLEM_MEDIA_TYPE: {"schema": problem_ref}}
            )


def error_problem(
    status: int, error: dict[str, Any], headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """A domain error, raised now or recorded on a failed job (`{code, message, **details}`), as problem+json."""
    code = error.get("code", "internal_error")
    details = {name: value for name, value in error.items() if name not in ("code", "message", "http_status")}
    title = code.replace("_", " ").capitalize()
    return problem(status, code, title, error.get("message", ""), headers, **details, **extra)


def domain_problem(error: DomainError) -> JSONResponse:
    headers = None
    if isinstance(error, Unauthorized):
        # RFC 9110 §15.5.2 and RFC 6750 §3: a 401 names the scheme it expects (and why a key failed).
        challenge = 'Bearer realm="voiceappoint"'
        if error.code == "invalid_api_key":
            challenge += ', error="invalid_token"'
        headers = {"WWW-Authenticate": challenge}
    return error_problem(error.http_status, error.as_dict(), headers)


def _field_name(location: tuple[Any, ...]) -> str:
    parts = [str(part) for part in location if part not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _message(error: dict[str, Any]) -> str:
    # Our validators' own words, without the "Value error, " pydantic puts before them.
    return error["msg"].removeprefix("Value error, ") if error["type"] == "value_error" else error["msg"]


def install(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def on_domain_error(request: Request, error: DomainError) -> JSONResponse:
        return domain_problem(error)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        found = error.errors()
        errors = [
            {"field": _field_name(tuple(item["loc"])), "message": _message(item), "type": item["type"]}
            for item in found
        ]
        if any(item["type"] == "json_invalid" for item in errors):
            # Pydantic reports it as a field error located at the byte offset: it is the body that is bad.
            return problem(400, "bad_request", "Bad request", "The request body is not valid JSON.")
        if any(tuple(item["loc"]) == ("body",) for item in found):
            # Not a JSON object at all: another content type (a form, text/plain), or an array or a string.
            return problem(
                400,
                "bad_request",
                "Bad request",
                "The request body must be a JSON object, sent as Content-Type: application/json.",
            )
        unknown = [item["field"] for item in errors if item["type"] == "extra_forbidden"]
        if unknown and len(unknown) == len(errors):
            return problem(
                422,
                "unknown_field",
                "Unknown field",
                f"Unknown field(s): {', '.join(unknown)}.",
                errors=errors,
            )
        detail = "; ".join(f"{item['field']}: {item['message']}" for item in errors)
        return problem(422, "validation_error", "Invalid request", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(error.status_code, "http_error")
        # The error's own headers stay: a 405 must say which methods are allowed (RFC 9110).
        return problem(
            error.status_code, code, code.replace("_", " ").capitalize(), str(error.detail), error.headers
        )

    async def on_database_unavailable(request: Request, error: Exception) -> JSONResponse:
        if isinstance(error, OperationalError) and not may_pass(error):
            raise error  # a retry would meet it again (a program limit exceeded): unexpected, as below
        log.error("database unavailable on %s %s: %s", request.method, request.url.path, error)
        return problem(
            503,
            "database_unavailable",
            "Service unavailable",
            "The service is briefly unavailable; please retry.",
            headers={"Retry-After": "1"},
        )

    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, on_database_unavailable)

    @app.exception_handler(InternalError)
    async def on_internal_database_error(request: Request, error: InternalError) -> JSONResponse:
        if refused_as_read_only(error):  # a failover under way: as unavailable as a lost connection
            return await on_database_unavailable(request, error)
        raise error  # unexpected: answered by api.app.RequestId, as below

    # An unexpected error is answered by api.app.RequestId, inside the request's context.
