import uuid
from base64 import urlsafe_b64decode, urlsafe_b64encode
from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from api.deps import authenticated_tenant, known_query_parameters
from api.errors import documented_errors
from api.schemas import AppointmentOut, AppointmentsOut, AppointmentStatus, IsoDate
from core import booking
from core.db import UnitOfWork

PAGE_LIMIT = 100

router = APIRouter(prefix="/v1", tags=["appointments"], dependencies=[Depends(known_query_parameters)])


@router.get(
    "/appointments/{appointment_id}",
    response_model=AppointmentOut,
    responses=documented_errors(401, 404, 422, 503),
    summary="An appointment with its client, service, resources, status and times",
)
async def get_appointment(
    appointment_id: uuid.UUID, tenant_id: uuid.UUID = Depends(authenticated_tenant)
) -> dict:
    return (await run_in_threadpool(_appointment, tenant_id, appointment_id)).as_dict()


def _appointment(tenant_id: uuid.UUID, appointment_id: uuid.UUID) -> booking.AppointmentView:
    with UnitOfWork(tenant_id, read_only=True) as uow:
        return booking.get_appointment(uow, appointment_id)


@router.get(
    "/appointments",
    response_model=AppointmentsOut,
    responses=documented_errors(401, 422, 503),
    summary="The business's appointments between two local dates, or the one with a booking reference",
)
async def find_appointments(
    request: Request,
    reference: str | None = Query(
        None,
        min_length=1,
        max_length=50,
        description="As the client reads it out: any case; spaces, dashes and other separators ignored."
        " Without it, `from` and `to` are required",
    ),
    date_from: Annotated[
        IsoDate | None, Query(alias="from", description="First local date, included")
    ] = None,
    date_to: Annotated[
        IsoDate | None,
        Query(
            alias="to",
            description="Last local date, included (62 days at most, unless the operator set otherwise)",
        ),
    ] = None,
    status: list[AppointmentStatus] = Query(
        [], description="Only appointments in these statuses (repeat it for several); every status without it"
    ),
    limit: int = Query(50, ge=1, le=PAGE_LIMIT, description="At most this many in one answer"),
    after: str | None = Query(None, description="Where to go on from: as `links.next` gives it"),
    tenant_id: uuid.UUID = Depends(authenticated_tenant),
) -> dict:
    if reference is not None:
        # A look-up by reference is one appointment, whatever its date or status: a filter sent with it would
        # be ignored, and an ignored parameter is refused, as an unknown one is.
        ignored = [name for name, value in (("from", date_from), ("to", date_to), ("after", after)) if value]
        ignored += ["status"] if status else []
        if ignored:
            raise RequestValidationError(
                [
                    {"type": "value_error", "loc": ("query", name), "msg": "Not taken with `reference`"}
                    for name in ignored
                ]
            )
        found = await run_in_threadpool(_by_reference, tenant_id, reference)
        return {"appointments": [appointment.as_dict() for appointment in found], "links": {}}
    missing = [name for name, value in (("from", date_from), ("to", date_to)) if value is None]
    if missing:
        raise RequestValidationError(
            [
                {"type": "missing", "loc": ("query", name), "msg": "Required without `reference`"}
                for name in missing
            ]
        )
    # Checked before a transaction is opened for it.
    position = _read_cursor(after)
    page = await run_in_threadpool(_page, tenant_id, date_from, date_to, frozenset(status), position, limit)
    links = {}
    if page.next_after is not None:
        following = request.url.include_query_params(after=_cursor(*page.next_after))
        links["next"] = f"{following.path}?{following.query}"
    return {"appointments": [found.as_dict() for found in page.appointments], "links": links}


def _by_reference(tenant_id: uuid.UUID, reference: str) -> list[booking.AppointmentView]:
    with UnitOfWork(tenant_id, read_only=True) as uow:
        return booking.find_by_reference(uow, reference)


def _page(
    tenant_id: uuid.UUID,
    date_from: date,
    date_to: date,
    statuses: frozenset[str],
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> booking.AppointmentPage:
    with UnitOfWork(tenant_id, read_only=True) as uow:
        return booking.list_appointments(uow, date_from, date_to, statuses=statuses, after=after, limit=limit)


def _cursor(start: datetime, appointment_id: uuid.UUID) -> str:
    return urlsafe_b64encode(f"{start.isoformat()}|{appointment_id}".encode()).decode()


def _read_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    if cursor is None:
        return None
    try:
        start, appointment_id = urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(start), uuid.UUID(appointment_id)
    except ValueError:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("query", "after"), "msg": "Not a value `links.next` gave"}]
        ) from None
