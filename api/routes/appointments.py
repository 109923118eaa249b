import uuid

from fastapi import APIRouter, Depends

from api.deps import authenticated_tenant
from api.schemas import Problem
from core import booking
from core.db import UnitOfWork

router = APIRouter(prefix="/v1", tags=["appointments"])


@router.get(
    "/appointments/{appointment_id}",
    responses={401: {"model": Problem}, 404: {"model": Problem}},
    summary="An appointment with its client, service, resources, status and times",
)
def get_appointment(appointment_id: uuid.UUID, tenant_id: uuid.UUID = Depends(authenticated_tenant)) -> dict:
    with UnitOfWork(tenant_id) as uow:
        return booking.get_appointment(uow, appointment_id).as_dict()
