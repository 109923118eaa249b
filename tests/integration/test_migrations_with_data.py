"""The migrations on a database that holds data, as production's does.

`test_schema_migrations.py` migrates empty databases. Here a realistic tenant (the seed's plans, system
templates and demo salon, plus clients, appointments of every status with their allocations, blocks,
notifications, intake jobs, API keys, Vapi calls, metrics, sessions and the audit rows the triggers write)
is written at a revision, and the later revisions run over it; or it is written at head, and the database
goes down and up again.

Each test has a database of its own (`va_test_migdata_…`), dropped afterwards. Every connection here is the
migrating owner's (a superuser on the test server), in system mode, as `migrations/env.py` runs.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, time, timedelta

import pytest
from alembic import command
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from core import seed
from core.config import DEFAULT_DATABASE_URL
from ops.database import alembic_config, create_database_if_missing, drop_database
from tests import factories

NOW = datetime.now(UTC).replace(microsecond=0)
# Installations start at 020 (docs/schema.md, Known limits): the revisions a database with data may be at.
INSTALLED_REVISIONS = ["020", "021", "022", "023", "024", "025"]


@contextmanager
def scratch_database(purpose: str) -> Iterator[str]:
    base = make_url(os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
    url = base.set(database=f"va_test_migdata_{purpose}_{uuid.uuid4().hex[:10]}").render_as_string(
        hide_password=False
    )
    create_database_if_missing(url)
    try:
        yield url
    finally:
        drop_database(url)


@contextmanager
def owner_engine(url: str):
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _system_mode(dbapi_connection, _record):
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT set_config('app.system', 'on', false)")
        dbapi_connection.autocommit = autocommit

    try:
        yield engine
    finally:
        engine.dispose()


class _SeedUnitOfWork:
    """What core.seed needs of a UnitOfWork: a session (the owner's, so no tenant context to switch)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def set_tenant(self, tenant_id) -> None:  # the owner in system mode sees every tenant
        pass


def populate(url: str) -> dict:
    """A working salon at the database's current revision (020 or later); returns the ids the tests check."""
    ids: dict = {}
    at = int(revision_of(url))
    with owner_engine(url) as engine, Session(engine) as session:
        seed.seed_all(_SeedUnitOfWork(session), demo=True, now=NOW)
        tenant = session.get(seed.Tenant, seed.DEMO_TENANT_ID)
        maria = session.get(seed.Resource, seed.DEMO_RESOURCE_IDS["maria"])
        chair = session.get(seed.Resource, seed.DEMO_RESOURCE_IDS["main-chair"])
        haircut = session.get(seed.Service, seed.DEMO_SERVICE_IDS["haircut"])
        # A shared room (capacity 3) and a class that takes it.
        room = factories.make_resource(session, tenant, "room", 3, name="Training room")
        workshop = factories.make_service(
            session,
            tenant,
            duration_minutes=60,
            buffer_time_minutes=0,
            available_hours={"start": "20:00", "end": "24:00:00" if at >= 22 else "24:00"},
        )
        factories.link_service_resource(session, workshop, room)
        factories.make_schedule(session, room, 1, "20:00", "24:00")
        factories.make_block(session, maria, NOW + timedelta(days=20), NOW + timedelta(days=20, hours=2))
        factories.make_block(
            session, chair, NOW - timedelta(days=7), NOW - timedelta(days=7, hours=-1), "FREQ=WEEKLY;BYDAY=MO"
        )
        user = factories.make_user(session)
        factories.make_tenant_user(session, tenant, user)
        subscription = session.get(seed.Subscription, seed.DEMO_SUBSCRIPTION_ID)
        factories.make_payment(session, subscription)
        clients = [factories.make_client(session, tenant, first_name=f"Client {n}") for n in range(4)]
        appointments = []
        for n, (status, days) in enumerate(
            [
                ("completed", -10),
                ("cancelled", -3),
                ("no_show", -2),
                ("scheduled", 3),
                ("confirmed", 4),
                ("cancelled", 5),
            ]
        ):
            start = datetime.combine((NOW + timedelta(days=days)).date(), time(9, 0), UTC)
            appointments.append(
                factories.make_appointment(
                    session, tenant, haircut, clients[n % 4], start, resources=[maria, chair], status=status
                )
            )
        for n in range(3):  # three groups in the room at once: its full capacity
            start = datetime.combine((NOW + timedelta(days=6)).date(), time(19, 0), UTC)
            appointment = factories.make_appointment(session, tenant, workshop, clients[n], start)
            session.execute(
                text(
                    "INSERT INTO appointment_resources (appointment_id, resource_id, allocated_start, allocated_end,"
                    " allocated_during, exclusive) VALUES (:a, :r, :s, :e, tstzrange(:s, :e, '[)'), false)"
                ),
                {"a": appointment.id, "r": room.id, "s": start, "e": start + timedelta(hours=1)},
            )
            appointments.append(appointment)
        session.flush()
        # Allocations as the core writes them: exclusive from the capacity it read.
        session.execute(
            text(
                "UPDATE appointment_resources ar SET exclusive = (COALESCE(r.capacity, 1) = 1)"
                " FROM resources r WHERE r.id = ar.resource_id"
            )
        )
        template = session.execute(
            text(
                "SELECT id FROM notification_templates WHERE tenant_id IS NULL AND type = 'appointment_confirmed'"
                " AND channel = 'email' AND locale = 'es'"
            )
        ).scalar_one()
        for appointment in appointments[:4]:
            session.execute(
                text(
                    "INSERT INTO notifications (tenant_id, template_id, recipient_type, recipient_id, channel,"
                    " body, status, appointment_id, notification_type, dedupe_key)"
                    " VALUES (:tenant, :template, 'client', :client, 'email', 'Hola', 'sent', :appointment,"
                    " 'appointment_confirmed', :key)"
                ),
                {
                    "tenant": tenant.id,
                    "template": template,
                    "client": appointment.client_id,
                    "appointment": appointment.id,
                    "key": f"confirm:{appointment.id}",
                },
            )
        # Intake jobs: finished ones, a queued one written without enqueued_at (an import), a running one.
        for n, (status, enqueued) in enumerate(
            [
                ("succeeded", True),
                ("failed", True),
                ("queued", False),
                ("running", True),
                ("succeeded", False),
            ]
        ):
            session.execute(
                text(
                    "INSERT INTO intake_jobs (tenant_id, kind, idempotency_key, request_hash, payload, status,"
                    " appointment_id, created_at, enqueued_at, started_at)"
                    " VALUES (:tenant, 'booking', :key, 'h', '{}', :status, :appointment, :created, :enqueued,"
                    " :started)"
                ),
                {
                    "tenant": tenant.id,
                    "key": f"key-{n}",
                    "status": status,
                    "enqueued": NOW - timedelta(hours=n + 1) if enqueued or at >= 26 else None,
                    "started": NOW - timedelta(hours=n + 1) if status == "running" else None,
                    "appointment": appointments[n].id if status == "succeeded" else None,
                    "created": NOW - timedelta(hours=n + 1),
                },
            )
        session.execute(
            text(
                "INSERT INTO api_keys (tenant_id, name, key_prefix, key_hash) VALUES (:t, 'app', 'va_abcd1234', 'x')"
            ),
            {"t": tenant.id},
        )
        session.execute(
            text(
                "INSERT INTO vapi_call_logs (tenant_id, vapi_call_id, appointment_id) VALUES (:t, 'call-1', :a)"
            ),
            {"t": tenant.id, "a": appointments[3].id},
        )
        session.execute(
            text(
                "INSERT INTO business_metrics (tenant_id, metric_date, metric_type) VALUES (:t, :d, 'daily')"
            ),
            {"t": tenant.id, "d": NOW.date()},
        )
        session.execute(
            text("INSERT INTO user_sessions (user_id, token_jti, expires_at) VALUES (:u, 'jti-1', :e)"),
            {"u": user.id, "e": NOW + timedelta(days=1)},
        )
        session.execute(
            text(
                "INSERT INTO login_attempts (email, ip_address, success) VALUES ('a@example.com', '10.0.0.1', false)"
            )
        )
        session.commit()
        ids.update(
            tenant=tenant.id,
            room=room.id,
            maria=maria.id,
            chair=chair.id,
            appointments=[a.id for a in appointments],
            workshop=workshop.id,
        )
    return ids


TABLES = [
    "users", "user_sessions", "login_attempts", "tenants", "tenant_users", "subscription_plans",
    "subscriptions", "payments", "vapi_configurations", "vapi_call_logs", "notification_templates",
    "notifications", "services", "resources", "clients", "appointments", "service_resources",
    "appointment_resources", "resource_schedules", "resource_blocks", "audit_logs", "business_metrics",
    "api_keys", "intake_jobs",
]  # fmt: skip


def snapshot(
    url: str, leave_out: tuple[str, ...] = ("occupied_until", "enqueued_at", "updated_at", "version")
) -> dict[str, list]:
    """Every row of every table, as jsonb text sorted by id (columns a revision adds or computes left out)."""
    minus = "".join(f" - '{column}'" for column in leave_out)
    with owner_engine(url) as engine, engine.connect() as connection:
        return {
            table: connection.execute(
                text(f"SELECT (to_jsonb(t){minus})::text FROM {table} t ORDER BY to_jsonb(t) ->> 'id'")
            )
            .scalars()
            .all()
            for table in TABLES
        }


def revision_of(url: str) -> str:
    with owner_engine(url) as engine, engine.connect() as connection:
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()


# --- what holds: upgrades from every installed revision, round trips down to each ------------------------


@pytest.mark.parametrize("start", INSTALLED_REVISIONS)
def test_upgrade_from_an_installed_revision_keeps_every_row(start):
    with scratch_database("up") as url:
        config = alembic_config(url)
        command.upgrade(config, start)
        populate(url)
        before = snapshot(url)
        command.upgrade(config, "head")
        after = snapshot(url)
        assert {t: len(r) for t, r in after.items()} == {t: len(r) for t, r in before.items()}
        assert after == before
        with owner_engine(url) as engine, engine.connect() as connection:
            assert (
                connection.execute(
                    text(
                        "SELECT count(*) FROM intake_jobs WHERE enqueued_at IS DISTINCT FROM created_at"
                        " AND status <> 'running'"
                    )
                ).scalar_one()
                == 0
            )
            assert (
                connection.execute(
                    text(
                        "SELECT count(*) FROM appointment_resources WHERE occupied_until <> upper(allocated_during)"
                    )
                ).scalar_one()
                == 0
            )


# The last revision undone (what an operator undoes first), the oldest installed one, and all the way down: its
# path runs every downgrade and upgrade the others do.
@pytest.mark.parametrize("target", ["-1", "020", "012"])
def test_round_trip_from_head_keeps_every_row(target):
    with scratch_database("rt") as url:
        config = alembic_config(url)
        command.upgrade(config, "head")
        populate(url)
        before = snapshot(url, ())
        command.downgrade(config, target)
        command.upgrade(config, "head")
        after = snapshot(url, ())
        if target in ("020", "012"):
            # 022's downgrade writes 24:00 for an end of 24:00:00 (the same midnight): an UPDATE of the
            # service (its updated_at and version move), which the audit trigger logs.
            for state in (before, after):
                state["audit_logs"] = [row for row in state["audit_logs"] if '"UPDATE"' not in row]
                state["services"] = [
                    json.dumps(
                        {k: v for k, v in json.loads(row).items() if k not in ("updated_at", "version")}
                    ).replace('"24:00:00"', '"24:00"')
                    for row in state["services"]
                ]
        assert after == before


# --- findings ----------------------------------------------------------------------------------------


def _book(connection, tenant, service, client, resource, start, end, units=1, exclusive=True) -> None:
    """An allocation written by something other than the core (an import, a script): plain SQL."""
    appointment = connection.execute(
        text(
            "INSERT INTO appointments (tenant_id, service_id, client_id, scheduled_start, scheduled_end,"
            " booking_reference) VALUES (:t, :s, :c, :start, :end, :ref) RETURNING id"
        ),
        {
            "t": tenant,
            "s": service,
            "c": client,
            "start": start,
            "end": end,
            "ref": f"IMP-{uuid.uuid4().hex[:8]}",
        },
    ).scalar_one()
    connection.execute(
        text(
            "INSERT INTO appointment_resources (appointment_id, resource_id, allocated_start, allocated_end,"
            " allocated_during, units, exclusive)"
            " VALUES (:a, :r, :start, :end, tstzrange(:start, :end, '[)'), :units, :exclusive)"
        ),
        {"a": appointment, "r": resource, "start": start, "end": end, "units": units, "exclusive": exclusive},
    )


def _room_resized_after_booking(url: str, capacity_then: int, capacity_now: int, groups: int = 1):
    """At the database's revision: a room of `capacity_then` with `groups` future groups at one hour, their
    allocations flagged as the core wrote them (exclusive for a room of one), then made a room of
    `capacity_now`. Returns the room's id, and a function that books one more group at that hour."""
    ids = populate(url)
    slot = datetime.combine((NOW + timedelta(days=8)).date(), time(10, 0), UTC)
    with owner_engine(url) as engine, engine.begin() as connection:
        room = connection.execute(
            text(
                "INSERT INTO resources (tenant_id, name, type, capacity) VALUES (:t, 'Studio', 'room', :capacity)"
                " RETURNING id"
            ),
            {"t": ids["tenant"], "capacity": capacity_then},
        ).scalar_one()
        client = connection.execute(text("SELECT id FROM clients LIMIT 1")).scalar_one()

        def book_a_group(connection, exclusive: bool = True) -> None:
            _book(connection, ids["tenant"], ids["workshop"], client, room, slot, slot + timedelta(hours=1),
                  exclusive=exclusive)  # fmt: skip

        for _ in range(groups):
            book_a_group(connection, exclusive=capacity_then == 1)
        connection.execute(
            text("UPDATE resources SET capacity = :c WHERE id = :r"), {"c": capacity_now, "r": room}
        )
    return room, book_a_group


@pytest.mark.parametrize("start", ["022", "023"])
def test_a_room_enlarged_before_024_is_counted_whole_after_the_upgrade(start):
    """A room of capacity 1 with a future booking is enlarged to 2 at 022/023 (nothing rewrites its
    allocations before 024), then the database is upgraded. 025 promises that a shared resource never holds
    more units at once than its capacity, whoever writes; its count skips exclusive rows on the ground that
    024 rewrote every one that has not ended, which was not true of rows from before 024."""
    with scratch_database("f_cap") as url:
        config = alembic_config(url)
        command.upgrade(config, start)
        _, book_a_group = _room_resized_after_booking(url, capacity_then=1, capacity_now=2)
        command.upgrade(config, "head")
        with owner_engine(url) as engine:
            with engine.begin() as connection:
                book_a_group(connection)
            with pytest.raises(DBAPIError) as refused, engine.begin() as connection:
                book_a_group(connection)  # a third group in a room for two, at the same hour
    assert refused.value.orig.sqlstate == "23P01"
    assert refused.value.orig.diag.constraint_name == "appointment_resources_within_shared_capacity"


def test_a_room_made_capacity_1_before_023_is_not_double_booked_after_the_upgrade():
    """The other direction: a room for two with a future booking (not exclusive, as the core wrote it) is
    made a room for one at 022, then upgraded. docs/schema.md (Known limits): "a resource made capacity 1
    is never double-booked". The old allocation stayed `exclusive = false`, outside the exclusion constraint,
    and an overlapping booking written after the upgrade was accepted."""
    with scratch_database("f_cap1") as url:
        config = alembic_config(url)
        command.upgrade(config, "022")
        _, book_a_group = _room_resized_after_booking(url, capacity_then=2, capacity_now=1)
        command.upgrade(config, "head")
        with owner_engine(url) as engine, pytest.raises(DBAPIError) as refused, engine.begin() as connection:
            book_a_group(connection)
    assert refused.value.orig.sqlstate == "23P01"


def test_an_upgrade_over_allocations_that_already_conflict_stops_and_names_them():
    """Two future groups in a room for two, made a room for one at 022: the stored rows already double-book
    it. The upgrade must not leave them outside every guard silently: it stops, naming the resource, at the
    last revision that succeeded (docs/operations.md: fix the cause and run it again)."""
    with scratch_database("f_cap2") as url:
        config = alembic_config(url)
        command.upgrade(config, "022")
        room, _ = _room_resized_after_booking(url, capacity_then=2, capacity_now=1, groups=2)
        with pytest.raises(DBAPIError) as refused:
            command.upgrade(config, "head")
    assert refused.value.orig.sqlstate == "23P01"
    assert str(room) in str(refused.value.orig)
