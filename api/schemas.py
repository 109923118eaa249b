"""Request and response bodies. Requests forbid unknown fields so a typo is an error, not a silent no-op."""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

_ISO_DATE_PREFIX = re.compile(r"\d{4}-\d{2}-\d{2}")


def _written_in_iso_8601(value: Any) -> Any:
    # Pydantic would also read a number, or a string of digits, as seconds since 1970: an instant the
    # caller never wrote, and a "local date" that is a UTC one.
    if not isinstance(value, str) or not _ISO_DATE_PREFIX.match(value):
        raise ValueError("must be written in ISO 8601: 2027-03-30T10:00:00+02:00, or 2027-03-30 for a date")
    return value


IsoDate = Annotated[date, BeforeValidator(_written_in_iso_8601)]
IsoDateTime = Annotated[AwareDatetime, BeforeValidator(_written_in_iso_8601)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _no_nul_characters(cls, value: Any) -> Any:
        # PostgreSQL text cannot hold NUL: refuse it here rather than fail on the insert.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain the NUL character")
        return value


class ClientIn(Strict):
    # A phone or an email is needed to confirm the booking (else 422 contact_required): say so in the schema.
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}
    )

    # No minimum here: an empty name is answered by the core, as one of blanks is (invalid_name).
    first_name: str = Field(max_length=100)
    last_name: str | None = Field(None, max_length=100)
    phone: str | None = Field(None, max_length=32, description="Any common format; stored in E.164.")
    email: str | None = Field(None, max_length=255)


class BookingIn(Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "service_id": "5b1f7a2e-0c39-4f0e-9a57-3f1d2c4b5a60",
                    "start": "2027-03-30T10:00:00+02:00",
                    "client": {"first_name": "Lucía", "last_name": "Martín", "phone": "+34 612 345 679"},
                    "notes": "First visit",
                }
            ]
        },
    )
    service_id: uuid.UUID
    start: IsoDateTime = Field(description="ISO 8601 with offset, on the slot grid")
    client: ClientIn
    resource_ids: list[uuid.UUID] | None = Field(
        None, max_length=10, description="Preferred resources (a stylist)"
    )
    notes: str | None = Field(None, max_length=2000)


class RescheduleIn(Strict):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"start": "2027-03-31T11:00:00+02:00"}]}
    )
    start: IsoDateTime
    resource_ids: list[uuid.UUID] | None = Field(None, max_length=10)


class CancelIn(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "Client is ill"}]})
    reason: str | None = Field(None, max_length=1000)


AppointmentStatus = Literal[
    "scheduled", "confirmed", "in_progress", "completed", "cancelled", "no_show", "rescheduled"
]


class SlotOut(BaseModel):
    start: datetime
    end: datetime
    resource_ids: list[uuid.UUID]


class AvailabilityOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "timezone": "Europe/Madrid",
                    "service_id": "5b1f7a2e-0c39-4f0e-9a57-3f1d2c4b5a60",
                    "slots": [
                        {
                            "start": "2027-03-30T10:00:00+02:00",
                            "end": "2027-03-30T10:45:00+02:00",
                            "resource_ids": ["a4a3f0d1-7f43-4a6e-8f5e-0b8a0c3e9d11"],
                        }
                    ],
                }
            ]
        }
    )
    timezone: str
    service_id: uuid.UUID
    slots: list[SlotOut]


class BookedOut(BaseModel):
    """An appointment as a job leaves it (`result` of a succeeded job): times in the business's zone."""

    appointment_id: uuid.UUID
    booking_reference: str | None = Field(
        description="null for an appointment recorded without one (an import)"
    )
    status: AppointmentStatus
    start: datetime
    end: datetime
    resource_ids: list[uuid.UUID]


class JobErrorOut(BaseModel):
    """Why a job failed: a stable `code` (docs/api.md lists them), a message a person can read, and what
    goes with some codes (`alternatives` with slot_taken and the other refusals of a time, `field`)."""

    # Extra members as the refusal has them, and only then (no null `alternatives` where none belong).
    model_config = ConfigDict(extra="allow")
    code: str
    message: str


class JobOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": "0d6c3b1e-6f0a-4c47-9e1d-3c2b1a0f9e8d",
                    "kind": "booking",
                    "status": "failed",
                    "created_at": "2027-03-29T08:12:31.204518Z",
                    "finished_at": "2027-03-29T08:12:31.391240Z",
                    "links": {"self": "/v1/jobs/0d6c3b1e-6f0a-4c47-9e1d-3c2b1a0f9e8d"},
                    "error": {
                        "code": "slot_taken",
                        "message": "That time was just taken.",
                        "alternatives": [
                            {
                                "start": "2027-03-30T10:15:00+02:00",
                                "end": "2027-03-30T11:00:00+02:00",
                                "resource_ids": [],
                            }
                        ],
                    },
                }
            ]
        }
    )
    job_id: uuid.UUID
    kind: Literal["booking", "reschedule", "cancel", "vapi_booking"]
    status: Literal["queued", "running", "succeeded", "failed"]
    created_at: datetime = Field(description="UTC, when the request was accepted")
    finished_at: datetime | None = Field(None, description="UTC, when the job ended")
    links: dict[str, str] = Field(
        description="`self`: this job; `appointment`: the appointment, once the job has one"
    )
    result: BookedOut | None = None
    error: JobErrorOut | None = None


class AppointmentServiceOut(BaseModel):
    service_id: uuid.UUID
    name: str
    duration_minutes: int


class AppointmentClientOut(BaseModel):
    client_id: uuid.UUID
    first_name: str
    last_name: str | None
    phone: str | None = Field(description="E.164")
    email: str | None


class AppointmentResourceOut(BaseModel):
    resource_id: uuid.UUID
    name: str
    type: str


class AppointmentOut(BookedOut):
    """An appointment with its client, service and the resources that serve it, times in `timezone`."""

    timezone: str
    service: AppointmentServiceOut
    client: AppointmentClientOut
    resources: list[AppointmentResourceOut]
    quoted_price: str | None = Field(description="A decimal, in `currency`")
    currency: str | None
    booking_method: str | None
    client_notes: str | None
    cancellation_reason: str | None


class BusinessOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "Bella Hair Salon",
                    "business_type": "salon",
                    "phone": "+34912345678",
                    "email": "info@bellahair.com",
                    "website_url": "https://bellahair.example",
                    "address": "Calle Gran Vía 1, 28013 Madrid",
                    "timezone": "Europe/Madrid",
                    "locale": "es",
                    "currency": "EUR",
                    "slot_step_minutes": 15,
                }
            ]
        }
    )
    name: str
    business_type: str
    phone: str | None
    email: str | None
    website_url: str | None
    address: str | None = Field(
        description="One line: street, postal code and city, as far as they are known"
    )
    timezone: str = Field(description="IANA name; every local date and time of this API is on this clock")
    locale: str = Field(description="The language clients are written to in, unless they chose their own")
    currency: str
    slot_step_minutes: int = Field(description="Appointments start on this grid, counted from local midnight")


class AppointmentsOut(BaseModel):
    appointments: list[AppointmentOut] = Field(description="By start time")
    links: dict[str, str] = Field(
        default_factory=dict,
        description="`next`: the following appointments, where there are more than `limit`",
    )


class ServiceResourceOut(BaseModel):
    resource_id: uuid.UUID
    name: str
    type: str
    choosable: bool = Field(
        description="One of the staff (or rooms) a client may ask for in `resource_ids`; false: every appointment"
        " needs it (the chair)"
    )


class ServiceOut(BaseModel):
    service_id: uuid.UUID
    name: str
    description: str | None
    category: str | None
    duration_minutes: int
    price: str | None
    currency: str | None
    resource_ids: list[uuid.UUID] = Field(description="The ids of `resources`")
    resources: list[ServiceResourceOut]
    min_advance_booking_hours: int = Field(description="A booking starts at least this long after it is made")
    max_advance_booking_days: int | None = Field(description="…and at most this far ahead (null: no limit)")
    requires_confirmation: bool = Field(description="The business confirms each booking (status scheduled)")
    allows_cancellation: bool = Field(description="Clients may cancel and move appointments online")
    cancellation_policy_hours: int = Field(description="…up to this many hours before the start")


class ServicesOut(BaseModel):
    services: list[ServiceOut]


class FieldProblem(BaseModel):
    field: str
    message: str
    type: str


class Problem(BaseModel):
    """application/problem+json (RFC 9457) with a stable `code` to switch on."""

    type: str
    title: str
    status: int
    code: str
    detail: str
    errors: list[FieldProblem] | None = Field(
        None, description="With validation errors: each field's problem."
    )
    field: str | None = Field(
        None, description="With a refusal of one field's value (off_grid, invalid_phone...)."
    )
    alternatives: list[SlotOut] | None = Field(None, description="With slot_taken: the nearest free slots.")
    job_id: uuid.UUID | None = Field(None, description="With ?wait=: the job that failed.")
    checks: dict[str, str] | None = Field(
        None, description='With not_ready (GET /ready): each dependency, "ok" or "unavailable".'
    )
