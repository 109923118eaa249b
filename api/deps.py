"""Request-scoped dependencies: the caller's tenant (from the API key) and the query's names."""

from __future__ import annotations

import uuid

from fastapi import Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from core import auth
from core import logging as app_logging
from core.clock import utcnow
from core.db import UnitOfWork
from core.errors import Unauthorized


async def authenticated_tenant(
    authorization: str | None = Header(None, include_in_schema=False),
) -> uuid.UUID:
    """The tenant whose API key is presented as `Authorization: Bearer va_live_...`; every log line of
    the request carries it from here on (bound in the request's own context, not a worker thread's)."""
    tenant_id = await run_in_threadpool(_tenant_for, authorization)
    app_logging.bind(tenant_id=str(tenant_id))
    return tenant_id


def _tenant_for(authorization: str | None) -> uuid.UUID:
    presented = None
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer":  # Basic, a bare key: nothing we could take as a key
            raise Unauthorized(
                "The API key is not valid: send it as 'Authorization: Bearer va_live_...'.",
                code="invalid_api_key",
            )
        presented = value.strip()
    # System mode: the key is what tells whose request this is; every later unit of work is the tenant's.
    with UnitOfWork(system=True) as uow:
        try:
            tenant_id = auth.tenant_for_api_key(uow, presented, utcnow())
        except Unauthorized:
            # A refused key wrote nothing: a COMMIT all the same, which keeps the connection's prepared
            # statements (see UnitOfWork.__exit__).
            uow.commit()
            raise
        uow.commit()
    return tenant_id


async def known_query_parameters(request: Request) -> None:
    """A query parameter the operation does not take is refused (422 unknown_field), as an unknown body field
    is: a typo (`?wiat=10`, `?resource=…`) must not be ignored silently. A dependency of the /v1 routers; not
    of the probes, to which a monitor may add a cache-buster. (Async, as every dependency without I/O: FastAPI
    runs a plain `def` one on the thread pool, another turn in its queue for each request.)"""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    taken = _query_names(route.dependant)
    unknown = [name for name in request.query_params if name not in taken]
    if unknown:
        raise RequestValidationError(
            [
                {"type": "extra_forbidden", "loc": ("query", name), "msg": "Extra inputs are not permitted"}
                for name in unknown
            ]
        )


def _query_names(dependant: Dependant) -> set[str]:
    names = {parameter.alias for parameter in dependant.query_params}
    for sub_dependant in dependant.dependencies:
        names |= _query_names(sub_dependant)
    return names
