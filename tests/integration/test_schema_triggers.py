"""The updated_at/version triggers and the audit trail: an updated object sees the version its trigger
wrote, the application role cannot write the trail itself, and a tenant's own trail does not block its
hard delete."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import create_engine, text, update
from sqlalchemy.exc import DBAPIError

from core.db import UnitOfWork
from core.models import (
    Appointment,
    AppointmentResource,
    AuditLog,
    IntakeJob,
    Notification,
    VapiConfiguration,
)
from tests import factories
from tests.factories import (
    make_appointment,
    make_client,
    make_notification_template,
    make_payment,
    make_plan,
    make_resource,
    make_schedule,
    make_service,
    make_subscription,
    make_tenant,
    make_tenant_user,
    make_user,
)

LONG_AGO = datetime(2001, 1, 1, tzinfo=UTC)
T0 = datetime(2030, 3, 4, 10, 0, tzinfo=UTC)


def _save(db, row):
    db.add(row)
    db.flush()
    return row


# For each table with updated_at: build one row whose updated_at is long ago.
ROW_BUILDERS = {
    "users": lambda db: make_user(db, updated_at=LONG_AGO),
    "tenants": lambda db: make_tenant(db, updated_at=LONG_AGO),
    "services": lambda db: make_service(db, make_tenant(db), updated_at=LONG_AGO),
    "resources": lambda db: make_resource(db, make_tenant(db), updated_at=LONG_AGO),
    "clients": lambda db: make_client(db, make_tenant(db), updated_at=LONG_AGO),
    "appointments": lambda db: make_appointment(
        db,
        tenant := make_tenant(db),
        make_service(db, tenant),
        make_client(db, tenant),
        T0,
        updated_at=LONG_AGO,
    ),
    "tenant_users": lambda db: make_tenant_user(db, make_tenant(db), make_user(db), updated_at=LONG_AGO),
    "subscription_plans": lambda db: make_plan(db, updated_at=LONG_AGO),
    "subscriptions": lambda db: make_subscription(db, make_tenant(db), updated_at=LONG_AGO),
    "vapi_configurations": lambda db: _save(
        db, VapiConfiguration(tenant_id=make_tenant(db).id, updated_at=LONG_AGO)
    ),
    "notification_templates": lambda db: make_notification_template(db, make_tenant(db), updated_at=LONG_AGO),
    "notifications": lambda db: _save(
        db, Notification(recipient_type="client", channel="sms", body="Hi", updated_at=LONG_AGO)
    ),
    "resource_schedules": lambda db: make_schedule(
        db, make_resource(db, make_tenant(db)), 1, "09:00", "17:00", updated_at=LONG_AGO
    ),
    "intake_jobs": lambda db: _save(
        db,
        IntakeJob(
            tenant_id=make_tenant(db).id,
            kind="booking",
            request_hash="0" * 64,
            payload={},
            updated_at=LONG_AGO,
        ),
    ),
}
VERSIONED = {"users", "tenants", "services", "resources", "clients", "appointments"}


def test_every_table_with_updated_at_is_covered(db):
    tables = set(
        db.execute(
            text(
                "SELECT table_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND column_name = 'updated_at' "
                "AND table_name IN (SELECT tablename FROM pg_tables WHERE schemaname = 'public')"
            )
        ).scalars()
    )
    assert tables == set(ROW_BUILDERS)


@pytest.mark.parametrize("table", sorted(ROW_BUILDERS))
def test_an_update_refreshes_updated_at_and_bumps_version(db, table):
    row = ROW_BUILDERS[table](db)
    now = db.scalar(text("SELECT now()"))
    before = db.execute(text(f"SELECT * FROM {table} WHERE id = :id"), {"id": row.id}).mappings().one()
    assert before["updated_at"] == LONG_AGO

    # Even an update that tries to set the columns itself gets the trigger's values.
    assignments = "updated_at = :long_ago" + (", version = 100" if table in VERSIONED else "")
    db.execute(text(f"UPDATE {table} SET {assignments} WHERE id = :id"), {"id": row.id, "long_ago": LONG_AGO})
    db.execute(text(f"UPDATE {table} SET updated_at = updated_at WHERE id = :id"), {"id": row.id})

    after = db.execute(text(f"SELECT * FROM {table} WHERE id = :id"), {"id": row.id}).mappings().one()
    assert after["updated_at"] == now
    if table in VERSIONED:
        assert before["version"] == 1
        assert after["version"] == 3  # two updates, whatever the statement said


# --- audit trail ----------------------------------------------------------------------------------


def _audit(db, record_id):
    return db.query(AuditLog).filter(AuditLog.record_id == record_id).order_by(AuditLog.timestamp).all()


def _set_user(db, value: str) -> None:
    db.execute(text("SELECT set_config('app.user_id', :value, true)"), {"value": value})


def _booking(db):
    tenant = make_tenant(db)
    service = make_service(db, tenant)
    client = make_client(db, tenant)
    appointment = make_appointment(db, tenant, service, client, T0, resources=[make_resource(db, tenant)])
    return tenant, appointment


def test_creating_without_app_user_id_records_no_user(db):
    _set_user(db, "")  # unset in this transaction, whatever an earlier statement did
    tenant, appointment = _booking(db)
    [entry] = _audit(db, appointment.id)
    assert entry.action == "CREATE"
    assert entry.table_name == "appointments"
    assert entry.tenant_id == tenant.id
    assert entry.user_id is None and entry.user_email is None
    assert entry.old_values is None
    assert entry.new_values["id"] == str(appointment.id)
    assert entry.new_values["status"] == "scheduled"
    assert db.scalar(text("SELECT now()")) <= entry.timestamp <= db.scalar(text("SELECT clock_timestamp()"))


def test_changes_record_the_acting_user_and_old_and_new_values(db):
    user = make_user(db)
    _set_user(db, str(user.id))
    tenant, appointment = _booking(db)

    db.execute(
        update(Appointment)
        .where(Appointment.id == appointment.id)
        .values(status="confirmed", staff_notes="called the client")
    )
    db.execute(text("DELETE FROM appointments WHERE id = :id"), {"id": appointment.id})

    create, change, delete = _audit(db, appointment.id)
    assert [create.action, change.action, delete.action] == ["CREATE", "UPDATE", "DELETE"]
    assert {entry.user_id for entry in (create, change, delete)} == {user.id}
    assert change.user_email == user.email
    assert change.tenant_id == tenant.id
    assert change.old_values["status"] == "scheduled" and change.new_values["status"] == "confirmed"
    assert change.old_values["staff_notes"] is None
    assert change.new_values["staff_notes"] == "called the client"
    assert change.new_values["version"] == change.old_values["version"] + 1
    assert delete.old_values["status"] == "confirmed" and delete.new_values is None


def test_an_app_user_id_that_is_no_user_is_kept_in_context_and_does_not_fail_the_write(db):
    stranger = uuid.uuid4()
    _set_user(db, str(stranger))
    _, appointment = _booking(db)
    [entry] = _audit(db, appointment.id)
    assert entry.user_id is None
    assert entry.context == {"unknown_user_id": str(stranger)}


def _audited_row(db, tenant, table):
    """A new row of one of the audited tables, of `tenant`."""
    return {
        "appointments": lambda: make_appointment(
            db, tenant, make_service(db, tenant), make_client(db, tenant), T0
        ),
        "payments": lambda: make_payment(db, make_subscription(db, tenant), amount=Decimal("10.00")),
        "clients": lambda: make_client(db, tenant),
        "services": lambda: make_service(db, tenant),
        "resources": lambda: make_resource(db, tenant),
        "subscriptions": lambda: make_subscription(db, tenant),
    }[table]()


@pytest.mark.parametrize("table", ["payments", "clients", "services", "resources", "subscriptions"])
def test_the_other_audited_tables(db, table):
    tenant = make_tenant(db)
    row = _audited_row(db, tenant, table)
    db.execute(text(f"UPDATE {table} SET created_at = created_at WHERE id = :id"), {"id": row.id})
    entries = _audit(db, row.id)
    assert [entry.action for entry in entries] == ["CREATE", "UPDATE"]
    assert {entry.table_name for entry in entries} == {table}
    assert {entry.tenant_id for entry in entries} == {tenant.id}


@pytest.mark.parametrize(
    "table", ["appointments", "payments", "clients", "services", "resources", "subscriptions"]
)
def test_a_delete_of_every_audited_table_is_recorded_with_the_old_row(db, table):
    tenant = make_tenant(db)
    row = _audited_row(db, tenant, table)
    db.execute(text(f"DELETE FROM {table} WHERE id = :id"), {"id": row.id})
    entries = _audit(db, row.id)
    assert [entry.action for entry in entries] == ["CREATE", "DELETE"]
    assert entries[1].old_values["id"] == str(row.id) and entries[1].new_values is None
    assert entries[1].tenant_id == tenant.id


def test_changes_in_one_transaction_keep_their_order_in_the_trail(db):
    # clock_timestamp(), not the transaction's now(): with now() all three tie (docs/schema.md).
    _, appointment = _booking(db)
    db.execute(update(Appointment).where(Appointment.id == appointment.id).values(status="confirmed"))
    db.execute(text("DELETE FROM appointments WHERE id = :id"), {"id": appointment.id})
    entries = _audit(db, appointment.id)
    assert [entry.action for entry in entries] == ["CREATE", "UPDATE", "DELETE"]
    assert entries[0].timestamp < entries[1].timestamp < entries[2].timestamp


def test_unaudited_tables_leave_no_trail(db):
    tenant = make_tenant(db)
    assert _audit(db, tenant.id) == []


def test_the_audit_function_works_on_a_table_without_tenant_id(db):
    db.execute(
        text("CREATE TEMP TABLE audit_probe (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), note text)")
    )
    db.execute(
        text(
            "CREATE TRIGGER audit_probe AFTER INSERT OR UPDATE OR DELETE ON audit_probe "
            "FOR EACH ROW EXECUTE FUNCTION audit_trigger_function()"
        )
    )
    record_id = db.scalar(text("INSERT INTO audit_probe (note) VALUES ('hello') RETURNING id"))
    [entry] = _audit(db, record_id)
    assert entry.table_name == "audit_probe"
    assert entry.tenant_id is None
    assert entry.new_values == {"id": str(record_id), "note": "hello"}
    # 017's shortcut for a vanished tenant skipped these deletes until 018.
    db.execute(text("UPDATE audit_probe SET note = 'bye'"))
    db.execute(text("DELETE FROM audit_probe"))
    assert [entry.action for entry in _audit(db, record_id)] == ["CREATE", "UPDATE", "DELETE"]


# --- appointments in the past ---------------------------------------------------------------------


def test_an_appointment_in_the_past_can_be_recorded_completed_and_cancelled(db):
    """No CHECK reads the clock: yesterday's appointment is finished today, and history can be entered."""
    tenant = make_tenant(db)
    service = make_service(db, tenant)
    client = make_client(db, tenant)
    chair = make_resource(db, tenant)
    now = db.scalar(text("SELECT now()"))
    past = now - timedelta(days=2)
    done = make_appointment(db, tenant, service, client, past, resources=[chair])
    missed = make_appointment(db, tenant, service, client, past + timedelta(hours=1), resources=[chair])

    db.execute(
        update(Appointment)
        .where(Appointment.id == done.id)
        .values(
            status="completed", actual_start=past, actual_end=past + timedelta(minutes=30), final_price=25
        )
    )
    db.execute(
        update(Appointment)
        .where(Appointment.id == missed.id)
        .values(status="cancelled", cancellation_reason="client called")
    )
    db.execute(
        update(AppointmentResource)
        .where(AppointmentResource.appointment_id == missed.id)
        .values(active=False)
    )
    db.expire_all()
    assert db.get(Appointment, done.id).status == "completed"
    assert db.get(Appointment, missed.id).status == "cancelled"
    assert db.get(Appointment, missed.id).version == 2
    assert [resource.active for resource in db.get(Appointment, missed.id).resources] == [False]

    # Also an appointment whose times fall outside 06:00-23:00 UTC (the seed's dropped CHECK).
    late = datetime(2030, 3, 4, 23, 30, tzinfo=UTC)
    make_appointment(db, tenant, service, client, late)


def test_a_tenant_with_audited_rows_can_be_hard_deleted_once_its_audit_rows_are_removed(database_url):
    owner = create_engine(database_url)  # the owner/superuser, as an operator would do it
    try:
        with owner.connect() as connection, connection.begin() as transaction:
            tenant_id = connection.execute(
                text(
                    "INSERT INTO tenants (slug, name, business_type) VALUES (:slug, 'T', 'salon') RETURNING id"
                ),
                {"slug": f"rev017-{uuid.uuid4().hex[:8]}"},
            ).scalar_one()
            connection.execute(
                text("INSERT INTO services (tenant_id, name, duration_minutes) VALUES (:t, 'Cut', 30)"),
                {"t": tenant_id},
            )
            connection.execute(text("DELETE FROM audit_logs WHERE tenant_id = :t"), {"t": tenant_id})
            try:
                with connection.begin_nested():
                    connection.execute(text("DELETE FROM tenants WHERE id = :t"), {"t": tenant_id})
            except DBAPIError as error:
                pytest.fail(f"tenant delete refused after removing its audit rows: {error.orig}")
            finally:
                transaction.rollback()
    finally:
        owner.dispose()


def test_the_application_role_cannot_write_the_audit_trail_itself(db):
    tenant = factories.make_tenant(db)
    someone = factories.make_user(db)
    with UnitOfWork(tenant_id=tenant.id) as uow:
        with pytest.raises(DBAPIError) as caught:
            uow.session.execute(
                text(
                    "INSERT INTO audit_logs (tenant_id, action, table_name, record_id, user_id, user_email)"
                    " VALUES (:t, 'DELETE', 'appointments', gen_random_uuid(), :u, :e)"
                ),
                {"t": tenant.id, "u": someone.id, "e": someone.email},
            )
        assert caught.value.orig.sqlstate == "42501"


def test_an_updated_object_sees_the_version_its_trigger_wrote(db):
    service = factories.make_service(db, factories.make_tenant(db))
    assert service.version == 1
    service.name = "Renamed"
    db.flush()
    assert db.scalar(text("SELECT version FROM services WHERE id = :id"), {"id": service.id}) == 2
    assert service.version == 2
