"""Every model, importable from one place (and registered on Base.metadata for Alembic)."""

from core.models.audit import AuditLog, BusinessMetric
from core.models.auth import ApiKey, LoginAttempt, User, UserSession
from core.models.base import Base
from core.models.billing import Payment, Subscription, SubscriptionPlan
from core.models.intake import IntakeJob
from core.models.notifications import Notification, NotificationTemplate
from core.models.scheduling import (
    NOT_COUNTED_STATUSES,
    Appointment,
    AppointmentResource,
    Client,
    Resource,
    ResourceBlock,
    ResourceSchedule,
    Service,
    ServiceResource,
)
from core.models.tenancy import Tenant, TenantUser
from core.models.vapi import VapiCallLog, VapiConfiguration

__all__ = [
    "NOT_COUNTED_STATUSES",
    "ApiKey",
    "Appointment",
    "AppointmentResource",
    "AuditLog",
    "Base",
    "BusinessMetric",
    "Client",
    "IntakeJob",
    "LoginAttempt",
    "Notification",
    "NotificationTemplate",
    "Payment",
    "Resource",
    "ResourceBlock",
    "ResourceSchedule",
    "Service",
    "ServiceResource",
    "Subscription",
    "SubscriptionPlan",
    "Tenant",
    "TenantUser",
    "User",
    "UserSession",
    "VapiCallLog",
    "VapiConfiguration",
]
