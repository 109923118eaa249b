import uuid

from fastapi import APIRouter, Depends

from api.deps import authenticated_tenant, known_query_parameters
from api.errors import documented_errors
from api.schemas import AppointmentOut
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
