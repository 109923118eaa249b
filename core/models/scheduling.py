"""Services, resources, clients, appointments and how they are tied together in time (seed sections 6 and 7).

Intervals are half-open [start, end). `appointment_resources.allocated_during` is the occupied interval
(the appointment plus the service's buffer) and carries the double-booking guard: an exclusion
constraint over (resource_id, allocated_during) for active allocations of exclusive (capacity 1) resources.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    CheckConstraint,
    Computed,
    Date,
    FetchedValue,
    ForeignKey,
    Index,
    String,
    Text,
    Time,
    TypeDecorator,
    UniqueConstraint,
    case,
    literal_column,
    text,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB, TSTZRANGE, ExcludeConstraint, Range
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.models.base import (
    Audited,
    Base,
    SoftDeleted,
    created_at,
    flag,
    jsonb_object,
    same_tenant,
    updated_at,
    uuid_pk,
)

if TYPE_CHECKING:
    from core.models.tenancy import Tenant

NOT_DELETED = text("deleted_at IS NULL")
ACTIVE_NOT_DELETED = text("is_active = true AND deleted_at IS NULL")


class Service(Audited, SoftDeleted, Base):
    __tablename__ = "services"
    __table_args__ = (
        CheckConstraint("duration_minutes > 0", name="services_duration_positive"),
        CheckConstraint("base_price IS NULL OR base_price >= 0", name="services_price_non_negative"),
        CheckConstraint("buffer_time_minutes >= 0", name="services_buffer_non_negative"),
        # Revisions 019, 020, 022: the rules the core reads for every query and booking of the service
        # (the `\:` keeps SQLAlchemy from reading `:00` as a bound parameter, which DDL renders as NULL).
        CheckConstraint(
            "jsonb_typeof(available_days) = 'array' AND available_days <@ '[0, 1, 2, 3, 4, 5, 6]'::jsonb",
            name="services_available_days_valid",
        ),
        CheckConstraint(
            "jsonb_typeof(available_hours) = 'object'"
            " AND (available_hours = '{}'::jsonb"
            " OR (COALESCE(available_hours ->> 'start', '') ~ '^([01]?[0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$'"
            " AND COALESCE(available_hours ->> 'end', '') ~ '^(([01]?[0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?|24:00(\\:00)?)$'))",
            name="services_available_hours_valid",
        ),
        CheckConstraint(
            "min_advance_booking_hours BETWEEN 0 AND 87600 AND max_advance_booking_days BETWEEN 0 AND 3650",
            name="services_advance_booking_valid",
        ),
        # The seed's UNIQUE(tenant_id, slug), but a soft-deleted service no longer holds its slug.
        Index("services_tenant_id_slug_key", "tenant_id", "slug", unique=True, postgresql_where=NOT_DELETED),
        Index("idx_services_tenant_active", "tenant_id", postgresql_where=ACTIVE_NOT_DELETED),
        UniqueConstraint("tenant_id", "id"),  # the target of same_tenant() references (revision 015)
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))

    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(String(50))

    duration_minutes: Mapped[int]
    buffer_time_minutes: Mapped[int] = mapped_column(server_default=text("5"))

    base_price: Mapped[Decimal | None]
    price_currency: Mapped[str] = mapped_column(String(3), server_default="EUR")
    price_varies: Mapped[bool] = flag(False)

    max_capacity: Mapped[int] = mapped_column(server_default=text("1"))
    min_advance_booking_hours: Mapped[int] = mapped_column(server_default=text("1"))
    max_advance_booking_days: Mapped[int] = mapped_column(server_default=text("30"))

    # Days of week as in resource_schedules (0 = Sunday ... 6 = Saturday); hours are local wall-clock "HH:MM".
    available_days: Mapped[list[int]] = jsonb_object("'[1, 2, 3, 4, 5]'::jsonb")
    available_hours: Mapped[dict[str, Any]] = jsonb_object('\'{"end": "18:00", "start": "09:00"}\'::jsonb')

    requires_confirmation: Mapped[bool] = flag(False)
    allows_cancellation: Mapped[bool] = flag(True)
    cancellation_policy_hours: Mapped[int] = mapped_column(server_default=text("24"))

    color_hex: Mapped[str] = mapped_column(String(7), server_default="#3B82F6")
    icon: Mapped[str | None] = mapped_column(String(50))
    sort_order: Mapped[int] = mapped_column(server_default=text("0"))

    slug: Mapped[str | None] = mapped_column(String(100))
    meta_description: Mapped[str | None] = mapped_column(Text)

    is_active: Mapped[bool] = flag(True)
    is_featured: Mapped[bool] = flag(False)

    tenant: Mapped[Tenant] = relationship(back_populates="services")
    service_resources: Mapped[list[ServiceResource]] = relationship(
        back_populates="service", order_by="ServiceResource.preference_order", passive_deletes=True
    )


class Resource(Audited, SoftDeleted, Base):
    __tablename__ = "resources"
    __table_args__ = (
        CheckConstraint(
            "type IN ('staff', 'room', 'equipment', 'vehicle', 'other')", name="resources_type_valid"
        ),
        CheckConstraint("capacity IS NULL OR capacity > 0", name="resources_capacity_positive"),
        Index("idx_resources_tenant_active", "tenant_id", postgresql_where=ACTIVE_NOT_DELETED),
        Index("idx_resources_type_tenant", "tenant_id", "type", postgresql_where=ACTIVE_NOT_DELETED),
        UniqueConstraint("tenant_id", "id"),  # the target of same_tenant() references (revision 015)
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))

    name: Mapped[str] = mapped_column(String(100))
    type: Mapped[str] = mapped_column(String(50))
    description: Mapped[str | None] = mapped_column(Text)

    staff_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    staff_specialties: Mapped[list[str] | None] = mapped_column(JSONB)
    staff_bio: Mapped[str | None] = mapped_column(Text)

    email: Mapped[str | None] = mapped_column(String(255))
    phone: Mapped[str | None] = mapped_column(String(20))

    default_schedule: Mapped[dict[str, Any]] = jsonb_object()
    hourly_rate: Mapped[Decimal | None]

    # Capacity units (seats, chairs); NULL means 1. Capacity 1 makes allocations exclusive.
    capacity: Mapped[int | None]
    location: Mapped[str | None] = mapped_column(String(100))
    equipment_features: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    avatar_url: Mapped[str | None] = mapped_column(Text)
    color_hex: Mapped[str] = mapped_column(String(7), server_default="#6B7280")
    sort_order: Mapped[int] = mapped_column(server_default=text("0"))

    is_active: Mapped[bool] = flag(True)

    tenant: Mapped[Tenant] = relationship(back_populates="resources")
    schedules: Mapped[list[ResourceSchedule]] = relationship(
        back_populates="resource",
        order_by="(ResourceSchedule.day_of_week, ResourceSchedule.start_time)",
        passive_deletes=True,
    )
    blocks: Mapped[list[ResourceBlock]] = relationship(
        back_populates="resource", order_by="ResourceBlock.start_datetime", passive_deletes=True
    )


class Client(Audited, SoftDeleted, Base):
    __tablename__ = "clients"
    __table_args__ = (
        CheckConstraint("phone IS NULL OR phone ~ '^\\+?[1-9]\\d{1,14}$'", name="clients_phone_format"),
        # The seed's UNIQUE constraints, but a soft-deleted client no longer holds its email or phone.
        Index(
            "clients_email_unique_per_tenant", "tenant_id", "email", unique=True, postgresql_where=NOT_DELETED
        ),
        Index(
            "clients_phone_unique_per_tenant", "tenant_id", "phone", unique=True, postgresql_where=NOT_DELETED
        ),
        Index(
            "idx_clients_tenant_name", "tenant_id", "first_name", "last_name", postgresql_where=NOT_DELETED
        ),
        UniqueConstraint("tenant_id", "id"),  # the target of same_tenant() references (revision 015)
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))

    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    email: Mapped[str | None] = mapped_column(String(255))
    phone: Mapped[str | None] = mapped_column(String(20))

    date_of_birth: Mapped[date | None] = mapped_column(Date)
    gender: Mapped[str | None] = mapped_column(String(20))

    address_line1: Mapped[str | None] = mapped_column(String(200))
    address_line2: Mapped[str | None] = mapped_column(String(200))
    city: Mapped[str | None] = mapped_column(String(100))
    postal_code: Mapped[str | None] = mapped_column(String(20))

    preferred_language: Mapped[str] = mapped_column(String(10), server_default="es")
    communication_preferences: Mapped[dict[str, Any]] = jsonb_object(
        '\'{"sms": false, "email": true}\'::jsonb'
    )

    notes: Mapped[str | None] = mapped_column(Text)
    allergies: Mapped[str | None] = mapped_column(Text)
    medical_conditions: Mapped[str | None] = mapped_column(Text)
    emergency_contact: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    marketing_consent: Mapped[bool] = flag(False)
    source: Mapped[str | None] = mapped_column(String(50))

    total_appointments: Mapped[int] = mapped_column(server_default=text("0"))
    total_spent: Mapped[Decimal] = mapped_column(server_default=text("0"))
    last_appointment_date: Mapped[datetime | None]

    is_active: Mapped[bool] = flag(True)

    tenant: Mapped[Tenant] = relationship(back_populates="clients")


# Appointments that no longer count: not against the plan's monthly allowance, not as a client's latest.
NOT_COUNTED_STATUSES = ("cancelled", "rescheduled")


class Appointment(Audited, SoftDeleted, Base):
    __tablename__ = "appointments"
    __table_args__ = (
        CheckConstraint(
            "status IN ('scheduled', 'confirmed', 'in_progress', 'completed', 'cancelled', 'no_show', 'rescheduled')",
            name="appointments_status_valid",
        ),
        CheckConstraint(
            "payment_status IN ('pending', 'paid', 'partially_paid', 'refunded', 'failed')",
            name="appointments_payment_status_valid",
        ),
        CheckConstraint("scheduled_end > scheduled_start", name="appointments_end_after_start"),
        Index("idx_appointments_tenant_date", "tenant_id", "scheduled_start", postgresql_where=NOT_DELETED),
        Index("idx_appointments_service_date", "service_id", "scheduled_start", postgresql_where=NOT_DELETED),
        Index("idx_appointments_status_date", "status", "scheduled_start", postgresql_where=NOT_DELETED),
        Index(
            "idx_availability_lookup",
            "tenant_id",
            "service_id",
            "scheduled_start",
            "scheduled_end",
            "status",
            postgresql_where=text("status NOT IN ('cancelled', 'no_show') AND deleted_at IS NULL"),
        ),
        Index(
            "idx_client_appointments", "client_id", text("scheduled_start DESC"), postgresql_where=NOT_DELETED
        ),
        UniqueConstraint("tenant_id", "id"),  # the target of same_tenant() references (revision 015)
        # The client and the service are the appointment's tenant's (revision 015).
        same_tenant("service_id", "services"),
        same_tenant("client_id", "clients"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    service_id: Mapped[uuid.UUID]
    client_id: Mapped[uuid.UUID]

    scheduled_start: Mapped[datetime]
    scheduled_end: Mapped[datetime]
    actual_start: Mapped[datetime | None]
    actual_end: Mapped[datetime | None]

    status: Mapped[str] = mapped_column(String(20), server_default="scheduled")
    status_changed_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    status_changed_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))

    booking_method: Mapped[str] = mapped_column(String(20), server_default="online")
    booking_reference: Mapped[str | None] = mapped_column(String(50), unique=True)

    quoted_price: Mapped[Decimal | None]
    final_price: Mapped[Decimal | None]
    paid_amount: Mapped[Decimal] = mapped_column(server_default=text("0"))
    payment_status: Mapped[str] = mapped_column(String(20), server_default="pending")

    confirmation_sent_at: Mapped[datetime | None]
    reminder_sent_at: Mapped[datetime | None]

    client_notes: Mapped[str | None] = mapped_column(Text)
    staff_notes: Mapped[str | None] = mapped_column(Text)
    cancellation_reason: Mapped[str | None] = mapped_column(Text)

    metadata_: Mapped[dict[str, Any]] = jsonb_object(name="metadata")

    tenant: Mapped[Tenant] = relationship()
    # Joined by id alone: tenant_id is the appointment's own column (written through `tenant`), and the
    # composite foreign keys already hold the tenants equal. A join on the primary key alone also lets a
    # lazy load take the object from the identity map.
    service: Mapped[Service] = relationship(primaryjoin="Appointment.service_id == Service.id")
    client: Mapped[Client] = relationship(primaryjoin="Appointment.client_id == Client.id")
    resources: Mapped[list[AppointmentResource]] = relationship(
        back_populates="appointment",
        primaryjoin="Appointment.id == AppointmentResource.appointment_id",
        passive_deletes=True,
    )


class ServiceResource(Base):
    __tablename__ = "service_resources"
    __table_args__ = (
        UniqueConstraint("service_id", "resource_id"),
        CheckConstraint("quantity_required > 0", name="service_resources_quantity_positive"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    service_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"))
    resource_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))

    # Capacity units of the resource taken by one appointment of the service.
    quantity_required: Mapped[int] = mapped_column(server_default=text("1"))
    # Required rows must all be allocated; optional rows are interchangeable candidates (pick one).
    is_required: Mapped[bool] = flag(True)
    preference_order: Mapped[int] = mapped_column(server_default=text("0"))

    created_at: Mapped[datetime] = created_at()

    service: Mapped[Service] = relationship(back_populates="service_resources")
    resource: Mapped[Resource] = relationship()


class AppointmentResource(Base):
    __tablename__ = "appointment_resources"
    __table_args__ = (
        CheckConstraint("allocated_end > allocated_start", name="appointment_resources_end_after_start"),
        CheckConstraint(
            "lower(allocated_during) = allocated_start AND upper(allocated_during) >= allocated_end"
            " AND lower_inc(allocated_during) AND NOT upper_inc(allocated_during) AND NOT upper_inf(allocated_during)",
            name="appointment_resources_during_valid",
        ),
        CheckConstraint("units > 0", name="appointment_resources_units_positive"),
        ExcludeConstraint(
            ("resource_id", "="),
            ("allocated_during", "&&"),
            name="appointment_resources_no_overlap",
            using="gist",
            where=text("active AND exclusive"),
        ),
        Index("idx_appointment_resources_resource_time", "resource_id", "allocated_start", "allocated_end"),
        Index(
            "idx_resource_availability",
            "resource_id",
            "allocated_start",
            "allocated_end",
            postgresql_where=text("active"),
        ),
        Index("idx_appointment_resources_appointment_id", "appointment_id"),
        # Revision 014: bounds the availability scan by the booking horizon (see occupied_until).
        Index(
            "idx_appointment_resources_occupied_until",
            "resource_id",
            "occupied_until",
            postgresql_where=text("active"),
        ),
        # Revision 025: the shared-capacity trigger finds the shared allocations overlapping a new one by both
        # bounds; capacity-1 rows (most of them) are not in it and cost their inserts nothing here.
        Index(
            "idx_appointment_resources_overlap",
            "resource_id",
            "allocated_start",
            "occupied_until",
            postgresql_using="gist",
            postgresql_where=text("active AND NOT exclusive"),
        ),
        # Revision 015: the appointment and the resource are the allocation's tenant's. tenant_id is set
        # by a BEFORE INSERT trigger, which runs before these checks.
        same_tenant("appointment_id", "appointments", ondelete="CASCADE"),
        same_tenant("resource_id", "resources"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    appointment_id: Mapped[uuid.UUID]
    resource_id: Mapped[uuid.UUID]
    # Always the appointment's tenant: a trigger copies it on insert (revision 013), so nobody sets it.
    # It exists for row-level security, which would otherwise look up the appointment of every row read.
    tenant_id: Mapped[uuid.UUID] = mapped_column(server_default=FetchedValue())

    allocated_start: Mapped[datetime]
    allocated_end: Mapped[datetime]
    # [allocated_start, allocated_end + service buffer): what the resource is really busy for.
    allocated_during: Mapped[Range[datetime]] = mapped_column(TSTZRANGE, nullable=False)
    # upper(allocated_during), stored: a leakproof bound for index scans under row-level security.
    occupied_until: Mapped[datetime | None] = mapped_column(
        Computed("upper(allocated_during)", persisted=True)
    )
    # False once the appointment is cancelled, rescheduled away or a no-show: the history stays, the time frees up.
    active: Mapped[bool] = flag(True)
    units: Mapped[int] = mapped_column(server_default=text("1"))
    # Set by the database from the resource's capacity (1 or NULL: exclusive) on every insert (revision 023):
    # the exclusion constraint covers exclusive rows, so no writer may choose.
    exclusive: Mapped[bool] = flag(True)

    created_at: Mapped[datetime] = created_at()
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))

    # Joined by id alone: tenant_id is the trigger's to write, not the ORM's.
    appointment: Mapped[Appointment] = relationship(
        back_populates="resources", primaryjoin="AppointmentResource.appointment_id == Appointment.id"
    )
    resource: Mapped[Resource] = relationship(primaryjoin="AppointmentResource.resource_id == Resource.id")


_MIDNIGHT = literal_column("TIME '00:00'")
_END_OF_DAY = literal_column("TIME '24:00'")


def end_of_day_as_midnight(end_time: Any) -> Any:
    """`end_time` as Python can load it: 24:00 as 00:00 (see `ClosingTime`)."""
    return _replaced(end_time, _END_OF_DAY, _MIDNIGHT)


def _replaced(value: Any, old: Any, new: Any) -> Any:
    return type_coerce(case((value == old, new), else_=value), Time())


class ClosingTime(TypeDecorator[time]):
    """A closing time of `resource_schedules`: 00:00 in Python is 24:00 in the database.

    A shift ending at midnight is stored as 24:00 (the CHECK wants the end after the start), which neither
    `datetime.time` nor psycopg can hold. No window ends at 00:00 otherwise, so 00:00 stands for it, read
    and written.
    """

    impl = Time
    cache_ok = True

    def column_expression(self, column: Any) -> Any:
        return end_of_day_as_midnight(column)

    def bind_expression(self, value: Any) -> Any:
        return _replaced(value, _MIDNIGHT, _END_OF_DAY)


class ResourceSchedule(Base):
    __tablename__ = "resource_schedules"
    __table_args__ = (
        CheckConstraint("day_of_week BETWEEN 0 AND 6", name="resource_schedules_day_valid"),
        CheckConstraint("end_time > start_time", name="resource_schedules_end_after_start"),
        CheckConstraint(
            "effective_until IS NULL OR effective_from IS NULL OR effective_until >= effective_from",
            name="resource_schedules_effective_range_valid",
        ),
        Index(
            "idx_staff_schedule",
            "resource_id",
            "day_of_week",
            "start_time",
            "end_time",
            postgresql_where=text("is_active = true"),
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    resource_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))

    day_of_week: Mapped[int]  # 0 = Sunday ... 6 = Saturday (PostgreSQL's EXTRACT(DOW))
    start_time: Mapped[time]  # local wall-clock time in the tenant's time zone
    end_time: Mapped[time] = mapped_column(ClosingTime())  # 00:00 is 24:00, the end of the day

    # NULL effective_from: in effect since always. No default: CURRENT_DATE is the UTC date (revision 021).
    effective_from: Mapped[date | None]
    effective_until: Mapped[date | None]  # inclusive

    is_active: Mapped[bool] = flag(True)

    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()

    resource: Mapped[Resource] = relationship(back_populates="schedules")


class ResourceBlock(Base):
    __tablename__ = "resource_blocks"
    __table_args__ = (
        CheckConstraint(
            "block_type IN ('vacation', 'sick_leave', 'maintenance', 'break', 'training', 'other')",
            name="resource_blocks_type_valid",
        ),
        CheckConstraint("end_datetime > start_datetime", name="resource_blocks_end_after_start"),
        CheckConstraint(
            "is_recurring = (recurrence_rule IS NOT NULL)", name="resource_blocks_recurrence_consistent"
        ),
        ExcludeConstraint(
            ("resource_id", "="),
            (text("tstzrange(start_datetime, end_datetime, '[)')"), "&&"),
            name="resource_blocks_no_overlap",
            using="gist",
            where=text("deleted_at IS NULL"),
        ),
        Index(
            "idx_resource_blocks_resource_time",
            "resource_id",
            "start_datetime",
            "end_datetime",
            postgresql_where=NOT_DELETED,
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    resource_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))

    # For a recurring block, the first occurrence.
    start_datetime: Mapped[datetime]
    end_datetime: Mapped[datetime]

    block_type: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text)

    is_recurring: Mapped[bool] = flag(False)
    recurrence_rule: Mapped[str | None] = mapped_column(Text)  # RFC 5545 RRULE, e.g. 'FREQ=WEEKLY;BYDAY=MO'

    created_at: Mapped[datetime] = created_at()
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    deleted_at: Mapped[datetime | None]
    deleted_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))

    resource: Mapped[Resource] = relationship(back_populates="blocks")
