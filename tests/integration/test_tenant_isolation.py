"""Row-level security (revision 013): a unit of work sees and writes its own tenant's rows only.

The statements below carry no tenant filter on purpose: whatever keeps another tenant's rows out is
the database's policies, acting on the application role that every connection switches to.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.dialects.postgresql import Range
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from core import auth
from core.config import get_settings
from core.db import UnitOfWork, make_engine
from core.models import (
    Appointment,
    AppointmentResource,
    AuditLog,
    BusinessMetric,
    Client,
    IntakeJob,
    LoginAttempt,
    Notification,
    NotificationTemplate,
    ResourceSchedule,
    Service,
    ServiceResource,
    SubscriptionPlan,
    Tenant,
    User,
    UserSession,
    VapiCallLog,
    VapiConfiguration,
)
from tests import factories

START = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
INSUFFICIENT_PRIVILEGE = "42501"  # both "violates row-level security policy" and "permission denied"

# Every table, by how its rows belong to a tenant: the SQL that lists one tenant's rows (in system mode).
# appointment_resources is listed through its appointment, not its own copy of tenant_id, so that the
# trigger that fills that copy is checked too.
TENANT_ROWS = {
    **{
        table: f"SELECT id FROM {table} WHERE tenant_id = :tenant"
        for table in (
            "api_keys",
            "appointments",
            "audit_logs",
            "business_metrics",
            "clients",
            "intake_jobs",
            "notifications",
            "payments",
            "resources",
            "services",
            "subscriptions",
            "tenant_users",
            "vapi_call_logs",
            "vapi_configurations",
        )
    },
    "tenants": "SELECT id FROM tenants WHERE id = :tenant",
    "appointment_resources": "SELECT x.id FROM appointment_resources x"
    " JOIN appointments p ON p.id = x.appointment_id WHERE p.tenant_id = :tenant",
    "service_resources": "SELECT x.id FROM service_resources x"
    " JOIN services p ON p.id = x.service_id WHERE p.tenant_id = :tenant",
    "resource_schedules": "SELECT x.id FROM resource_schedules x"
    " JOIN resources p ON p.id = x.resource_id WHERE p.tenant_id = :tenant",
    "resource_blocks": "SELECT x.id FROM resource_blocks x"
    " JOIN resources p ON p.id = x.resource_id WHERE p.tenant_id = :tenant",
    # A tenant's unit of work sees its own templates and the system ones.
    "notification_templates": "SELECT id FROM notification_templates"
    " WHERE tenant_id = :tenant OR tenant_id IS NULL",
    # Users are seen by the tenants they belong to.
    "users": "SELECT user_id FROM tenant_users WHERE tenant_id = :tenant",
}
# Rows of nobody's tenant: plans are read by everyone; sessions and login attempts by nobody in a
# tenant's unit of work (a session by its own user, app.user_id).
GLOBAL_ROWS = {
    "subscription_plans": "SELECT id FROM subscription_plans",
    "user_sessions": "SELECT id FROM user_sessions WHERE false",
    "login_attempts": "SELECT id FROM login_attempts WHERE false",
}


@dataclass
class Business:
    tenant: Tenant
    service: Service
    client: Client
    appointment: Appointment
    resource_id: uuid.UUID
    api_key: str


def populate(db: Session) -> Business:
    """A tenant with at least one row in every table that belongs to a tenant."""
    tenant = factories.make_tenant(db)
    service = factories.make_service(db, tenant)
    resource = factories.make_resource(db, tenant)
    factories.link_service_resource(db, service, resource)
    factories.make_schedule(db, resource, 1, "09:00", "17:00")
    factories.make_block(db, resource, START + timedelta(hours=4), START + timedelta(hours=5))
    client = factories.make_client(db, tenant)
    appointment = factories.make_appointment(db, tenant, service, client, START, resources=[resource])
    factories.make_tenant_user(db, tenant, factories.make_user(db))
    factories.make_payment(db, factories.make_subscription(db, tenant))
    factories.make_notification_template(db, tenant)
    key_row, api_key = auth.new_api_key(tenant.id, "isolation")
    db.add(key_row)
    db.add(IntakeJob(tenant_id=tenant.id, kind="booking", request_hash="0" * 64, payload={}))
    db.add(
        Notification(
            tenant_id=tenant.id,
            appointment_id=appointment.id,
            recipient_type="client",
            channel="email",
            body="See you soon",
        )
    )
    db.add(VapiConfiguration(tenant_id=tenant.id))
    db.add(VapiCallLog(tenant_id=tenant.id, vapi_call_id=factories.unique("call-")))
    db.add(BusinessMetric(tenant_id=tenant.id, metric_date=date(2030, 1, 1), metric_type="daily"))
    db.flush()
    return Business(tenant, service, client, appointment, resource.id, api_key)


@pytest.fixture
def two(db):
    """Two businesses, A and B, and the system templates and plans every tenant shares."""
    factories.make_notification_template(db, None, type="welcome", locale="xx")
    factories.make_plan(db)
    return populate(db), populate(db)


def ids(session: Session, sql: str, **params) -> set[uuid.UUID]:
    return set(session.scalars(text(sql), params))


def sqlstate(error: DBAPIError) -> str:
    return error.orig.sqlstate


@pytest.mark.parametrize("table", sorted(TENANT_ROWS))
def test_a_tenant_sees_exactly_its_own_rows_without_any_filter(db, two, table):
    a, b = two
    expected = ids(db, TENANT_ROWS[table], tenant=a.tenant.id)
    others = ids(db, TENANT_ROWS[table], tenant=b.tenant.id) - expected
    assert expected and others, "the fixture leaves no row of each tenant in this table"
    with UnitOfWork(a.tenant.id) as uow:
        seen = ids(uow.session, f"SELECT id FROM {table}")
    assert seen == expected


@pytest.mark.parametrize("table", sorted(GLOBAL_ROWS))
def test_global_tables_show_a_tenant_what_it_may_see(db, two, table):
    a, _ = two
    # Something to hide in each: a session of A's user, a login attempt.
    user_id = db.scalar(text("SELECT user_id FROM tenant_users WHERE tenant_id = :t"), {"t": a.tenant.id})
    db.add(UserSession(user_id=user_id, token_jti=factories.unique("jti-"), expires_at=START))
    db.add(LoginAttempt(email="someone@example.com", ip_address="192.0.2.1", success=False))
    db.flush()
    with UnitOfWork(a.tenant.id) as uow:
        seen = ids(uow.session, f"SELECT id FROM {table}")
    assert seen == ids(db, GLOBAL_ROWS[table])
    assert ids(db, f"SELECT id FROM {table}"), "nothing to see or hide"


def test_a_user_sees_their_own_sessions_and_themself(db, two):
    a, b = two
    member_of = "SELECT user_id FROM tenant_users WHERE tenant_id = :t"
    user_a, user_b = (db.scalar(text(member_of), {"t": x.tenant.id}) for x in (a, b))
    session_a, session_b = (
        UserSession(user_id=user, token_jti=factories.unique("jti-"), expires_at=START)
        for user in (user_a, user_b)
    )
    db.add_all([session_a, session_b])
    db.flush()
    with UnitOfWork(a.tenant.id, user_id=user_a) as uow:
        assert ids(uow.session, "SELECT id FROM user_sessions") == {session_a.id}
        assert ids(uow.session, "SELECT id FROM users") == {user_a}


def test_rows_of_another_tenant_are_not_there_even_by_id(db, two):
    a, b = two
    with UnitOfWork(a.tenant.id) as uow:
        session = uow.session
        # Plain Session.get, not UnitOfWork.get (which checks the tenant itself): the database says no.
        assert session.get(Appointment, b.appointment.id) is None
        assert session.get(Client, b.client.id) is None
        assert session.get(Service, b.service.id) is None
        assert session.get(Tenant, b.tenant.id) is None
        assert session.get(Appointment, a.appointment.id) is not None
        allocations = session.scalars(
            select(AppointmentResource.appointment_id).where(
                AppointmentResource.resource_id.in_([a.resource_id, b.resource_id])
            )
        ).all()
        assert allocations == [a.appointment.id]


def test_no_context_sees_nothing_and_system_mode_sees_everyone(db, two):
    a, b = two
    shared_templates = ids(db, "SELECT id FROM notification_templates WHERE tenant_id IS NULL")
    for table, sql in TENANT_ROWS.items():
        with UnitOfWork() as uow:
            seen = ids(uow.session, f"SELECT id FROM {table}")
        assert seen == (shared_templates if table == "notification_templates" else set()), table
        with UnitOfWork(system=True) as uow:
            seen = ids(uow.session, f"SELECT id FROM {table}")
        assert ids(db, sql, tenant=a.tenant.id) | ids(db, sql, tenant=b.tenant.id) <= seen, table


def test_the_tests_own_session_lends_no_system_mode_to_an_open_unit_of_work(db, two):
    # The harness (tests/conftest.py) shares one connection between the two: this is what keeps the
    # other tests honest about row-level security.
    a, b = two
    with UnitOfWork(a.tenant.id) as uow:
        factories.make_client(db, b.tenant)
        assert db.scalar(text("SELECT count(*) FROM clients WHERE tenant_id = :t"), {"t": b.tenant.id}) == 2
        assert ids(uow.session, "SELECT tenant_id FROM clients") == {a.tenant.id}


def test_set_tenant_ends_system_mode_for_the_rest_of_the_unit_of_work(db, two):
    a, b = two
    with UnitOfWork(system=True) as uow:
        assert ids(uow.session, "SELECT id FROM tenants") >= {a.tenant.id, b.tenant.id}
        uow.set_tenant(a.tenant.id)
        assert ids(uow.session, "SELECT id FROM tenants") == {a.tenant.id}
        uow.commit()  # the context is transaction-local: the next transaction gets it again
        assert ids(uow.session, "SELECT id FROM tenants") == {a.tenant.id}
        assert uow.session.scalar(text("SELECT current_setting('app.system')")) == "off"


INSERTS_FOR_B = {
    "services": lambda b: insert(Service).values(tenant_id=b.tenant.id, name="Stolen", duration_minutes=30),
    "clients": lambda b: insert(Client).values(tenant_id=b.tenant.id, first_name="Stolen"),
    "intake_jobs": lambda b: insert(IntakeJob).values(
        tenant_id=b.tenant.id, kind="booking", request_hash="1" * 64, payload={}
    ),
    "appointments": lambda b: insert(Appointment).values(
        tenant_id=b.tenant.id,
        service_id=b.service.id,
        client_id=b.client.id,
        scheduled_start=START + timedelta(days=1),
        scheduled_end=START + timedelta(days=1, hours=1),
        booking_reference=factories.unique("X-"),
    ),
    "resource_schedules": lambda b: insert(ResourceSchedule).values(
        resource_id=b.resource_id, day_of_week=2, start_time="09:00", end_time="10:00"
    ),
    "tenants": lambda b: insert(Tenant).values(
        slug=factories.unique("t-"), name="New", business_type="salon"
    ),
    "notification_templates (system)": lambda b: insert(NotificationTemplate).values(
        tenant_id=None, name="Mine now", type="welcome", channel="sms", locale="yy", body_template="Hi"
    ),
    "subscription_plans": lambda b: insert(SubscriptionPlan).values(
        name=factories.unique("Plan "), price_monthly=1
    ),
}


@pytest.mark.parametrize("what", sorted(INSERTS_FOR_B))
def test_a_tenant_cannot_write_rows_for_another_tenant_or_for_nobody(db, two, what):
    a, b = two
    with UnitOfWork(a.tenant.id) as uow:
        with pytest.raises(DBAPIError) as refused, uow.session.begin_nested():
            uow.session.execute(INSERTS_FOR_B[what](b))
        assert sqlstate(refused.value) == INSUFFICIENT_PRIVILEGE, refused.value


def test_a_tenant_cannot_link_its_service_to_another_tenants_resource(db, two):
    a, b = two
    with UnitOfWork(a.tenant.id) as uow:
        with pytest.raises(DBAPIError) as refused, uow.session.begin_nested():
            uow.session.execute(
                insert(ServiceResource).values(service_id=a.service.id, resource_id=b.resource_id)
            )
        assert sqlstate(refused.value) == INSUFFICIENT_PRIVILEGE


def test_an_allocation_always_carries_its_appointments_tenant(db, two):
    a, b = two
    during = Range(START + timedelta(days=2), START + timedelta(days=2, hours=1), bounds="[)")
    allocation = {
        "resource_id": a.resource_id,
        "allocated_start": during.lower,
        "allocated_end": during.upper,
        "allocated_during": during,
    }
    # Whatever a writer puts in tenant_id, the trigger takes the appointment's.
    row = db.execute(
        insert(AppointmentResource)
        .values(appointment_id=a.appointment.id, tenant_id=b.tenant.id, **allocation)
        .returning(AppointmentResource.tenant_id)
    ).scalar_one()
    assert row == a.tenant.id
    # Another tenant's appointment is invisible, so the copy comes out NULL, which the policy refuses.
    with UnitOfWork(a.tenant.id) as uow:
        with pytest.raises(DBAPIError) as refused, uow.session.begin_nested():
            uow.session.execute(
                insert(AppointmentResource).values(appointment_id=b.appointment.id, **allocation)
            )
        assert sqlstate(refused.value) == INSUFFICIENT_PRIVILEGE


def test_another_tenants_rows_cannot_be_changed_or_deleted_nor_ours_given_away(db, two):
    a, b = two
    with UnitOfWork(a.tenant.id) as uow:
        session = uow.session
        renamed = session.execute(update(Service).where(Service.id == b.service.id).values(name="Mine"))
        removed = session.execute(delete(Client).where(Client.id == b.client.id))
        assert (renamed.rowcount, removed.rowcount) == (0, 0)
        # A client: services, resources and templates never change tenant at all (revision 016's trigger,
        # which fires before the policy's check).
        with pytest.raises(DBAPIError) as refused, session.begin_nested():
            session.execute(update(Client).where(Client.id == a.client.id).values(tenant_id=b.tenant.id))
        assert sqlstate(refused.value) == INSUFFICIENT_PRIVILEGE
        system_template = session.execute(
            update(NotificationTemplate).where(NotificationTemplate.tenant_id.is_(None)).values(name="Mine")
        )
        assert system_template.rowcount == 0
    db.expire_all()
    assert db.get(Service, b.service.id).name != "Mine"
    assert db.get(Client, b.client.id) is not None


def test_plans_and_system_templates_are_read_only_for_a_tenant(db, two):
    # Read by everyone, changed in system mode only (docs/schema.md): a tenant's UPDATE or DELETE finds
    # no row, while its own template is its to delete.
    a, _ = two
    plan = factories.make_plan(db)
    system_template = db.scalar(
        select(NotificationTemplate.id).where(NotificationTemplate.tenant_id.is_(None))
    )
    own_template = db.scalar(
        select(NotificationTemplate.id).where(NotificationTemplate.tenant_id == a.tenant.id)
    )
    with UnitOfWork(a.tenant.id) as uow:
        session = uow.session
        assert session.get(SubscriptionPlan, plan.id) is not None
        assert session.get(NotificationTemplate, system_template) is not None
        for statement in (
            update(SubscriptionPlan).where(SubscriptionPlan.id == plan.id).values(price_monthly=0),
            delete(SubscriptionPlan).where(SubscriptionPlan.id == plan.id),
            delete(NotificationTemplate).where(NotificationTemplate.id == system_template),
        ):
            assert session.execute(statement).rowcount == 0, statement
        assert (
            session.execute(
                delete(NotificationTemplate).where(NotificationTemplate.id == own_template)
            ).rowcount
            == 1
        )
    assert db.get(SubscriptionPlan, plan.id).price_monthly == plan.price_monthly


def test_a_tenant_cannot_change_its_members_rows_and_a_user_cannot_delete_their_own(db, two):
    # A member is readable by the tenant, but only the user themself (or system mode) updates the row,
    # and only system mode deletes it.
    a, _ = two
    member = db.scalar(text("SELECT user_id FROM tenant_users WHERE tenant_id = :t"), {"t": a.tenant.id})
    with UnitOfWork(a.tenant.id) as uow:
        assert uow.session.get(User, member) is not None
        changed = uow.session.execute(update(User).where(User.id == member).values(password_hash="STOLEN"))
        assert changed.rowcount == 0
    with UnitOfWork(user_id=member) as uow:
        assert uow.session.execute(delete(User).where(User.id == member)).rowcount == 0
    db.expire_all()
    assert db.get(User, member).password_hash != "STOLEN"


def test_the_application_role_cannot_write_the_migration_history(db):
    with UnitOfWork(system=True) as uow:
        assert uow.session.scalar(text("SELECT count(*) FROM alembic_version")) == 1
        for statement in (
            "UPDATE alembic_version SET version_num = version_num",
            "DELETE FROM alembic_version",
            "INSERT INTO alembic_version VALUES ('999')",
        ):
            with pytest.raises(DBAPIError) as refused, uow.session.begin_nested():
                uow.session.execute(text(statement))
            assert sqlstate(refused.value) == INSUFFICIENT_PRIVILEGE, statement


def test_the_audit_trail_is_append_only_for_the_application(db, two):
    a, _ = two
    with UnitOfWork(a.tenant.id) as uow:
        assert uow.session.scalar(select(AuditLog.id).limit(1)) is not None
        for statement in (update(AuditLog).values(action="DELETE"), delete(AuditLog)):
            with pytest.raises(DBAPIError) as refused, uow.session.begin_nested():
                uow.session.execute(statement)
            assert sqlstate(refused.value) == INSUFFICIENT_PRIVILEGE


@pytest.mark.parametrize("view", ["resource_availability", "appointment_stats", "tenant_dashboard"])
def test_views_apply_the_policies_of_the_tables_under_them(db, two, view):
    a, b = two
    assert {a.tenant.id, b.tenant.id} <= ids(db, f"SELECT tenant_id FROM {view}")
    with UnitOfWork(a.tenant.id) as uow:
        assert ids(uow.session, f"SELECT tenant_id FROM {view}") == {a.tenant.id}


def test_the_application_role_owns_nothing_and_bypasses_nothing(db):
    role = get_settings().db_app_role
    assert role
    with UnitOfWork() as uow:
        assert uow.session.scalar(text("SELECT current_user")) == role
    owners = (
        db.execute(text("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"))
        .scalars()
        .all()
    )
    assert owners and role not in owners
    superuser, bypasses = db.execute(
        text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :role"), {"role": role}
    ).one()
    assert (superuser, bypasses) == (False, False)


def test_every_table_has_forced_row_level_security_and_is_covered_here(db):
    tables = db.execute(
        text(
            "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class"
            " WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' AND relname <> 'alembic_version'"
        )
    ).all()
    assert {name for name, _, _ in tables} == set(TENANT_ROWS) | set(GLOBAL_ROWS)
    assert [name for name, enabled, forced in tables if not (enabled and forced)] == []


def test_with_real_connections_the_process_engine_is_bound_by_the_policies(committed_engine):
    with Session(committed_engine, expire_on_commit=False) as session:  # system mode, for setting up
        a, b = populate(session), populate(session)
        session.commit()
    role = get_settings().db_app_role
    with UnitOfWork(a.tenant.id) as uow:  # the process's own engine, as in the API and the workers
        assert uow.session.scalar(text("SELECT current_user")) == role
        assert ids(uow.session, "SELECT tenant_id FROM appointments") == {a.tenant.id}
        assert uow.session.get(Appointment, b.appointment.id) is None

    # One pooled connection, used in system mode and then without: the setting did not outlive its
    # transaction.
    engine = make_engine(pool_size=1, max_overflow=0)
    try:
        factory = sessionmaker(engine)
        with UnitOfWork(system=True, factory=factory) as uow:
            first = uow.session.scalar(text("SELECT pg_backend_pid()"))
            assert ids(uow.session, "SELECT id FROM tenants") >= {a.tenant.id, b.tenant.id}
            uow.commit()
        with UnitOfWork(factory=factory) as uow:
            assert uow.session.scalar(text("SELECT pg_backend_pid()")) == first
            assert ids(uow.session, "SELECT id FROM tenants") == set()
    finally:
        engine.dispose()


def test_the_api_answers_404_for_another_tenants_appointment(db, redis_prefix, two):
    # (tests/integration/test_api.py covers another tenant's job and service.)
    from api.app import create_app

    a, b = two
    with TestClient(create_app(), headers={"Authorization": f"Bearer {a.api_key}"}) as client:
        assert client.get(f"/v1/appointments/{a.appointment.id}").status_code == 200
        for response in (
            client.get(f"/v1/appointments/{b.appointment.id}"),
            client.post(f"/v1/appointments/{b.appointment.id}/cancel"),
            client.post(f"/v1/appointments/{b.appointment.id}/reschedule", json={"start": START.isoformat()}),
        ):
            assert response.status_code == 404, response.text
            assert response.json()["code"] == "appointment_not_found"
    assert db.get(Appointment, b.appointment.id).status == "scheduled"
