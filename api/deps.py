"""Request-scoped dependencies: the caller's tenant (from the API key) and the clock."""

from __future__ import annotations

import uuid

from fastapi import Header
from fastapi.concurrency import run_in_threadpool

from core import auth
from core import logging as app_logging
from core.clock import utcnow
from core.db import UnitOfWork


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
        presented = value.strip() if scheme.lower() == "bearer" else None
        if presented is None:
            presented = "invalid"
    # System mode: the key is what tells whose request this is; every later unit of work is the tenant's.
    with UnitOfWork(system=True) as uow:
        tenant_id = auth.tenant_for_api_key(uow, presented, utcnow())
        uow.commit()
    return tenant_id
