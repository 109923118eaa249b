import uuid

from fastapi import APIRouter, Depends, Query

from api.deps import authenticated_tenant, known_query_parameters
from api.errors import documented_errors
from api.schemas import AppointmentOut, AppointmentsOut
from core import booking
from core.db import UnitOfWork

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
    summary="Find an appointment by the booking reference the client was given",
)
def find_appointments(
    reference: str = Query(
        min_length=1,
        max_length=50,
        description="As the client reads it out: any case; spaces, dashes and other separators ignored",
    ),
    tenant_id: uuid.UUID = Depends(authenticated_tenant),
) -> dict:
    with UnitOfWork(tenant_id) as uow:
        return {"appointments": [found.as_dict() for found in booking.find_by_reference(uow, reference)]}
