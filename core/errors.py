"""Domain errors. Each has a stable `code` that API clients and job results can switch on."""

from typing import Any


class DomainError(Exception):
    code = "domain_error"
    http_status = 422

    def __init__(self, message: str, *, code: str | None = None, **details: Any):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class NotFound(DomainError):
    code = "not_found"
    http_status = 404


class InvalidRequest(DomainError):
    code = "invalid_request"
    http_status = 422


class Conflict(DomainError):
    code = "conflict"
    http_status = 409


class SlotUnavailable(Conflict):
    """The requested time cannot be booked; `alternatives` holds the nearest free slots."""

    code = "slot_taken"


class TenantNotAllowed(DomainError):
    code = "tenant_inactive"
    http_status = 403


class LimitReached(DomainError):
    code = "plan_limit_reached"
    http_status = 409


class IllegalTransition(Conflict):
    code = "illegal_status_change"


class Unauthorized(DomainError):
    code = "unauthorized"
    http_status = 401
