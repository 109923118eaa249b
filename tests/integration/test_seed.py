"""core.seed: the plans, the 32 system templates and the demo tenant, and running it twice changes nothing;
the demo seed on its own seeds the plans it needs, two seeds at once insert each row once, and
`voiceappoint seed` with an unusable application role says so in one line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, time
from decimal import Decimal
from pathlib import Path

from alembic import command
from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy import make_url, select, text
from sqlalchemy.orm import sessionmaker

from core import seed
from core.db import UnitOfWork, make_engine
from core.models import (
    NotificationTemplate,
    Resource,
    ResourceSchedule,
    Service,
    ServiceResource,
    Subscription,
    SubscriptionPlan,
    Tenant,
    VapiConfiguration,
)
from core.models.notifications import NOTIFICATION_TYPES
from ops.database import alembic_config, create_database_if_missing, drop_database

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)

# Every table the seed writes, with the rows that belong to the seed.
SEEDED_ROWS = {
    "subscription_plans": "name IN ('Starter', 'Professional', 'Enterprise')",
    "notification_templates": "tenant_id IS NULL AND is_system_default",
    "tenants": f"id = '{seed.DEMO_TENANT_ID}'",
    "services": f"tenant_id = '{seed.DEMO_TENANT_ID}'",
    "resources": f"tenant_id = '{seed.DEMO_TENANT_ID}'",
    "resource_schedules": f"resource_id IN (SELECT id FROM resources WHERE tenant_id = '{seed.DEMO_TENANT_ID}')",
    "service_resources": f"service_id IN (SELECT id FROM services WHERE tenant_id = '{seed.DEMO_TENANT_ID}')",
    "vapi_configurations": f"tenant_id = '{seed.DEMO_TENANT_ID}'",
    "subscriptions": f"tenant_id = '{seed.DEMO_TENANT_ID}'",
}
TABLES_WITH_VERSION = {"tenants", "services", "resources"}

SAMPLE_CONTEXT = {
    "client_name": "María José",
    "business_name": "Bella Hair Salon",
    "service_name": "Full Color",
    "appointment_date": "30 de marzo de 2027",
    "appointment_time": "10:00",
    "booking_reference": "BHS-7K2M9Q",
    "amount": "59,99 €",
    "plan_name": "Professional",
    "reset_link": "https://app.voiceappoint.com/r/AbCdEf123456",
    "cancellation_reason": "",
    "awaiting_confirmation": False,
}


def _run_seed() -> str:
    with UnitOfWork(system=True) as uow:  # as `voiceappoint seed` runs it
        summary = seed.seed_all(uow, demo=True, now=NOW)
        uow.commit()
    return summary


def _snapshot(db) -> dict[str, list[tuple]]:
    """Each seeded row's id, physical location (ctid changes on any UPDATE), updated_at and version."""
    snapshot = {}
    for table, where in SEEDED_ROWS.items():
        version = "version" if table in TABLES_WITH_VERSION else "NULL"
        has_updated_at = table not in ("service_resources",)
        updated_at = "updated_at" if has_updated_at else "NULL"
        snapshot[table] = db.execute(
            text(f"SELECT id, ctid::text, {updated_at}, {version} FROM {table} WHERE {where} ORDER BY id")
        ).all()
    return snapshot


def test_seeding_twice_changes_nothing(db):
    _run_seed()
    first = _snapshot(db)
    summary = _run_seed()
    second = _snapshot(db)

    assert {table: len(rows) for table, rows in second.items()} == {
        table: len(rows) for table, rows in first.items()
    }
    assert second == first
    assert "0 created, 0 updated" in summary
    assert summary.count("0 created, 0 updated") == 3


def test_seed_restores_a_changed_value_and_touches_nothing_else(db):
    _run_seed()
    db.execute(
        text("UPDATE services SET base_price = 99 WHERE id = :id"), {"id": seed.DEMO_SERVICE_IDS["haircut"]}
    )
    before = _snapshot(db)

    summary = _run_seed()

    after = _snapshot(db)
    haircut = db.get(Service, seed.DEMO_SERVICE_IDS["haircut"])
    db.refresh(haircut)
    assert haircut.base_price == Decimal("25.00")
    assert "1 updated" in summary
    changed = [table for table in after if after[table] != before[table]]
    assert changed == ["services"]


def test_plans_match_the_seed(db):
    _run_seed()
    plans = {
        plan.name: plan
        for plan in db.scalars(
            select(SubscriptionPlan).where(
                SubscriptionPlan.name.in_(["Starter", "Professional", "Enterprise"])
            )
        )
    }
    assert set(plans) == {"Starter", "Professional", "Enterprise"}
    starter, professional, enterprise = plans["Starter"], plans["Professional"], plans["Enterprise"]
    assert (starter.price_monthly, starter.price_yearly) == (Decimal("29.99"), Decimal("299.99"))
    assert (starter.max_services, starter.max_resources, starter.max_appointments_per_month) == (5, 3, 100)
    assert starter.max_staff_users == 2
    assert (professional.price_monthly, professional.max_appointments_per_month) == (Decimal("59.99"), 500)
    assert (professional.max_services, professional.max_resources, professional.max_staff_users) == (
        15,
        10,
        5,
    )
    assert enterprise.price_yearly == Decimal("999.99")
    unlimited = (
        enterprise.max_services,
        enterprise.max_resources,
        enterprise.max_appointments_per_month,
        enterprise.max_staff_users,
    )
    assert unlimited == (-1, -1, -1, -1)


def test_system_templates_cover_every_type_in_spanish_and_english_for_email_and_sms(db):
    _run_seed()
    templates = db.scalars(
        select(NotificationTemplate).where(
            NotificationTemplate.tenant_id.is_(None), NotificationTemplate.is_system_default
        )
    ).all()
    keys = {(t.type, t.channel, t.locale) for t in templates}
    expected = {
        (kind, channel, locale)
        for kind in NOTIFICATION_TYPES
        for channel in ("email", "sms")
        for locale in ("es", "en")
    }
    assert len(templates) == 32
    assert keys == expected

    environment = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    for template in templates:
        for awaiting in (False, True):
            context = {**SAMPLE_CONTEXT, "awaiting_confirmation": awaiting}
            body = environment.from_string(template.body_template).render(context)
            assert "{{" not in body and "{%" not in body
            if template.channel == "email":
                assert template.subject_template
                environment.from_string(template.subject_template).render(context)
            else:
                assert template.subject_template is None
                assert len(body) <= 160, (template.type, template.locale, len(body), body)


def test_cancellation_templates_mention_the_reason_only_when_there_is_one(db):
    _run_seed()
    environment = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    template = db.scalars(
        select(NotificationTemplate).where(
            NotificationTemplate.tenant_id.is_(None),
            NotificationTemplate.type == "appointment_cancelled",
            NotificationTemplate.channel == "email",
            NotificationTemplate.locale == "es",
        )
    ).one()
    with_reason = environment.from_string(template.body_template).render(
        {**SAMPLE_CONTEXT, "cancellation_reason": "la estilista está enferma"}
    )
    without_reason = environment.from_string(template.body_template).render(SAMPLE_CONTEXT)
    assert "Motivo: la estilista está enferma." in with_reason
    assert "Motivo" not in without_reason


def test_the_demo_tenant_is_bookable_as_described(db):
    _run_seed()
    tenant = db.get(Tenant, seed.DEMO_TENANT_ID)
    assert (tenant.slug, tenant.name, tenant.timezone) == (
        "bella-hair-salon",
        "Bella Hair Salon",
        "Europe/Madrid",
    )
    assert (tenant.email, tenant.phone) == ("info@bellahair.com", "+34612345678")
    assert tenant.settings == {"slot_step_minutes": 15}

    services = {s.slug: s for s in db.scalars(select(Service).where(Service.tenant_id == tenant.id))}
    assert {
        slug: (s.name, s.duration_minutes, s.base_price, s.buffer_time_minutes)
        for slug, s in services.items()
    } == {
        "haircut": ("Haircut", 45, Decimal("25.00"), 5),
        "full-color": ("Full Color", 120, Decimal("65.00"), 10),
        "manicure": ("Manicure", 60, Decimal("20.00"), 5),
    }
    for service in services.values():
        assert service.available_days == [1, 2, 3, 4, 5, 6]
        assert service.available_hours == {"start": "09:00", "end": "20:00"}

    resources = {r.name: r for r in db.scalars(select(Resource).where(Resource.tenant_id == tenant.id))}
    assert {name: (r.type, r.capacity) for name, r in resources.items()} == {
        "María García": ("staff", None),
        "Main Chair": ("room", 1),
        "Manicure Table": ("equipment", 1),
    }

    def needs(slug: str) -> set[tuple[str, bool]]:
        links = db.scalars(select(ServiceResource).where(ServiceResource.service_id == services[slug].id))
        return {(db.get(Resource, link.resource_id).name, link.is_required) for link in links}

    assert needs("haircut") == {("María García", True), ("Main Chair", True)}
    assert needs("full-color") == {("María García", True), ("Main Chair", True)}
    assert needs("manicure") == {("Manicure Table", True)}

    def week(name: str) -> set[tuple[int, time, time]]:
        rows = db.scalars(select(ResourceSchedule).where(ResourceSchedule.resource_id == resources[name].id))
        return {(row.day_of_week, row.start_time, row.end_time) for row in rows if row.is_active}

    maria = {(day, time(9), time(14)) for day in range(1, 7)} | {
        (day, time(15), time(19)) for day in range(1, 6)
    }
    assert week("María García") == maria
    assert week("Main Chair") == {(day, time(9), time(20)) for day in range(1, 7)}
    assert week("Manicure Table") == {(day, time(9), time(20)) for day in range(1, 7)}
    # In effect on any date (no effective_from), so tests and demos can book any day.
    undated = db.execute(
        text(
            f"SELECT count(*) FROM resource_schedules WHERE effective_from IS NULL AND {SEEDED_ROWS['resource_schedules']}"
        )
    ).scalar()
    assert undated == 23

    vapi = db.scalars(select(VapiConfiguration).where(VapiConfiguration.tenant_id == tenant.id)).one()
    assert vapi.language == "es" and vapi.assistant_greeting.startswith("¡Hola!")

    subscription = db.scalars(select(Subscription).where(Subscription.tenant_id == tenant.id)).one()
    plan = db.get(SubscriptionPlan, subscription.plan_id)
    assert (plan.name, subscription.status) == ("Professional", "trialing")
    assert (subscription.trial_end - NOW).days == 14


def test_seed_demo_on_its_own_seeds_the_plans_it_needs(db):
    assert (
        db.execute(text("SELECT count(*) FROM subscription_plans WHERE name = 'Professional'")).scalar() == 0
    )
    with UnitOfWork(system=True) as uow:
        seed.seed_demo(uow)
        uow.commit()


def test_seed_with_an_unusable_app_role_is_one_line_and_exit_2(database_url):
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "VOICEAPPOINT_DB_APP_ROLE": "va_no_such_role",
    }
    done = subprocess.run(
        [sys.executable, "-c", "from ops.cli import main; main()", "seed"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr[-600:]
    assert done.returncode == 2


def test_two_seeds_at_once_insert_each_plan_and_template_once(database_url):
    # On a database of its own: the plans must be missing when both start, so that both look for them.
    url = make_url(database_url).set(database=f"va_seed_race_{uuid.uuid4().hex[:12]}")
    url = url.render_as_string(hide_password=False)
    create_database_if_missing(url)
    engine = make_engine(url)
    try:
        command.upgrade(alembic_config(url), "head")
        both_started = threading.Barrier(2)

        def run_seed():
            with UnitOfWork(system=True, factory=sessionmaker(engine, expire_on_commit=False)) as uow:
                both_started.wait()
                seed.seed_all(uow, demo=True)
                uow.commit()

        with ThreadPoolExecutor(2) as pool:
            for seeding in [pool.submit(run_seed) for _ in range(2)]:
                seeding.result(timeout=60)
        with engine.connect() as connection:
            connection.execute(text("SET LOCAL app.system = 'on'"))
            plans = connection.execute(
                text("SELECT count(*), count(DISTINCT name) FROM subscription_plans")
            ).one()
            templates = connection.execute(
                text("SELECT count(*) FROM notification_templates WHERE tenant_id IS NULL")
            ).scalar()
        assert tuple(plans) == (3, 3)
        assert templates == 32
    finally:
        engine.dispose()
        drop_database(url)
