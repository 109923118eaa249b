"""What a business offers, as its clients see it."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass
from decimal import Decimal

from sqlalchemy import select

from core import availability
from core.db import UnitOfWork
from core.models import Resource, Service, ServiceResource, Tenant


@dataclass(frozen=True)
class BusinessProfile:
    """What an app or the voice assistant needs to speak for the business: who it is, how to reach it, and
    the clock and grid its times are given on."""

    name: str
    business_type: str
    phone: str | None
    email: str | None
    website_url: str | None
    address: str | None
    timezone: str
    locale: str
    currency: str
    slot_step_minutes: int

    def as_dict(self) -> dict:
        return asdict(self)


def business_profile(uow: UnitOfWork) -> BusinessProfile:
    tenant = uow.get(Tenant, uow.tenant_id, code="tenant_not_found", what="Business")
    lines = [
        tenant.address_line1,
        tenant.address_line2,
        " ".join(filter(None, [tenant.postal_code, tenant.city])),
    ]
    return BusinessProfile(
        name=tenant.name,
        business_type=tenant.business_type,
        phone=tenant.phone,
        email=tenant.email,
        website_url=tenant.website_url,
        address=", ".join(line for line in lines if line) or None,
        timezone=tenant.timezone,
        locale=tenant.locale,
        currency=tenant.currency,
        slot_step_minutes=availability.slot_step_minutes(tenant.settings),
    )


@dataclass(frozen=True)
class ResourceSummary:
    resource_id: uuid.UUID
    name: str
    type: str
    choosable: bool  # one of the interchangeable ones (a stylist) a client may ask for; else every
    # appointment needs it (the chair)


@dataclass(frozen=True)
class ServiceSummary:
    service_id: uuid.UUID
    name: str
    description: str | None
    category: str | None
    duration_minutes: int
    price: Decimal | None
    currency: str | None
    resources: tuple[ResourceSummary, ...]
    # The rules a booking meets, so that a client is told them before, not by a refusal.
    min_advance_booking_hours: int
    max_advance_booking_days: int | None
    requires_confirmation: bool
    allows_cancellation: bool  # online, by the client: cancelling and moving alike
    cancellation_policy_hours: int

    def as_dict(self) -> dict:
        return {
            "service_id": str(self.service_id),
            "name": self.name,
            "description": self.description,
            "category": self.category,
            "duration_minutes": self.duration_minutes,
            "price": str(self.price) if self.price is not None else None,
            "currency": self.currency,
            "resource_ids": [str(r.resource_id) for r in self.resources],
            "resources": [
                {"resource_id": str(r.resource_id), "name": r.name, "type": r.type, "choosable": r.choosable}
                for r in self.resources
            ],
            "min_advance_booking_hours": self.min_advance_booking_hours,
            "max_advance_booking_days": self.max_advance_booking_days,
            "requires_confirmation": self.requires_confirmation,
            "allows_cancellation": self.allows_cancellation,
            "cancellation_policy_hours": self.cancellation_policy_hours,
        }


def list_services(uow: UnitOfWork) -> list[ServiceSummary]:
    services = uow.session.scalars(
        select(Service)
        .where(Service.tenant_id == uow.tenant_id, Service.is_active.is_(True), Service.deleted_at.is_(None))
        .order_by(Service.sort_order, Service.name)
    ).all()
    resources_by_service: dict[uuid.UUID, list[ResourceSummary]] = defaultdict(list)
    links = uow.session.execute(
        select(
            ServiceResource.service_id,
            ServiceResource.resource_id,
            Resource.name,
            Resource.type,
            ServiceResource.is_required,
        )
        .join(Resource, Resource.id == ServiceResource.resource_id)
        .where(
            ServiceResource.service_id.in_([s.id for s in services]),
            Resource.is_active.is_(True),
            Resource.deleted_at.is_(None),
        )
        .order_by(ServiceResource.preference_order, Resource.id)
    ).all()
    for service_id, resource_id, name, kind, is_required in links:
        resources_by_service[service_id].append(
            ResourceSummary(resource_id, name, kind, choosable=is_required is False)
        )
    return [
        ServiceSummary(
            service_id=s.id,
            name=s.name,
            description=s.description,
            category=s.category,
            duration_minutes=s.duration_minutes,
            price=s.base_price,
            currency=s.price_currency,
            resources=tuple(resources_by_service[s.id]),
            min_advance_booking_hours=s.min_advance_booking_hours or 0,
            max_advance_booking_days=s.max_advance_booking_days,
            requires_confirmation=bool(s.requires_confirmation),
            allows_cancellation=bool(s.allows_cancellation),
            cancellation_policy_hours=s.cancellation_policy_hours or 0,
        )
        for s in services
    ]
