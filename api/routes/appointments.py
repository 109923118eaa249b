import uuid
from base64 import urlsafe_b64decode, urlsafe_b64encode
from datetime import date, datetime

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError

from api.deps import authenticated_tenant, known_query_parameters
from api.errors import documented_errors
from api.schemas import AppointmentOut, AppointmentsOut, AppointmentStatus
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
def get_appointment(appointment_id: uuid.UUID, tenant_id: uuid.UUID = Depends(authenticated_tenant)) -> dict:
    with UnitOfWork(tenant_id) as uow:
        return booking.get_appointment(uow, appointment_id).as_dict()


@router.get(
    "/appointments",
    response_model=AppointmentsOut,
    responses=documented_errors(401, 422, 503),
    summary="The business's appointments between two local dates, or the one with a booking reference",
)
def find_appointments(
    request: Request,
    reference: str | None = Query(
        None,
        min_length=1,
        max_length=50,
        description="As the client reads it out: any case; spaces, dashes and other separators ignored."
        " Without it, `from` and `to` are required",
    ),
    date_from: date | None = Query(None, alias="from", description="First local date, included"),
    date_to: date | None = Query(
        None,
        alias="to",
        description="Last local date, included (62 days at most, unless the operator set otherwise)",
    ),
    status: list[AppointmentStatus] = Query(
        [], description="Only appointments in these statuses (repeat it for several); every status without it"
    ),
    limit: int = Query(50, ge=1, le=PAGE_LIMIT, description="At most this many in one answer"),
    after: str | None = Query(None, description="Where to go on from: as `links.next` gives it"),
    tenant_id: uuid.UUID = Depends(authenticated_tenant),
) -> dict:
    if reference is not None:
        with UnitOfWork(tenant_id) as uow:
            found = booking.find_by_reference(uow, reference)
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
    with UnitOfWork(tenant_id) as uow:
        page = booking.list_appointments(
            uow, date_from, date_to, statuses=frozenset(status), after=position, limit=limit
        )
    links = {}
    if page.next_after is not None:
        following = request.url.include_query_params(after=_cursor(*page.next_after))
        links["next"] = f"{following.path}?{following.query}"
    return {"appointments": [found.as_dict() for found in page.appointments], "links": links}


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
