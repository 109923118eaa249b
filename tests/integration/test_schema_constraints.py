"""Every CHECK, unique, partial-unique and exclusion constraint of the schema, each shown to bite."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import null, select, text, update
from sqlalchemy.dialects.postgresql import Range
from sqlalchemy.exc import OperationalError

from core.booking import SHARED_RESOURCE_LOCKS, resource_day_keys
from core.models import (
    ApiKey,
    Appointment,
    AppointmentResource,
    AuditLog,
    BusinessMetric,
    Client,
    IntakeJob,
    Notification,
    Resource,
    ResourceBlock,
    Service,
    Tenant,
    UserSession,
    VapiCallLog,
    VapiConfiguration,
)
from tests.factories import (
    CHECK_VIOLATION,
    EXCLUSION_VIOLATION,
    FOREIGN_KEY_VIOLATION,
    NOT_NULL_VIOLATION,
    UNIQUE_VIOLATION,
    link_service_resource,
    make_appointment,
    make_block,
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
    violates,
)

T0 = datetime(2030, 3, 4, 10, 0, tzinfo=UTC)  # a Monday, far from any real "now"


def _setup(db):
    tenant = make_tenant(db)
    service = make_service(db, tenant, duration_minutes=30)
    client = make_client(db, tenant)
    return tenant, service, client


def _allocation(appointment, resource, start, end, during=None, **columns):
    return AppointmentResource(
        appointment_id=appointment.id,
        resource_id=resource.id,
        allocated_start=start,
        allocated_end=end,
        allocated_during=during if during is not None else Range(start, end, bounds="[)"),
        **columns,
    )


def _notification(db, **columns):
    values = {"recipient_type": "client", "channel": "email", "body": "Hello"}
    values.update(columns)
    db.add(Notification(**values))


def _intake_job(db, tenant, **columns):
    values = {"tenant_id": tenant.id, "kind": "booking", "request_hash": "0" * 64, "payload": {}}
    values.update(columns)
    db.add(IntakeJob(**values))


def _bad_allocation(db, during_for):
    tenant, service, client = _setup(db)
    resource = make_resource(db, tenant)
    appointment = make_appointment(db, tenant, service, client, T0)
    end = T0 + timedelta(minutes=30)
    db.add(_allocation(appointment, resource, T0, end, during=during_for(T0, end)))


# One violating write per CHECK constraint: (constraint name, function doing the write).
CHECK_CASES = {
    "users_email_format": lambda db: make_user(db, email="not-an-email"),
    "users_phone_format": lambda db: make_user(db, phone="0600 123 456"),
    "tenants_slug_format": lambda db: make_tenant(db, slug="Not A Slug"),
    "tenants_business_type_valid": lambda db: make_tenant(db, business_type="casino"),
    "tenants_subscription_status_valid": lambda db: make_tenant(db, subscription_status="free"),
    "tenant_users_role_valid": lambda db: make_tenant_user(db, make_tenant(db), make_user(db), role="god"),
    "subscriptions_status_valid": lambda db: make_subscription(db, make_tenant(db), status="paused"),
    "subscriptions_billing_period_valid": lambda db: make_subscription(
        db, make_tenant(db), billing_period="weekly"
    ),
    "subscriptions_period_valid": lambda db: make_subscription(
        db, make_tenant(db), current_period_start=T0, current_period_end=T0
    ),
    "payments_status_valid": lambda db: make_payment(
        db, make_subscription(db, make_tenant(db)), status="lost"
    ),
    "payments_amount_positive": lambda db: make_payment(
        db, make_subscription(db, make_tenant(db)), amount=Decimal("0.00")
    ),
    "notification_templates_type_valid": lambda db: make_notification_template(
        db, make_tenant(db), type="spam"
    ),
    "notification_templates_channel_valid": lambda db: make_notification_template(
        db, make_tenant(db), channel="fax"
    ),
    "notifications_status_valid": lambda db: _notification(db, status="lost"),
    "notifications_recipient_type_valid": lambda db: _notification(db, recipient_type="robot"),
    "notifications_channel_valid": lambda db: _notification(db, channel="fax"),
    "notifications_type_valid": lambda db: _notification(db, notification_type="spam"),
    "notifications_attempts_non_negative": lambda db: _notification(db, attempts=-1),
    "notifications_appointment_has_tenant": lambda db: _notification(
        db, appointment_id=make_appointment(db, *_setup(db), T0).id
    ),
    "services_duration_positive": lambda db: make_service(db, make_tenant(db), duration_minutes=0),
    "services_price_non_negative": lambda db: make_service(db, make_tenant(db), base_price=Decimal("-1")),
    "services_buffer_non_negative": lambda db: make_service(db, make_tenant(db), buffer_time_minutes=-5),
    "services_available_days_valid": lambda db: make_service(db, make_tenant(db), available_days=["1", "2"]),
    "services_available_hours_valid": lambda db: make_service(
        db, make_tenant(db), available_hours={"start": "9am", "end": "18:00"}
    ),
    "services_advance_booking_valid": lambda db: make_service(
        db, make_tenant(db), max_advance_booking_days=1_000_000
    ),
    "resources_type_valid": lambda db: make_resource(db, make_tenant(db), "robot"),
    "resources_capacity_positive": lambda db: make_resource(db, make_tenant(db), "room", 0),
    "clients_phone_format": lambda db: make_client(db, make_tenant(db), phone="phone"),
    "appointments_status_valid": lambda db: make_appointment(db, *_setup(db), T0, status="maybe"),
    "appointments_payment_status_valid": lambda db: make_appointment(
        db, *_setup(db), T0, payment_status="owed"
    ),
    "appointments_end_after_start": lambda db: make_appointment(db, *_setup(db), T0, end=T0),
    "service_resources_quantity_positive": lambda db: link_service_resource(
        db, make_service(db, tenant := make_tenant(db)), make_resource(db, tenant), quantity_required=0
    ),
    "appointment_resources_end_after_start": lambda db: _bad_allocation_end_before_start(db),
    "appointment_resources_during_valid": lambda db: _bad_allocation(
        db, lambda start, end: Range(start + timedelta(minutes=1), end, bounds="[)")
    ),
    "appointment_resources_units_positive": lambda db: make_appointment(
        db, *(setup := _setup(db)), T0, resources=[make_resource(db, setup[0])], units=0
    ),
    "resource_schedules_day_valid": lambda db: make_schedule(
        db, make_resource(db, make_tenant(db)), 7, "09:00", "17:00"
    ),
    "resource_schedules_end_after_start": lambda db: make_schedule(
        db, make_resource(db, make_tenant(db)), 1, "17:00", "09:00"
    ),
    "resource_schedules_effective_range_valid": lambda db: make_schedule(
        db,
        make_resource(db, make_tenant(db)),
        1,
        "09:00",
        "17:00",
        effective_from=date(2030, 2, 1),
        effective_until=date(2030, 1, 31),
    ),
    "resource_blocks_type_valid": lambda db: make_block(
        db, make_resource(db, make_tenant(db)), T0, T0 + timedelta(hours=1), block_type="nap"
    ),
    "resource_blocks_end_after_start": lambda db: make_block(db, make_resource(db, make_tenant(db)), T0, T0),
    "resource_blocks_recurrence_consistent": lambda db: make_block(
        db, make_resource(db, make_tenant(db)), T0, T0 + timedelta(hours=1), is_recurring=True
    ),
    # The application role cannot write the trail at all (revision 017): checked as the login user.
    "audit_logs_action_valid": lambda db: (
        db.execute(text("SET LOCAL ROLE NONE")),
        db.add(AuditLog(action="HACK", table_name="appointments")),
    ),
    "business_metrics_type_valid": lambda db: db.add(
        BusinessMetric(tenant_id=make_tenant(db).id, metric_date=date(2030, 1, 1), metric_type="hourly")
    ),
    "intake_jobs_kind_valid": lambda db: _intake_job(db, make_tenant(db), kind="refund"),
    "intake_jobs_status_valid": lambda db: _intake_job(db, make_tenant(db), status="lost"),
}


def _bad_allocation_end_before_start(db):
    tenant, service, client = _setup(db)
    appointment = make_appointment(db, tenant, service, client, T0)
    # Both checks would fail on a reversed range; an empty-looking allocation isolates end_after_start.
    db.add(
        _allocation(
            appointment,
            make_resource(db, tenant),
            T0,
            T0,
            during=Range(T0, T0 + timedelta(minutes=5), bounds="[)"),
        )
    )


@pytest.mark.parametrize("constraint", sorted(CHECK_CASES))
def test_check_constraint_rejects_a_violating_row(db, constraint):
    with violates(db, constraint, CHECK_VIOLATION):
        CHECK_CASES[constraint](db)


def test_every_check_constraint_has_a_case(db):
    in_database = set(
        db.execute(
            text(
                "SELECT c.conname FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace"
                " WHERE c.contype = 'c' AND n.nspname = 'public' AND c.conrelid <> 0"
            )
        ).scalars()
    )
    assert in_database - set(CHECK_CASES) == set(), "add a violating case for each new CHECK"
    assert set(CHECK_CASES) - in_database == set()


@pytest.mark.parametrize(
    "during",
    [
        pytest.param(
            lambda start, end: Range(start, end - timedelta(minutes=1), bounds="[)"), id="ends-early"
        ),
        pytest.param(lambda start, end: Range(start, end, bounds="[]"), id="closed-upper"),
        pytest.param(lambda start, end: Range(start, end, bounds="()"), id="open-lower"),
        pytest.param(lambda start, end: Range(start, None, bounds="[)"), id="unbounded"),
    ],
)
def test_allocated_during_must_be_the_half_open_allocation(db, during):
    with violates(db, "appointment_resources_during_valid", CHECK_VIOLATION):
        _bad_allocation(db, during)


@pytest.mark.parametrize(
    "hours", [{"start": "09:00"}, {"end": "18:00"}, {"begin": "09:00", "finish": "18:00"}, {"start": None}]
)
def test_service_hours_need_both_a_start_and_an_end(db, hours):
    # The planner reads hours["start"] and hours["end"] of any non-empty object: a missing one was a 500.
    with violates(db, "services_available_hours_valid", CHECK_VIOLATION):
        make_service(db, make_tenant(db), available_hours=hours)


def test_a_service_may_close_at_24_00_with_seconds_but_not_at_a_time_the_core_cannot_read(db):
    # 020's pattern reached the catalog as `24:00(NULL)?`: SQLAlchemy took `:00` for a bound parameter.
    make_service(db, make_tenant(db), available_hours={"start": "09:00", "end": "24:00:00"})
    db.flush()
    with violates(db, "services_available_hours_valid", CHECK_VIOLATION):
        make_service(db, make_tenant(db), available_hours={"start": "09:00", "end": "24:00NULL"})


def test_no_definition_in_the_catalog_has_null_inside_a_quoted_literal(db):
    # How a `:name` that SQLAlchemy mistook for a bound parameter shows in DDL it wrote (revision 022).
    definitions = db.execute(
        text(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE connamespace = 'public'::regnamespace"
            " UNION ALL SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
            " UNION ALL SELECT table_name || '.' || column_name, column_default FROM information_schema.columns"
            " WHERE table_schema = 'public' AND column_default IS NOT NULL"
            " UNION ALL SELECT viewname, definition FROM pg_views WHERE schemaname = 'public'"
        )
    ).all()
    assert len(definitions) > 100
    # PostgreSQL wrote these definitions back itself: every literal is quoted, no comment holds an apostrophe.
    mangled = [
        name
        for name, definition in definitions
        if any("NULL" in literal for literal in re.findall(r"'(?:[^']|'')*'", definition))
    ]
    assert mangled == []


@pytest.mark.parametrize(
    "column, limit", [("min_advance_booking_hours", 87600), ("max_advance_booking_days", 3650)]
)
def test_advance_booking_limits_run_from_zero_to_ten_years_inclusive(db, column, limit):
    # docs/schema.md, revision 019: hours 0 to 87600, days 0 to 3650; the bounds themselves pass.
    for value in (0, limit):
        make_service(db, make_tenant(db), **{column: value})
    db.flush()
    for value in (-1, limit + 1):
        with violates(db, "services_advance_booking_valid", CHECK_VIOLATION):
            make_service(db, make_tenant(db), **{column: value})


@pytest.mark.parametrize(
    "days",
    [[7], [-1], [1, 2, 8], [1.5], 3, {"1": True}],
    ids=["seven", "minus-one", "eight-among-valid", "fraction", "bare-number", "object"],
)
def test_service_days_must_be_an_array_of_the_days_0_to_6(db, days):
    # A bare 3 is "contained" in [0..6] by jsonb's rule for scalars: only jsonb_typeof refuses it.
    service = make_service(db, make_tenant(db))
    with violates(db, "services_available_days_valid", CHECK_VIOLATION):
        db.execute(
            text("UPDATE services SET available_days = CAST(:days AS jsonb) WHERE id = :id"),
            {"days": json.dumps(days), "id": service.id},
        )


def test_service_days_0_and_6_are_sunday_and_saturday(db):
    make_service(db, make_tenant(db), available_days=[0, 6])
    db.flush()


@pytest.mark.parametrize(
    "hours",
    [
        {"start": "x09:00", "end": "18:00"},
        {"start": "09:00", "end": "18:00x"},
        {"start": "24:00", "end": "02:00"},
        {"start": "09:00", "end": "24:30"},
        {"start": "09:60", "end": "18:00"},
        {"start": "09:00", "end": "25:00"},
    ],
)
def test_service_hours_must_be_clock_times_from_start_to_end_of_the_text(db, hours):
    with violates(db, "services_available_hours_valid", CHECK_VIOLATION):
        make_service(db, make_tenant(db), available_hours=hours)


@pytest.mark.parametrize(
    "day, start, end",
    [(-1, "09:00", "17:00"), (1, "09:00", "09:00"), (1, "00:00", "00:00")],
    ids=["day-minus-one", "empty-shift", "midnight-to-midnight"],
)
def test_a_schedule_row_needs_a_day_0_to_6_and_an_end_after_its_start(db, day, start, end):
    # Written in SQL: the model would store an end of 00:00 as 24:00. `end_time > start_time` is what rules
    # out 00:00 as an end (docs/schema.md): a 00:00-00:00 row would be read as the whole day.
    resource = make_resource(db, make_tenant(db))
    constraint = "resource_schedules_day_valid" if day < 0 else "resource_schedules_end_after_start"
    with violates(db, constraint, CHECK_VIOLATION):
        db.execute(
            text(
                "INSERT INTO resource_schedules (resource_id, day_of_week, start_time, end_time)"
                " VALUES (:resource, :day, :start, :end)"
            ),
            {"resource": resource.id, "day": day, "start": start, "end": end},
        )


@pytest.mark.parametrize("phone", ["0612345678", "+0612345678"])
def test_a_phone_number_cannot_start_with_zero(db, phone):
    # E.164: the country code comes first and never starts with 0.
    with violates(db, "clients_phone_format", CHECK_VIOLATION):
        make_client(db, make_tenant(db), phone=phone)
    with violates(db, "users_phone_format", CHECK_VIOLATION):
        make_user(db, phone=phone)


@pytest.mark.parametrize(
    "build",
    [
        lambda db: make_user(db, email="first.last+tag@sub.example.org", phone="34600111222"),
        lambda db: make_client(db, make_tenant(db), phone="+14155550100", email=None),
        lambda db: make_tenant(db, slug="bella-hair-salon-2"),
        lambda db: make_service(db, make_tenant(db), available_hours={}),  # all day
        lambda db: make_service(db, make_tenant(db), available_hours={"start": "18:00", "end": "02:00"}),
        lambda db: make_block(
            db, make_resource(db, make_tenant(db)), T0, T0 + timedelta(hours=1), "FREQ=WEEKLY;BYDAY=MO"
        ),
    ],
)
def test_valid_values_pass_the_checks(db, build):
    build(db)
    db.flush()


def test_tightened_not_null_columns(db):
    with violates(db, None, NOT_NULL_VIOLATION):
        make_tenant(db, timezone=null())  # None would let the server default in
    with violates(db, None, NOT_NULL_VIOLATION):
        make_service(db, make_tenant(db), buffer_time_minutes=null())
    with violates(db, None, NOT_NULL_VIOLATION):
        make_appointment(db, *_setup(db), T0, status=null())


def test_no_nullable_column_has_a_default(db):
    # Where NULL is allowed it means something (effective_from: "since always"); a default there would be
    # stored instead whenever a writer leaves the column out, or the ORM is given None.
    defaulted_nullable = db.execute(
        text(
            "SELECT table_name || '.' || column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND is_nullable = 'YES' AND column_default IS NOT NULL"
            " AND table_name IN (SELECT tablename FROM pg_tables WHERE schemaname = 'public')"
        )
    ).scalars()
    assert sorted(defaulted_nullable) == []


def test_a_notification_or_a_job_written_without_a_status_waits_to_be_picked_up(db):
    # The seed's defaults: a row written without a status is pending (notifications) or queued (intake
    # jobs), the states the sender and the sweeper look for; `sending` or `running` would strand it.
    tenant = make_tenant(db)
    statuses = db.execute(
        text(
            "WITH n AS (INSERT INTO notifications (recipient_type, channel, body)"
            " VALUES ('client', 'sms', 'Hi') RETURNING status),"
            " j AS (INSERT INTO intake_jobs (tenant_id, kind, request_hash, payload)"
            " VALUES (:tenant, 'booking', repeat('0', 64), '{}') RETURNING status)"
            " SELECT n.status, j.status FROM n, j"
        ),
        {"tenant": tenant.id},
    ).one()
    assert tuple(statuses) == ("pending", "queued")


def test_a_schedule_written_without_a_date_is_in_effect_since_always(db):
    # CURRENT_DATE, the seed's default, is the UTC date in the application's sessions: on a New York
    # evening a schedule written then came into effect only the next day (revision 021).
    resource = make_resource(db, make_tenant(db))
    schedule_id = db.scalar(
        text(
            "INSERT INTO resource_schedules (resource_id, day_of_week, start_time, end_time)"
            " VALUES (:resource, 1, '09:00', '17:00') RETURNING id"
        ),
        {"resource": resource.id},
    )
    stored = db.scalar(
        text("SELECT effective_from FROM resource_schedules WHERE id = :id"), {"id": schedule_id}
    )
    assert stored is None


# --- unique constraints -------------------------------------------------------------------------


def test_user_email_and_tenant_slug_are_unique(db):
    user = make_user(db)
    with violates(db, "users_email_key", UNIQUE_VIOLATION):
        make_user(db, email=user.email)
    tenant = make_tenant(db)
    with violates(db, "tenants_slug_key", UNIQUE_VIOLATION):
        make_tenant(db, slug=tenant.slug)


def test_membership_and_service_resource_pairs_are_unique(db):
    tenant, user = make_tenant(db), make_user(db)
    make_tenant_user(db, tenant, user)
    with violates(db, "tenant_users_tenant_id_user_id_key", UNIQUE_VIOLATION):
        make_tenant_user(db, tenant, user, role="staff")
    service, resource = make_service(db, tenant), make_resource(db, tenant)
    link_service_resource(db, service, resource)
    with violates(db, "service_resources_service_id_resource_id_key", UNIQUE_VIOLATION):
        link_service_resource(db, service, resource, is_required=False)


def test_external_ids_are_unique(db):
    tenant = make_tenant(db)
    user = make_user(db)
    subscription = make_subscription(db, tenant, stripe_subscription_id="sub_123")
    with violates(db, "subscriptions_stripe_subscription_id_key", UNIQUE_VIOLATION):
        make_subscription(db, tenant, subscription.plan, stripe_subscription_id="sub_123")
    db.add(UserSession(user_id=user.id, token_jti="jti-1", expires_at=T0))
    db.flush()
    with violates(db, "user_sessions_token_jti_key", UNIQUE_VIOLATION):
        db.add(UserSession(user_id=user.id, token_jti="jti-1", expires_at=T0))
    db.add(VapiConfiguration(tenant_id=tenant.id))
    db.flush()
    with violates(db, "vapi_configurations_tenant_id_key", UNIQUE_VIOLATION):
        db.add(VapiConfiguration(tenant_id=tenant.id))
    db.add(VapiCallLog(tenant_id=tenant.id, vapi_call_id="call-1"))
    db.flush()
    with violates(db, "vapi_call_logs_vapi_call_id_key", UNIQUE_VIOLATION):
        db.add(VapiCallLog(tenant_id=tenant.id, vapi_call_id="call-1"))
    db.add(ApiKey(tenant_id=tenant.id, name="app", key_prefix="va_live_abcd", key_hash="h"))
    db.flush()
    with violates(db, "api_keys_key_prefix_key", UNIQUE_VIOLATION):
        db.add(ApiKey(tenant_id=tenant.id, name="other", key_prefix="va_live_abcd", key_hash="h2"))
    _notification(db, dedupe_key="reminder:1")
    db.flush()
    with violates(db, "notifications_dedupe_key_key", UNIQUE_VIOLATION):
        _notification(db, dedupe_key="reminder:1")
    db.add(BusinessMetric(tenant_id=tenant.id, metric_date=date(2030, 1, 1), metric_type="daily"))
    db.flush()
    with violates(db, "business_metrics_tenant_id_metric_date_metric_type_key", UNIQUE_VIOLATION):
        db.add(BusinessMetric(tenant_id=tenant.id, metric_date=date(2030, 1, 1), metric_type="daily"))


def test_one_template_per_type_channel_and_locale_for_the_system_and_for_each_tenant(db):
    # Revision 012: the sender picks "the" template of a (type, channel, locale); two would be a coin toss.
    tenant = make_tenant(db)
    for owner in (None, tenant):
        make_notification_template(db, owner, type="welcome", channel="sms", locale="qa")
        make_notification_template(db, owner, type="welcome", channel="sms", locale="qb")
    make_notification_template(db, make_tenant(db), type="welcome", channel="sms", locale="qa")
    db.flush()
    with violates(db, "notification_templates_system_key", UNIQUE_VIOLATION):
        make_notification_template(db, None, type="welcome", channel="sms", locale="qa")
    with violates(db, "notification_templates_tenant_key", UNIQUE_VIOLATION):
        make_notification_template(db, tenant, type="welcome", channel="sms", locale="qb")


def test_a_tenants_metrics_are_unique_per_date_and_period_type(db):
    tenant = make_tenant(db)
    for metric_type in ("daily", "weekly", "monthly"):
        db.add(BusinessMetric(tenant_id=tenant.id, metric_date=date(2030, 1, 6), metric_type=metric_type))
    db.flush()
    with violates(db, "business_metrics_tenant_id_metric_date_metric_type_key", UNIQUE_VIOLATION):
        db.add(BusinessMetric(tenant_id=tenant.id, metric_date=date(2030, 1, 6), metric_type="weekly"))


def test_booking_reference_is_unique(db):
    tenant, service, client = _setup(db)
    make_appointment(db, tenant, service, client, T0, booking_reference="REF-1")
    with violates(db, "appointments_booking_reference_key", UNIQUE_VIOLATION):
        make_appointment(db, tenant, service, client, T0 + timedelta(days=1), booking_reference="REF-1")


def test_idempotency_key_is_unique_per_tenant_and_may_be_absent(db):
    tenant, other = make_tenant(db), make_tenant(db)
    _intake_job(db, tenant, idempotency_key="key-1")
    _intake_job(db, other, idempotency_key="key-1")
    _intake_job(db, tenant, idempotency_key=None)
    _intake_job(db, tenant, idempotency_key=None)
    db.flush()
    with violates(db, "intake_jobs_tenant_id_idempotency_key_key", UNIQUE_VIOLATION):
        _intake_job(db, tenant, idempotency_key="key-1")


@pytest.mark.parametrize(
    "column, index",
    [("email", "clients_email_unique_per_tenant"), ("phone", "clients_phone_unique_per_tenant")],
)
def test_client_email_and_phone_are_unique_among_live_clients_of_a_tenant(db, column, index):
    tenant = make_tenant(db)
    client = make_client(db, tenant)
    value = getattr(client, column)
    with violates(db, index, UNIQUE_VIOLATION):
        make_client(db, tenant, **{column: value})
    make_client(db, make_tenant(db), **{column: value})  # another tenant may have the same client

    db.execute(update(Client).where(Client.id == client.id).values(deleted_at=T0))
    replacement = make_client(db, tenant, **{column: value})  # a soft-deleted client no longer blocks it
    assert getattr(replacement, column) == value


def test_service_slug_is_unique_among_live_services_of_a_tenant(db):
    tenant = make_tenant(db)
    service = make_service(db, tenant, slug="haircut")
    with violates(db, "services_tenant_id_slug_key", UNIQUE_VIOLATION):
        make_service(db, tenant, slug="haircut")
    make_service(db, make_tenant(db), slug="haircut")
    make_service(db, tenant, slug=None)
    make_service(db, tenant, slug=None)
    db.execute(update(Service).where(Service.id == service.id).values(deleted_at=T0))
    make_service(db, tenant, slug="haircut")


# --- the double-booking guard -------------------------------------------------------------------


def _booking(db, tenant, service, client, resource, start, minutes=30, **kwargs):
    return make_appointment(
        db, tenant, service, client, start, start + timedelta(minutes=minutes), resources=[resource], **kwargs
    )


def test_overlapping_allocations_of_one_resource_are_rejected(db):
    tenant, service, client = _setup(db)
    chair = make_resource(db, tenant, "room", 1)
    _booking(db, tenant, service, client, chair, T0)
    with violates(db, "appointment_resources_no_overlap", EXCLUSION_VIOLATION):
        _booking(db, tenant, service, client, chair, T0 + timedelta(minutes=29))
    with violates(db, "appointment_resources_no_overlap", EXCLUSION_VIOLATION):
        _booking(db, tenant, service, client, chair, T0 - timedelta(minutes=10), minutes=60)


def test_touching_half_open_allocations_and_other_resources_are_allowed(db):
    tenant, service, client = _setup(db)
    chair, other_chair = make_resource(db, tenant, "room"), make_resource(db, tenant, "room")
    _booking(db, tenant, service, client, chair, T0)
    _booking(db, tenant, service, client, chair, T0 + timedelta(minutes=30))
    _booking(db, tenant, service, client, chair, T0 - timedelta(minutes=30))
    _booking(db, tenant, service, client, other_chair, T0)
    count = db.scalar(
        select(text("count(*)"))
        .select_from(AppointmentResource)
        .where(AppointmentResource.resource_id == chair.id)
    )
    assert count == 3


def test_the_buffer_is_part_of_the_occupied_interval(db):
    tenant, _, client = _setup(db)
    service = make_service(db, tenant, duration_minutes=30, buffer_time_minutes=15)
    chair = make_resource(db, tenant)
    _booking(db, tenant, service, client, chair, T0)  # occupies [10:00, 10:45)
    with violates(db, "appointment_resources_no_overlap", EXCLUSION_VIOLATION):
        _booking(db, tenant, service, client, chair, T0 + timedelta(minutes=30))
    _booking(db, tenant, service, client, chair, T0 + timedelta(minutes=45))


def _reactivate(db, appointment):
    """Make the appointment's allocations active again, as a writer other than the core might."""
    db.execute(
        update(AppointmentResource)
        .where(AppointmentResource.appointment_id == appointment.id)
        .values(active=True)
    )


def test_inactive_allocations_do_not_hold_the_resource(db):
    tenant, service, client = _setup(db)
    chair = make_resource(db, tenant)
    cancelled = _booking(db, tenant, service, client, chair, T0, status="cancelled")
    _booking(db, tenant, service, client, chair, T0)
    # Reviving the cancelled allocation would double-book: refused.
    with violates(db, "appointment_resources_no_overlap", EXCLUSION_VIOLATION):
        _reactivate(db, cancelled)


def test_non_exclusive_allocations_may_overlap(db):
    tenant, service, client = _setup(db)
    room = make_resource(db, tenant, "room", 4)
    for _ in range(3):
        booking = _booking(db, tenant, service, client, room, T0, units=1)
    db.refresh(booking)
    assert booking.resources[0].exclusive is False


def test_an_allocation_is_exclusive_by_its_resource_capacity_whatever_the_writer_says(db):
    # The exclusion constraint covers exclusive rows only: a writer that said `exclusive = false` for a
    # stylist could book her twice (revision 023).
    tenant, service, client = _setup(db)
    stylist, room = make_resource(db, tenant), make_resource(db, tenant, "room", 4)
    first = _booking(db, tenant, service, client, stylist, T0)
    db.execute(
        update(AppointmentResource)
        .where(AppointmentResource.resource_id == stylist.id)
        .values(exclusive=False)
    )
    with violates(db, "appointment_resources_no_overlap", EXCLUSION_VIOLATION):
        _allocate_again(db, first, stylist, exclusive=False)
    grouped = _booking(db, tenant, service, client, room, T0)
    _allocate_again(db, grouped, room, exclusive=True)
    exclusive = db.execute(
        select(AppointmentResource.resource_id, AppointmentResource.exclusive).where(
            AppointmentResource.resource_id.in_([stylist.id, room.id])
        )
    ).all()
    assert sorted(exclusive) == sorted([(stylist.id, True), (room.id, False), (room.id, False)])


def test_an_allocation_may_not_take_more_units_than_its_resource_has(db):
    tenant, service, client = _setup(db)
    room = make_resource(db, tenant, "room", 4)
    _booking(db, tenant, service, client, room, T0, units=4)
    with violates(db, "appointment_resources_units_within_capacity", CHECK_VIOLATION):
        _booking(db, tenant, service, client, room, T0 + timedelta(hours=2), units=5)
    with violates(db, "appointment_resources_units_within_capacity", CHECK_VIOLATION):
        _booking(db, tenant, service, client, make_resource(db, tenant), T0, units=2)


def test_a_capacity_lowered_makes_the_resources_allocations_exclusive_or_is_refused(db):
    # Allocations written while the room held two stayed non-exclusive once it held one, and a new booking
    # could overlap them (found in review, revision 024).
    tenant, service, client = _setup(db)
    room = make_resource(db, tenant, "room", 2)
    later = _booking(db, tenant, service, client, room, T0)
    db.execute(update(Resource).where(Resource.id == room.id).values(capacity=1))
    assert db.scalar(
        select(AppointmentResource.exclusive).where(AppointmentResource.appointment_id == later.id)
    )
    with violates(db, "appointment_resources_no_overlap", EXCLUSION_VIOLATION):
        _booking(db, tenant, service, client, room, T0)
    # Back to two: a second group fits; then down to one is refused while the two overlap.
    db.execute(update(Resource).where(Resource.id == room.id).values(capacity=2))
    _booking(db, tenant, service, client, room, T0)
    with violates(db, "appointment_resources_no_overlap", EXCLUSION_VIOLATION):
        db.execute(update(Resource).where(Resource.id == room.id).values(capacity=1))
    with violates(db, "appointment_resources_units_within_capacity", CHECK_VIOLATION):
        big = make_resource(db, tenant, "room", 4)
        _booking(db, tenant, service, client, big, T0, units=3)
        db.execute(update(Resource).where(Resource.id == big.id).values(capacity=2))


def test_a_shared_resource_never_holds_more_units_at_once_than_its_capacity(db):
    # Only the core counted a shared room's units: any other writer could put a third group in a room of
    # two (revision 025).
    tenant, service, client = _setup(db)
    room = make_resource(db, tenant, "room", 2)
    _booking(db, tenant, service, client, room, T0)
    _booking(db, tenant, service, client, room, T0 + timedelta(minutes=15))
    with violates(db, "appointment_resources_within_shared_capacity", EXCLUSION_VIOLATION):
        _booking(db, tenant, service, client, room, T0 + timedelta(minutes=20))
    with violates(db, "appointment_resources_within_shared_capacity", EXCLUSION_VIOLATION):
        _booking(db, tenant, service, client, room, T0 - timedelta(minutes=10), minutes=30)
    # Full only while both overlap: from the first one's end, and before the second one's start, a unit is free.
    _booking(db, tenant, service, client, room, T0 + timedelta(minutes=30))
    _booking(db, tenant, service, client, room, T0 - timedelta(minutes=30), minutes=45)
    with violates(db, "appointment_resources_within_shared_capacity", EXCLUSION_VIOLATION):
        _booking(db, tenant, service, client, room, T0 - timedelta(minutes=30), minutes=50)
    cancelled = _booking(db, tenant, service, client, room, T0, status="cancelled")
    with violates(db, "appointment_resources_within_shared_capacity", EXCLUSION_VIOLATION):
        _reactivate(db, cancelled)


def test_a_shared_resource_is_full_through_the_buffer_of_its_allocations(db):
    # occupied_until (014) is upper(allocated_during), buffer included: the count (025) and the availability
    # scan read it as the end of what an allocation holds.
    tenant, _, client = _setup(db)
    service = make_service(db, tenant, duration_minutes=30, buffer_time_minutes=15)
    room = make_resource(db, tenant, "room", 2)
    first = _booking(db, tenant, service, client, room, T0)  # occupies [10:00, 10:45)
    _booking(db, tenant, service, client, room, T0)
    assert db.scalar(
        select(AppointmentResource.occupied_until).where(AppointmentResource.appointment_id == first.id)
    ) == T0 + timedelta(minutes=45)
    with violates(db, "appointment_resources_within_shared_capacity", EXCLUSION_VIOLATION):
        _booking(db, tenant, service, client, room, T0 + timedelta(minutes=35))
    _booking(db, tenant, service, client, room, T0 + timedelta(minutes=45))


def test_within_a_new_allocation_one_ending_and_one_starting_at_the_same_instant_never_overlap(db):
    # Half-open intervals: at 10:30 the first group has left when the second arrives, so the room holds 2
    # (the new one and one of them) at every instant of [10:00, 11:00), never 3.
    tenant, service, client = _setup(db)
    room = make_resource(db, tenant, "room", 2)
    _booking(db, tenant, service, client, room, T0)
    _booking(db, tenant, service, client, room, T0 + timedelta(minutes=30))
    _booking(db, tenant, service, client, room, T0, minutes=60)
    with violates(db, "appointment_resources_within_shared_capacity", EXCLUSION_VIOLATION):
        _booking(db, tenant, service, client, room, T0 + timedelta(minutes=29), minutes=2)


def test_a_shared_capacity_lowered_below_what_overlapping_allocations_hold_is_refused(db):
    tenant, service, client = _setup(db)
    room = make_resource(db, tenant, "room", 4)
    for minutes in (0, 10, 20):
        _booking(db, tenant, service, client, room, T0 + timedelta(minutes=minutes))
    with violates(db, "appointment_resources_within_shared_capacity", EXCLUSION_VIOLATION):
        db.execute(update(Resource).where(Resource.id == room.id).values(capacity=2))
    db.execute(update(Resource).where(Resource.id == room.id).values(capacity=3))
    assert db.scalar(select(Resource.capacity).where(Resource.id == room.id)) == 3


_ALLOCATIONS_READ = text(
    "SELECT coalesce(sum(seq_tup_read + idx_tup_fetch), 0) FROM pg_stat_xact_user_tables"
    " WHERE relname = 'appointment_resources'"
)


def _fill_room(db, tenant, service, client, room, first: datetime, count: int) -> None:
    """`count` one-hour allocations of `room`, one starting every 15 minutes from `first` (4 overlap)."""
    db.execute(
        text(
            "WITH booked AS ("
            " INSERT INTO appointments (tenant_id, service_id, client_id, scheduled_start, scheduled_end)"
            " SELECT :tenant, :service, :client, :first + n * interval '15 minutes',"
            "        :first + n * interval '15 minutes' + interval '1 hour'"
            " FROM generate_series(0, :count - 1) AS n RETURNING id, scheduled_start, scheduled_end)"
            " INSERT INTO appointment_resources (appointment_id, resource_id, allocated_start, allocated_end,"
            "  allocated_during)"
            " SELECT id, :room, scheduled_start, scheduled_end, tstzrange(scheduled_start, scheduled_end, '[)')"
            " FROM booked"
        ),
        {
            "tenant": tenant.id,
            "service": service.id,
            "client": client.id,
            "room": room.id,
            "first": first,
            "count": count,
        },
    )


def test_counting_a_new_allocation_reads_only_the_allocations_it_overlaps(db):
    """One more group at the start of a busy room's calendar: at most 4 others overlap it, yet the trigger
    reads every later allocation of the room once per instant (sum over `occupied_until > instant`):
    ~1,000 rows here, 240 ms a booking on a room with 100,000, and a capacity change, which checks every
    future allocation, grows with their square (30 s, the statement timeout, on that room)."""
    tenant, service, client = _setup(db)
    room = make_resource(db, tenant, "room", 50)
    _fill_room(db, tenant, service, client, room, T0, 1000)
    before = db.scalar(_ALLOCATIONS_READ)
    _booking(db, tenant, service, client, room, T0 + timedelta(minutes=5), minutes=60)
    read = db.scalar(_ALLOCATIONS_READ) - before
    assert read < 100, f"one booking read {read} allocations of the room"


def test_a_capacity_change_reads_the_allocations_in_proportion_to_their_number(db):
    tenant, service, client = _setup(db)
    room = make_resource(db, tenant, "room", 50)
    _fill_room(db, tenant, service, client, room, T0, 1000)
    before = db.scalar(_ALLOCATIONS_READ)
    db.execute(update(Resource).where(Resource.id == room.id).values(capacity=51))
    read = db.scalar(_ALLOCATIONS_READ) - before
    assert read < 20 * 1000, f"a capacity change over 1,000 allocations read {read} rows"


def test_the_shared_capacity_check_waits_for_the_cores_count_of_the_same_resource_and_day(db, engine):
    # The check counts under the core's own advisory lock (core.booking._lock_shared_resources): a writer
    # that counted before a booking being made committed would let both in.
    tenant, service, client = _setup(db)
    room = make_resource(db, tenant, "room", 2)
    start = datetime(2030, 3, 4, 23, 30, tzinfo=UTC)
    with engine.connect() as holder, holder.begin():
        keys = resource_day_keys([room.id], start + timedelta(hours=1), start + timedelta(hours=2))
        holder.execute(
            text("SELECT pg_advisory_xact_lock(:namespace, hashtext(:key))"),
            {"namespace": SHARED_RESOURCE_LOCKS, "key": keys[0]},
        )
        db.execute(text("SET LOCAL lock_timeout = '300ms'"))
        _booking(db, tenant, service, client, room, start - timedelta(hours=2))  # another day: no wait
        with pytest.raises(OperationalError) as waited, db.begin_nested():
            _booking(db, tenant, service, client, room, start, minutes=60)  # 23:30 to 00:30 UTC
        assert waited.value.orig.sqlstate == "55P03"


def test_the_shared_capacity_check_waits_for_the_lock_of_each_day_it_touches(db, engine):
    # The first day's lock as much as the last one's: a count that took only one could run beside a
    # booking being made on the other day.
    tenant, service, client = _setup(db)
    room = make_resource(db, tenant, "room", 2)
    start = datetime(2030, 3, 4, 23, 30, tzinfo=UTC)
    with engine.connect() as holder, holder.begin():
        [first_day] = resource_day_keys([room.id], start, start + timedelta(minutes=10))
        holder.execute(
            text("SELECT pg_advisory_xact_lock(:namespace, hashtext(:key))"),
            {"namespace": SHARED_RESOURCE_LOCKS, "key": first_day},
        )
        db.execute(text("SET LOCAL lock_timeout = '300ms'"))
        _booking(db, tenant, service, client, room, start + timedelta(hours=1))  # the next day only: no wait
        with pytest.raises(OperationalError) as waited, db.begin_nested():
            _booking(db, tenant, service, client, room, start, minutes=60)  # 23:30 to 00:30 UTC
        assert waited.value.orig.sqlstate == "55P03"


def _move(db, appointment, **values):
    db.execute(
        update(AppointmentResource)
        .where(AppointmentResource.appointment_id == appointment.id)
        .values(**values)
    )


def test_an_allocation_moved_to_a_resource_of_capacity_1_becomes_exclusive(db):
    # 023's trigger runs on an update of resource_id too: a room's (shared) allocation moved to a stylist.
    tenant, service, client = _setup(db)
    stylist, room = make_resource(db, tenant), make_resource(db, tenant, "room", 4)
    _booking(db, tenant, service, client, stylist, T0)
    grouped = _booking(db, tenant, service, client, room, T0)
    with violates(db, "appointment_resources_no_overlap", EXCLUSION_VIOLATION):
        _move(db, grouped, resource_id=stylist.id)
    _move(db, grouped, resource_id=make_resource(db, tenant).id)
    assert db.scalar(
        select(AppointmentResource.exclusive).where(AppointmentResource.appointment_id == grouped.id)
    )


def test_units_raised_beyond_the_capacity_are_refused(db):
    tenant, service, client = _setup(db)
    booked = _booking(db, tenant, service, client, make_resource(db, tenant), T0)
    with violates(db, "appointment_resources_units_within_capacity", CHECK_VIOLATION):
        _move(db, booked, units=2)


def test_a_shared_allocation_moved_or_enlarged_is_counted_again(db):
    # 025's trigger runs on an update of the interval or the units, not only on insert.
    tenant, service, client = _setup(db)
    room = make_resource(db, tenant, "room", 3)
    _booking(db, tenant, service, client, room, T0)
    growing = _booking(db, tenant, service, client, room, T0)
    _move(db, growing, units=2)  # 3 at once: full
    with violates(db, "appointment_resources_within_shared_capacity", EXCLUSION_VIOLATION):
        _move(db, growing, units=3)
    later = _booking(db, tenant, service, client, room, T0 + timedelta(hours=2))
    end = T0 + timedelta(minutes=30)
    with violates(db, "appointment_resources_within_shared_capacity", EXCLUSION_VIOLATION):
        _move(db, later, allocated_start=T0, allocated_end=end, allocated_during=Range(T0, end, bounds="[)"))


def test_a_capacity_change_rewrites_an_allocation_in_progress_but_not_history_or_cancelled_ones(db):
    # 024: active allocations that have not ended are written again; ended or inactive ones are left as
    # they were, so a capacity below what they held is not refused because of them.
    tenant, service, client = _setup(db)
    now = db.scalar(text("SELECT now()"))
    room = make_resource(db, tenant, "room", 3)
    running = _booking(db, tenant, service, client, room, now - timedelta(minutes=10))
    for _ in range(2):
        _booking(db, tenant, service, client, room, now - timedelta(days=1))  # ended, overlapping
    _booking(db, tenant, service, client, room, T0, status="cancelled", units=3)
    db.execute(update(Resource).where(Resource.id == room.id).values(capacity=1))
    exclusive = dict(
        db.execute(
            select(AppointmentResource.appointment_id, AppointmentResource.exclusive).where(
                AppointmentResource.resource_id == room.id
            )
        ).all()
    )
    assert exclusive.pop(running.id) is True
    assert set(exclusive.values()) == {False}
    with violates(db, "appointment_resources_no_overlap", EXCLUSION_VIOLATION):
        _booking(db, tenant, service, client, room, now)


def _allocate_again(db, appointment, resource, *, exclusive):
    db.add(
        AppointmentResource(
            appointment_id=appointment.id,
            resource_id=resource.id,
            allocated_start=appointment.scheduled_start,
            allocated_end=appointment.scheduled_end,
            allocated_during=Range(appointment.scheduled_start, appointment.scheduled_end, bounds="[)"),
            exclusive=exclusive,
        )
    )
    db.flush()


def test_resource_blocks_of_one_resource_may_not_overlap(db):
    tenant = make_tenant(db)
    resource, other = make_resource(db, tenant), make_resource(db, tenant)
    block = make_block(db, resource, T0, T0 + timedelta(hours=2))
    with violates(db, "resource_blocks_no_overlap", EXCLUSION_VIOLATION):
        make_block(db, resource, T0 + timedelta(hours=1), T0 + timedelta(hours=3))
    with violates(db, "resource_blocks_no_overlap", EXCLUSION_VIOLATION):
        make_block(
            db, resource, T0, T0 + timedelta(hours=2), "FREQ=DAILY"
        )  # same start: the seed's unique index
    make_block(db, resource, T0 + timedelta(hours=2), T0 + timedelta(hours=3))  # touching is fine
    make_block(db, other, T0, T0 + timedelta(hours=2))  # another resource is fine
    db.execute(update(ResourceBlock).where(ResourceBlock.id == block.id).values(deleted_at=T0))
    make_block(
        db, resource, T0 + timedelta(minutes=30), T0 + timedelta(hours=1)
    )  # a deleted block does not count


# --- foreign key actions worth relying on -------------------------------------------------------


def test_deleting_an_appointment_removes_its_allocations_and_unlinks_notifications_and_jobs(db):
    tenant, service, client = _setup(db)
    chair = make_resource(db, tenant)
    appointment = _booking(db, tenant, service, client, chair, T0)
    _notification(db, tenant_id=tenant.id, appointment_id=appointment.id, dedupe_key=f"n-{uuid.uuid4()}")
    _intake_job(db, tenant, appointment_id=appointment.id)
    db.flush()
    db.execute(text("DELETE FROM appointments WHERE id = :id"), {"id": appointment.id})
    assert (
        db.scalar(
            text("SELECT count(*) FROM appointment_resources WHERE resource_id = :id"), {"id": chair.id}
        )
        == 0
    )
    assert (
        db.scalar(
            text("SELECT count(*) FROM notifications WHERE tenant_id = :id AND appointment_id IS NULL"),
            {"id": tenant.id},
        )
        == 1
    )
    assert (
        db.scalar(
            text("SELECT count(*) FROM intake_jobs WHERE tenant_id = :id AND appointment_id IS NULL"),
            {"id": tenant.id},
        )
        == 1
    )


def test_deleting_a_resource_removes_its_schedules_and_blocks(db):
    tenant = make_tenant(db)
    resource = make_resource(db, tenant)
    make_schedule(db, resource, 1, "09:00", "17:00")
    make_block(db, resource, T0, T0 + timedelta(hours=1))
    db.execute(text("DELETE FROM resources WHERE id = :id"), {"id": resource.id})
    for table in ("resource_schedules", "resource_blocks"):
        assert (
            db.scalar(text(f"SELECT count(*) FROM {table} WHERE resource_id = :id"), {"id": resource.id}) == 0
        )


def test_deleting_a_resource_removes_its_links_to_services(db):
    tenant = make_tenant(db)
    service, resource = make_service(db, tenant), make_resource(db, tenant)
    link_service_resource(db, service, resource)
    db.execute(text("DELETE FROM resources WHERE id = :id"), {"id": resource.id})
    assert (
        db.scalar(text("SELECT count(*) FROM service_resources WHERE service_id = :id"), {"id": service.id})
        == 0
    )


def test_a_client_with_appointments_and_a_subscription_with_payments_cannot_be_deleted(db):
    # NO ACTION, as in the seed (docs/schema.md, revision 015): the history is not deleted along with them.
    tenant, service, client = _setup(db)
    make_appointment(db, tenant, service, client, T0)
    with violates(db, "appointments_tenant_id_client_id_fkey", FOREIGN_KEY_VIOLATION):
        db.execute(text("DELETE FROM clients WHERE id = :id"), {"id": client.id})
    subscription = make_subscription(db, tenant)
    make_payment(db, subscription)
    with violates(db, "payments_tenant_id_subscription_id_fkey", FOREIGN_KEY_VIOLATION):
        db.execute(text("DELETE FROM subscriptions WHERE id = :id"), {"id": subscription.id})


def test_the_audit_trail_outlives_a_deleted_user(db):
    # audit_logs.user_id is ON DELETE SET NULL (docs/schema.md): user_email keeps who it was.
    user = make_user(db)
    db.execute(text("SELECT set_config('app.user_id', :id, true)"), {"id": str(user.id)})
    client = make_client(db, make_tenant(db))
    db.execute(text("SELECT set_config('app.user_id', '', true)"))
    db.execute(text("DELETE FROM users WHERE id = :id"), {"id": user.id})
    entry = db.execute(
        text("SELECT user_id, user_email FROM audit_logs WHERE record_id = :id"), {"id": client.id}
    ).one()
    assert tuple(entry) == (None, user.email)


def test_plans_are_just_rows(db):
    # Keeps the factories honest: a plan with the seed's "unlimited" marker is valid.
    plan = make_plan(db, max_services=-1, max_resources=-1)
    assert plan.id is not None
    assert db.get(Tenant, make_tenant(db).id) is not None
    assert db.get(Resource, make_resource(db, make_tenant(db)).id) is not None
    assert db.scalar(select(Appointment).limit(0)) is None


def test_a_service_cannot_ask_for_notice_longer_than_ten_years(db):
    # now + that many hours is past the dates the core can count to: every query of the service failed.
    with violates(db, "services_advance_booking_valid", CHECK_VIOLATION):
        make_service(db, make_tenant(db), min_advance_booking_hours=100_000_000)
