import uuid
from datetime import date
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from api.deps import authenticated_tenant, known_query_parameters
from api.errors import documented_errors
from api.schemas import AvailabilityOut, BusinessOut, IsoDate, ServicesOut
from core import availability, catalog
from core.clock import utcnow
from core.db import UnitOfWork

router = APIRouter(prefix="/v1", tags=["catalog"], dependencies=[Depends(known_query_parameters)])


@router.get(
    "/business",
    response_model=BusinessOut,
    responses=documented_errors(401, 422, 503),
    summary="The business this API key belongs to: its contacts, clock and booking grid",
)
async def get_business(tenant_id: uuid.UUID = Depends(authenticated_tenant)) -> dict:
    return await run_in_threadpool(_business, tenant_id)


def _business(tenant_id: uuid.UUID) -> dict:
    with UnitOfWork(tenant_id, read_only=True) as uow:
        return catalog.business_profile(uow).as_dict()


@router.get(
    "/services",
    response_model=ServicesOut,
    responses=documented_errors(401, 503),
    summary="The business's bookable services",
)
async def list_services(tenant_id: uuid.UUID = Depends(authenticated_tenant)) -> dict:
    return await run_in_threadpool(_services, tenant_id)


def _services(tenant_id: uuid.UUID) -> dict:
    with UnitOfWork(tenant_id, read_only=True) as uow:
        return {"services": [service.as_dict() for service in catalog.list_services(uow)]}


@router.get(
    "/availability",
    response_model=AvailabilityOut,
    responses=documented_errors(401, 403, 404, 422, 503),
    summary="Free slots of a service between two local dates",
)
async def get_availability(
    service_id: uuid.UUID,
    date_from: Annotated[IsoDate, Query(alias="from", description="First local date, included")],
    date_to: Annotated[IsoDate, Query(alias="to", description="Last local date, included")],
    resource_id: uuid.UUID | None = None,
    tenant_id: uuid.UUID = Depends(authenticated_tenant),
) -> dict:
    return await run_in_threadpool(_availability, tenant_id, service_id, date_from, date_to, resource_id)


def _availability(
    tenant_id: uuid.UUID, service_id: uuid.UUID, date_from: date, date_to: date, resource_id: uuid.UUID | None
) -> dict:
    now = utcnow()
    with UnitOfWork(tenant_id, read_only=True) as uow:
        window = availability.read_window(uow, service_id, date_from, date_to, now, resource_id)
    # Planned after the connection is back in the pool: other requests need it more than this one does.
    found = availability.plan_window(window, now)
    zone = ZoneInfo(found.timezone)
    return {
        "timezone": found.timezone,
        "service_id": found.service_id,
        "slots": [slot.as_dict(zone) for slot in found.slots],
    }
