"""Whole businesses for booking tests: a salon whose stylists share chairs, with an API key.

Built with the factories, so the rows are the same whether a test rolls them back (`db`) or commits
them for other processes to see (e2e, benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from core import auth
from core.models import Resource, Service, Tenant
from tests import factories

EVERY_DAY = [0, 1, 2, 3, 4, 5, 6]


@dataclass
class Salon:
    tenant: Tenant
    stylists: list[Resource]
    chairs: list[Resource]
    haircut: Service  # any stylist (the client may choose) + a chair
    api_key: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tenant.timezone)

    def at(self, day: date, clock: str) -> datetime:
        """A local wall-clock time of the salon as an aware datetime."""
        return datetime.combine(day, time.fromisoformat(clock), tzinfo=self.zone)


def build_salon(
    session: Session,
    *,
    timezone: str = "Europe/Madrid",
    stylists: int = 2,
    chairs: int = 1,
    duration_minutes: int = 45,
    buffer_time_minutes: int = 0,
    opens: str = "09:00",
    closes: str = "18:00",
    with_api_key: bool = False,
    **service_columns,
) -> Salon:
    """A salon open every day; its haircut needs one of the stylists and every chair."""
    tenant = factories.make_tenant(session, timezone=timezone, settings={"slot_step_minutes": 15})
    service_columns.setdefault("min_advance_booking_hours", 0)
    service_columns.setdefault("max_advance_booking_days", 60)
    service_columns.setdefault("cancellation_policy_hours", 24)
    haircut = factories.make_service(
        session,
        tenant,
        name="Haircut",
        duration_minutes=duration_minutes,
        buffer_time_minutes=buffer_time_minutes,
        available_days=EVERY_DAY,
        available_hours={"start": "00:00", "end": "23:59"},
        base_price=25,
        **service_columns,
    )
    stylist_rows = [
        factories.make_resource(session, tenant, "staff", name=f"Stylist {i + 1}") for i in range(stylists)
    ]
    chair_rows = [
        factories.make_resource(session, tenant, "room", 1, name=f"Chair {i + 1}") for i in range(chairs)
    ]
    for order, stylist in enumerate(stylist_rows):
        factories.link_service_resource(session, haircut, stylist, is_required=False, preference_order=order)
    for chair in chair_rows:
        factories.link_service_resource(session, haircut, chair, is_required=True)
    for resource in stylist_rows + chair_rows:
        for day in EVERY_DAY:
            factories.make_schedule(session, resource, day, opens, closes)
    salon = Salon(tenant, stylist_rows, chair_rows, haircut)
    if with_api_key:
        salon.api_key = _api_key(session, tenant)
    return salon


def _api_key(session: Session, tenant: Tenant) -> str:
    row, key = auth.new_api_key(tenant.id, "tests")
    session.add(row)
    session.flush()
    return key
