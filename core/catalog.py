"""What a business offers, as its clients see it."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import select

from core.db import UnitOfWork
from core.models import Resource, Service, ServiceResource


@dataclass(frozen=True)
class ServiceSummary:
    service_id: uuid.UUID
    name: str
    description: str | None
    category: str | None
    duration_minutes: int
    price: Decimal | None
    currency: str | None
    resource_ids: tuple[uuid.UUID, ...]

    def as_dict(self) -> dict:
        return {
            "service_id": str(self.service_id),
            "name": self.name,
            "description": self.description,
            "category": self.category,
            "duration_minutes": self.duration_minutes,
            "price": str(self.price) if self.price is not None else None,
            "currency": self.currency,
            "resource_ids": [str(r) for r in self.resource_ids],
        }


def list_services(uow: UnitOfWork) -> list[ServiceSummary]:
    services = uow.session.scalars(
        select(Service)
        .where(Service.tenant_id == uow.tenant_id, Service.is_active.is_(True), Service.deleted_at.is_(None))
        .order_by(Service.sort_order, Service.name)
    ).all()
    resources_by_service: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    links = uow.session.execute(
        select(ServiceResource.service_id, ServiceResource.resource_id)
        .join(Resource, Resource.id == ServiceResource.resource_id)
        .where(
            ServiceResource.service_id.in_([s.id for s in services]),
            Resource.is_active.is_(True),
            Resource.deleted_at.is_(None),
        )
        .order_by(ServiceResource.preference_order, Resource.id)
    ).all()
    for service_id, resource_id in links:
        resources_by_service[service_id].append(resource_id)
    return [
        ServiceSummary(
            service_id=s.id,
            name=s.name,
            description=s.description,
            category=s.category,
            duration_minutes=s.duration_minutes,
            price=s.base_price,
            currency=s.price_currency,
            resource_ids=tuple(resources_by_service[s.id]),
        )
        for s in services
    ]
