"""Revision 015: a row can reference only parents of its own tenant, whatever the session may see.

The test's session is in system mode (tests/conftest.py): every row of both tenants is visible and
writable, so nothing but the schema itself stands between a row and another tenant's parent.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import Range
from sqlalchemy.exc import IntegrityError

from core.db import UnitOfWork
from core.models import (
    Appointment,
    AppointmentResource,
    Client,
    IntakeJob,
    Notification,
    NotificationTemplate,
    Payment,
    Resource,
    Service,
    ServiceResource,
    Subscription,
    Tenant,
    VapiCallLog,
)
from tests.factories import (
    CHECK_VIOLATION,
    FOREIGN_KEY_VIOLATION,
    link_service_resource,
    make_appointment,
    make_client,
    make_notification_template,
    make_resource,
    make_service,
    make_subscription,
    make_tenant,
    unique,
    violates,
)

T0 = datetime(2030, 3, 4, 10, 0, tzinfo=UTC)


@dataclass
class Business:
    tenant: Tenant
    service: Service
    client: Client
    resource: Resource
    appointment: Appointment
    subscription: Subscription


def _business(db) -> Business:
    tenant = make_tenant(db)
    service = make_service(db, tenant)
    client = make_client(db, tenant)
    resource = make_resource(db, tenant)
    appointment = make_appointment(db, tenant, service, client, T0)
    return Business(tenant, service, client, resource, appointment, make_subscription(db, tenant))


@pytest.fixture
def a(db) -> Business:
    return _business(db)


@pytest.fixture
def b(db) -> Business:
    return _business(db)


def _appointment(owner: Business, service: Service, client: Client) -> Appointment:
    return Appointment(
        tenant_id=owner.tenant.id,
        service_id=service.id,
        client_id=client.id,
        scheduled_start=T0,
        scheduled_end=T0 + timedelta(minutes=30),
        booking_reference=unique("REF-"),
    )


def _allocation(appointment: Appointment, resource: Resource) -> AppointmentResource:
    end = T0 + timedelta(minutes=30)
    return AppointmentResource(
        appointment_id=appointment.id,
        resource_id=resource.id,
        allocated_start=T0,
        allocated_end=end,
        allocated_during=Range(T0, end, bounds="[)"),
    )


def _call(owner: Business, appointment_id: uuid.UUID | None) -> VapiCallLog:
    return VapiCallLog(tenant_id=owner.tenant.id, vapi_call_id=unique("call-"), appointment_id=appointment_id)


def _notification(owner: Business, appointment_id: uuid.UUID | None) -> Notification:
    return Notification(
        tenant_id=owner.tenant.id,
        appointment_id=appointment_id,
        recipient_type="client",
        channel="email",
        body="See you soon",
    )


def _job(owner: Business, appointment_id: uuid.UUID | None) -> IntakeJob:
    return IntakeJob(
        tenant_id=owner.tenant.id,
        kind="booking",
        request_hash="0" * 64,
        payload={},
        appointment_id=appointment_id,
    )


def _payment(owner: Business, subscription: Subscription) -> Payment:
    return Payment(
        tenant_id=owner.tenant.id,
        subscription_id=subscription.id,
        amount=Decimal("29.99"),
        currency="EUR",
        status="succeeded",
    )


# constraint -> a row of A's that references `parent`'s parent row (parent is A or B).
REFERENCES = {
    "appointments_tenant_id_client_id_fkey": lambda a, parent: _appointment(a, a.service, parent.client),
    "appointments_tenant_id_service_id_fkey": lambda a, parent: _appointment(a, parent.service, a.client),
    "appointment_resources_tenant_id_resource_id_fkey": lambda a, parent: _allocation(
        a.appointment, parent.resource
    ),
    "vapi_call_logs_tenant_id_appointment_id_fkey": lambda a, parent: _call(a, parent.appointment.id),
    "notifications_tenant_id_appointment_id_fkey": lambda a, parent: _notification(a, parent.appointment.id),
    "intake_jobs_tenant_id_appointment_id_fkey": lambda a, parent: _job(a, parent.appointment.id),
    "payments_tenant_id_subscription_id_fkey": lambda a, parent: _payment(a, parent.subscription),
}


@pytest.mark.parametrize("constraint", sorted(REFERENCES))
def test_a_reference_to_another_tenants_row_is_refused(db, a, b, constraint):
    with violates(db, constraint, FOREIGN_KEY_VIOLATION):
        db.add(REFERENCES[constraint](a, b))


@pytest.mark.parametrize("constraint", sorted(REFERENCES))
def test_a_reference_to_the_same_tenants_row_is_accepted(db, a, b, constraint):
    row = REFERENCES[constraint](a, a)
    db.add(row)
    db.flush()
    assert row.id is not None


def test_every_composite_foreign_key_has_a_case(db):
    # Every foreign key that has tenant_id among its columns and more than one column.
    in_database = set(
        db.execute(
            text(
                "SELECT c.conname FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace"
                " JOIN pg_attribute att ON att.attrelid = c.conrelid AND att.attnum = ANY (c.conkey)"
                " WHERE c.contype = 'f' AND n.nspname = 'public' AND cardinality(c.conkey) > 1"
                " AND att.attname = 'tenant_id'"
            )
        ).scalars()
    )
    # The allocation's appointment key has its own test below: the trigger writes its tenant_id.
    assert in_database == set(REFERENCES) | {"appointment_resources_tenant_id_appointment_id_fkey"}


@pytest.mark.parametrize(
    "row",
    [
        pytest.param(lambda a: _call(a, None), id="vapi_call_logs"),
        pytest.param(lambda a: _notification(a, None), id="notifications"),
        pytest.param(lambda a: _job(a, None), id="intake_jobs"),
    ],
)
def test_a_null_appointment_is_still_allowed(db, a, row):
    added = row(a)
    db.add(added)
    db.flush()
    assert db.scalar(select(type(added).appointment_id).where(type(added).id == added.id)) is None


def test_an_allocation_takes_its_appointments_tenant_before_the_keys_are_checked(db, a, b):
    # The writer's tenant_id does not count: the BEFORE INSERT trigger (013) overwrites it, and the
    # foreign keys, checked after row triggers, see the appointment's tenant.
    allocation = _allocation(a.appointment, a.resource)
    allocation.tenant_id = b.tenant.id
    db.add(allocation)
    db.flush()
    stored = db.scalar(select(AppointmentResource.tenant_id).where(AppointmentResource.id == allocation.id))
    assert stored == a.tenant.id


def test_an_allocation_cannot_be_moved_to_another_tenant(db, a, b):
    allocation = _allocation(a.appointment, a.resource)
    db.add(allocation)
    db.flush()
    # tenant_id alone is not re-derived (the trigger fires on appointment_id only); the resource is
    # moved along so that only the appointment's key is wrong.
    with violates(db, "appointment_resources_tenant_id_appointment_id_fkey", FOREIGN_KEY_VIOLATION):
        db.execute(
            update(AppointmentResource)
            .where(AppointmentResource.id == allocation.id)
            .values(tenant_id=b.tenant.id, resource_id=b.resource.id)
        )


def test_an_allocation_moved_to_another_appointment_takes_its_tenant_again(db, a, b):
    # The trigger (013) fires on an update of appointment_id too: whatever the writer puts in tenant_id.
    allocation = _allocation(a.appointment, a.resource)
    db.add(allocation)
    db.flush()
    other = make_appointment(db, a.tenant, a.service, a.client, T0 + timedelta(days=1))
    db.execute(
        update(AppointmentResource)
        .where(AppointmentResource.id == allocation.id)
        .values(appointment_id=other.id, tenant_id=b.tenant.id)
    )
    stored = db.execute(
        select(AppointmentResource.appointment_id, AppointmentResource.tenant_id).where(
            AppointmentResource.id == allocation.id
        )
    ).one()
    assert tuple(stored) == (other.id, a.tenant.id)


def test_a_referenced_parent_cannot_change_tenant(db, a, b):
    with violates(db, "appointments_tenant_id_client_id_fkey", FOREIGN_KEY_VIOLATION):
        db.execute(update(Client).where(Client.id == a.client.id).values(tenant_id=b.tenant.id))


def test_a_service_resource_link_across_tenants_is_refused(db, a, b):
    with violates(db, "service_resources_same_tenant", CHECK_VIOLATION):
        link_service_resource(db, a.service, b.resource)
    with violates(db, "service_resources_same_tenant", CHECK_VIOLATION):
        link_service_resource(db, b.service, a.resource)


def test_a_service_resource_link_cannot_be_moved_across_tenants(db, a, b):
    link = link_service_resource(db, a.service, a.resource)
    with violates(db, "service_resources_same_tenant", CHECK_VIOLATION):
        db.execute(
            update(ServiceResource).where(ServiceResource.id == link.id).values(resource_id=b.resource.id)
        )
    with violates(db, "service_resources_same_tenant", CHECK_VIOLATION):
        db.execute(
            update(ServiceResource).where(ServiceResource.id == link.id).values(service_id=b.service.id)
        )
    other = make_resource(db, a.tenant)
    db.execute(update(ServiceResource).where(ServiceResource.id == link.id).values(resource_id=other.id))
    assert db.scalar(select(ServiceResource.resource_id).where(ServiceResource.id == link.id)) == other.id


def test_the_service_resource_trigger_leaves_a_missing_row_to_the_foreign_key(db, a):
    with violates(db, "service_resources_resource_id_fkey", FOREIGN_KEY_VIOLATION):
        db.add(ServiceResource(service_id=a.service.id, resource_id=uuid.uuid4()))


def test_the_service_resource_trigger_message_names_both_rows(db, a, b):
    with pytest.raises(IntegrityError) as caught, db.begin_nested():
        link_service_resource(db, a.service, b.resource)
    message = str(caught.value.orig)
    assert "belong to different tenants" in message
    assert str(a.service.id) in message and str(b.resource.id) in message


def test_deleting_an_appointment_unlinks_its_notifications_and_jobs_and_keeps_their_tenant(db, a):
    notification, job = _notification(a, a.appointment.id), _job(a, a.appointment.id)
    db.add_all([notification, job])
    db.flush()
    db.execute(text("DELETE FROM appointments WHERE id = :id"), {"id": a.appointment.id})
    for model, row in ((Notification, notification), (IntakeJob, job)):
        stored = db.execute(select(model.tenant_id, model.appointment_id).where(model.id == row.id)).one()
        assert tuple(stored) == (a.tenant.id, None)


def test_deleting_an_appointment_still_removes_its_allocations(db, a):
    db.add(_allocation(a.appointment, a.resource))
    db.flush()
    db.execute(text("DELETE FROM appointments WHERE id = :id"), {"id": a.appointment.id})
    remaining = select(func.count()).where(AppointmentResource.resource_id == a.resource.id)
    assert db.scalar(remaining) == 0


def test_deleting_an_appointment_a_call_refers_to_is_still_refused(db, a):
    db.add(_call(a, a.appointment.id))
    db.flush()
    with violates(db, "vapi_call_logs_tenant_id_appointment_id_fkey", FOREIGN_KEY_VIOLATION):
        db.execute(text("DELETE FROM appointments WHERE id = :id"), {"id": a.appointment.id})


# --- revision 016: a notification's template, and rows that keep their tenant ------------------------


def _notification_from(owner: Business, template: NotificationTemplate, tenant_id: uuid.UUID | None = None):
    notification = _notification(owner, None)
    notification.template_id = template.id
    if tenant_id is not None:
        notification.tenant_id = tenant_id
    return notification


def test_a_notification_may_use_a_system_template_or_its_tenants_own(db, a):
    for template in (make_notification_template(db), make_notification_template(db, a.tenant)):
        notification = _notification_from(a, template)
        db.add(notification)
        db.flush()
        assert (
            db.scalar(select(Notification.template_id).where(Notification.id == notification.id))
            == template.id
        )


def test_a_notification_cannot_use_another_tenants_template(db, a, b):
    with violates(db, "notifications_template_of_tenant", CHECK_VIOLATION):
        db.add(_notification_from(a, make_notification_template(db, b.tenant)))


def test_a_notification_cannot_be_moved_to_another_tenant_with_its_template(db, a, b):
    notification = _notification_from(a, make_notification_template(db, a.tenant))
    db.add(notification)
    db.flush()
    with violates(db, "notifications_template_of_tenant", CHECK_VIOLATION):
        db.execute(
            update(Notification).where(Notification.id == notification.id).values(tenant_id=b.tenant.id)
        )


def test_a_notification_without_a_tenant_may_use_system_templates_only(db, a):
    system = make_notification_template(db)
    db.add(Notification(recipient_type="client", channel="email", body="Hello", template_id=system.id))
    db.flush()
    with violates(db, "notifications_template_of_tenant", CHECK_VIOLATION):
        db.add(
            Notification(
                recipient_type="client",
                channel="email",
                body="Hello",
                template_id=make_notification_template(db, a.tenant).id,
            )
        )


def test_in_a_tenants_unit_of_work_another_tenants_template_is_refused_too(db, a, b):
    # Invisible under the policies, and the foreign key alone (which bypasses them) would accept it.
    foreign = make_notification_template(db, b.tenant)
    with UnitOfWork(a.tenant.id) as uow, pytest.raises(IntegrityError) as caught:
        uow.session.add(_notification_from(a, foreign))
        uow.session.flush()
    assert caught.value.orig.diag.constraint_name == "notifications_template_of_tenant"


@pytest.mark.parametrize("model", [Service, Resource, NotificationTemplate])
def test_services_resources_and_templates_keep_their_tenant(db, a, b, model):
    row = {
        Service: lambda: a.service,
        Resource: lambda: a.resource,
        NotificationTemplate: lambda: make_notification_template(db, a.tenant),
    }[model]()
    with violates(db, f"{model.__tablename__}_tenant_id_fixed", CHECK_VIOLATION):
        db.execute(update(model).where(model.id == row.id).values(tenant_id=b.tenant.id))
    # Setting the same tenant again, or changing anything else, is an ordinary update.
    db.execute(update(model).where(model.id == row.id).values(tenant_id=a.tenant.id, name="Renamed"))
    assert db.scalar(select(model.name).where(model.id == row.id)) == "Renamed"


def test_a_system_template_cannot_be_given_to_a_tenant(db, a):
    template = make_notification_template(db)
    with violates(db, "notification_templates_tenant_id_fixed", CHECK_VIOLATION):
        db.execute(
            update(NotificationTemplate)
            .where(NotificationTemplate.id == template.id)
            .values(tenant_id=a.tenant.id)
        )


def test_moving_a_linked_service_away_no_longer_makes_the_link_cross_tenants(db, a, b):
    link_service_resource(db, a.service, a.resource)
    with violates(db, "services_tenant_id_fixed", CHECK_VIOLATION):
        db.execute(update(Service).where(Service.id == a.service.id).values(tenant_id=b.tenant.id))
