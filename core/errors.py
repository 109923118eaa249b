"""Domain errors. Each has a stable `code` that API clients and job results can switch on.

The classes group the codes by kind of refusal; every raise names its code. `http_status` is the one
piece of HTTP here, on purpose: a failed job records it with its error (the worker writes the row, the
API answers `?wait=` from it), so the status a refusal gets is decided where the refusal is, once. A refusal that more than one
module raises is built by one function below, so it reads the same wherever it comes from.
"""

import uuid
from typing import Any


class DomainError(Exception):
    http_status = 422

    def __init__(self, message: str, *, code: str, **details: Any):
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled whole (Celery checks that a task's exception survives pickling): the default rebuilds an
        # exception from its message alone, and the code is a required keyword.
        return _rebuilt, (type(self), self.message, self.code, self.details)


def _rebuilt(cls: type[DomainError], message: str, code: str, details: dict[str, Any]) -> DomainError:
    return cls(message, code=code, **details)


class NotFound(DomainError):
    http_status = 404


class InvalidRequest(DomainError):
    http_status = 422


class Conflict(DomainError):
    http_status = 409


class SlotUnavailable(Conflict):
    """The requested time cannot be booked; `alternatives` holds the nearest free slots."""


class TenantNotAllowed(DomainError):
    http_status = 403


class LimitReached(DomainError):
    http_status = 409


class IllegalTransition(Conflict):
    pass


class Unauthorized(DomainError):
    http_status = 401


def start_without_offset() -> InvalidRequest:
    return InvalidRequest(
        "The start needs a UTC offset, e.g. 2027-03-30T10:00:00+02:00.",
        code="start_without_offset",
        field="start",
    )


def off_grid(local_clock: str, step_minutes: int) -> InvalidRequest:
    return InvalidRequest(
        f"Bookings start on a {step_minutes}-minute grid; {local_clock} is not on it.",
        code="off_grid",
        field="start",
    )


def resource_not_eligible(
    resource_id: uuid.UUID, service_name: str | None = None, field: str = "resource_ids"
) -> InvalidRequest:
    return InvalidRequest(
        f"Resource {resource_id} does not provide {service_name or 'this service'}.",
        code="resource_not_eligible",
        field=field,
    )


def several_interchangeable() -> InvalidRequest:
    """A choice of two or more interchangeable resources (two stylists for one haircut)."""
    return InvalidRequest(
        "Choose one of the staff (or rooms) who provide this service, not several: one of them serves the"
        " appointment.",
        code="resource_not_eligible",
        field="resource_ids",
    )


def inactive_service(name: str) -> InvalidRequest:
    return InvalidRequest(f"The service {name} is not bookable at the moment.", code="service_inactive")
