"""The intake API: validates, authenticates, records and enqueues. Booking itself happens in the workers."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator

from anyio import to_thread
from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors, limits
from api.routes import appointments, catalog, health, jobs
from api.waiting import JobWaiter
from core import logging as app_logging
from core.config import get_settings
from workers.celery_app import app as celery_app
from workers.celery_app import bound_waits_for_sending

log = logging.getLogger("api.errors")  # the logger operators know the API's errors by

MAX_BODY_BYTES = 64 * 1024
# A caller's request id is echoed into headers and logs: only a plain token is taken, cut to 64 characters.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]+")
REQUEST_ID_LENGTH = 64

DESCRIPTION = """
Book appointments for a VoiceAppoint business.

Authenticate with the business's API key: `Authorization: Bearer va_live_...`.
Bookings are accepted as jobs (`202`) and processed by workers; poll `GET /v1/jobs/{id}` or pass `?wait=10`.
Errors are `application/problem+json` with a stable `code`.
"""


class BodySizeLimit:
    """Rejects a body over the limit with 413, whether or not the client announced its length."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._reject(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # An HTTPException passes through FastAPI's body parsing (anything else becomes a 400).
                    raise HTTPException(413, f"Request bodies are limited to {self.limit // 1024} KiB.")
            return message

        await self.app(scope, limited_receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = errors.problem(
            413,
            "payload_too_large",
            "Payload too large",
            f"Request bodies are limited to {self.limit // 1024} KiB.",
        )
        await response(scope, receive, send)


class NoStore:
    """Marks every response `Cache-Control: no-store`: answers carry clients' names and phones and depend on
    the API key, so no browser, proxy or CDN may keep one and hand it to the next caller."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"cache-control", b"no-store"))
            await send(message)

        await self.app(scope, receive, send_no_store)


class RequestId:
    """Gives every request an id (the caller's X-Request-ID, or a new one), echoed back and logged.

    It also answers an unexpected error (500 `internal_error`), here rather than in an exception handler:
    FastAPI runs those outside every middleware, where the 500 would lose its id and its log line the
    request's context.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        if REQUEST_ID_PATTERN.fullmatch(offered):
            request_id = offered[:REQUEST_ID_LENGTH]
        else:
            request_id = uuid.uuid4().hex
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        with app_logging.bound(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                log.exception("unhandled error on %s %s", scope["method"], scope["path"])
                if response_started:
                    raise
                response = errors.problem(
                    500, "internal_error", "Internal error", "Something went wrong on our side; please retry."
                )
                await response(scope, receive, send_with_id)


class LoadShedding:
    """Answers 503 with `Retry-After` while too many requests already wait for a worker thread.

    Without a cap they queue without limit: each waits behind all the others and is served long after
    its caller gave up, so a burst slows every request down for good. Refused at once, nothing is recorded
    and the caller's retry (with the same Idempotency-Key) is safe. /health and /ready never wait for a
    thread and are always answered.
    """

    def __init__(self, app: ASGIApp, max_queued: int):
        self.app = app
        self.max_queued = max_queued
        self.in_flight = 0
        self.receiving = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ("/health", "/ready"):
            await self.app(scope, receive, send)
            return
        # Counted here as well as read off the thread limiter: a burst's requests all pass this check before
        # any of them reaches the limiter, whose count of waiting tasks then stays low while thousands are let
        # in. Requests that hold a thread, or are held by ?wait= (no thread), are not waiting for one.
        threads = to_thread.current_default_thread_limiter()
        held = scope["app"].state.job_waiter.waiting
        ahead = self.in_flight - threads.borrowed_tokens - held - self.receiving
        queued = max(threads.statistics().tasks_waiting, ahead)
        if queued >= self.max_queued:
            detail = "Too many requests are waiting; please retry in a moment."
            await _retry_in_a_second(scope, receive, send, 503, "overloaded", "Service overloaded", detail)
            return

        async def counted_receive() -> Message:
            # Waiting for the client's bytes (a slow or stalled upload) is not waiting for a thread.
            self.receiving += 1
            try:
                return await receive()
            finally:
                self.receiving -= 1

        self.in_flight += 1
        try:
            await self.app(scope, counted_receive, send)
        finally:
            self.in_flight -= 1


async def _retry_in_a_second(
    scope: Scope, receive: Receive, send: Send, status: int, code: str, title: str, detail: str
) -> None:
    """A refusal given at once, before any work: nothing is recorded, so the caller's retry is safe."""
    response = errors.problem(status, code, title, detail, headers={"Retry-After": "1"})
    await response(scope, receive, send)


class FairShare:
    """Answers 429 `too_many_requests` (with `Retry-After`) to an API key that already has `max_per_key`
    requests in this process, so that one business's flood waits behind itself rather than in front of
    every other business. Keyed by the key as presented, before any database work; a request without a
    key goes on, to be refused by the authentication, and /health and /ready are never refused."""

    def __init__(self, app: ASGIApp, max_per_key: int):
        self.app = app
        self.max_per_key = max_per_key
        self.in_flight: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ("/health", "/ready"):
            await self.app(scope, receive, send)
            return
        # Read as api.deps reads it (the scheme in any case), or a `bearer` key would escape its share.
        scheme, _, presented = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            await self.app(scope, receive, send)
            return
        # The whole key, not its prefix: the prefix is no secret, and anyone sending it with a wrong secret
        # would take the business's share. Hashed, so that no key is kept here.
        key = hashlib.sha256(presented.strip().encode()).hexdigest()
        if self.in_flight.get(key, 0) >= self.max_per_key:
            detail = "This API key already has too many requests in progress; please retry in a moment."
            await _retry_in_a_second(
                scope, receive, send, 429, "too_many_requests", "Too many requests", detail
            )
            return
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[key] -= 1
            if not self.in_flight[key]:
                del self.in_flight[key]


class ArrivalTime:
    """Notes when a request arrived (`request.state.arrived`, monotonic): a `?wait=` counts from there."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["arrived"] = time.monotonic()
        await self.app(scope, receive, send)


def _with_api_key_auth(spec: dict) -> dict:
    """Declares the API key in the OpenAPI document (so /docs and generated clients send it). The key is
    read from the header by api.deps, which also tells a missing key from a wrong scheme."""
    spec.setdefault("components", {}).setdefault("securitySchemes", {})["apiKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "The business's API key: `Authorization: Bearer va_live_...`",
    }
    for path, operations in spec.get("paths", {}).items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                operation["security"] = [{"apiKey": []}]
    return spec


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await app.state.submission_counter.aclose()


def create_app() -> FastAPI:
    settings = get_settings()
    app_logging.configure(settings.log_level, json=settings.is_production)
    # No redirect from /v1/bookings/ to /v1/bookings: a mistyped path is a 404 problem like any other, not a
    # 307 to an address built from the Host header (http:// behind a TLS proxy) that resends the body.
    app = FastAPI(
        title="VoiceAppoint intake API",
        version="1.0.0",
        description=DESCRIPTION,
        redirect_slashes=False,
        lifespan=_lifespan,
    )
    errors.install(app)
    for module in (health, catalog, jobs, appointments):
        app.include_router(module.router)
    build_openapi = app.openapi
    app.openapi = lambda: _with_api_key_auth(errors.problem_media_type(build_openapi()))  # type: ignore[method-assign]
    bound_waits_for_sending(celery_app)
    app.state.job_waiter = JobWaiter(settings.booking_wait_poll_seconds, settings.booking_wait_max_requests)
    app.state.submission_counter = limits.submission_counter()
    app.add_middleware(BodySizeLimit)
    app.add_middleware(LoadShedding, max_queued=settings.api_max_queued_requests)
    # Outside the shedding: a key over its share is refused before it counts against everyone's queue.
    app.add_middleware(FairShare, max_per_key=settings.api_max_requests_per_key)
    app.add_middleware(RequestId)
    app.add_middleware(NoStore)
    app.add_middleware(ArrivalTime)  # the outermost: it sees the request first
    # The application's long-lived objects leave the collector's generations: collections during
    # requests then walk only what requests allocate (see bench/availability.py).
    gc.freeze()
    return app
