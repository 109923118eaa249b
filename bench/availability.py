"""30 days of availability for a 3-resource service, the core against one hand-written SQL query.

    .venv/bin/python bench/availability.py [--runs 300] [--allocations 200000]

The run is self-contained: its own database (va_bench_avail_<id>, next to DATABASE_URL, migrated to head),
dropped at the end (VOICEAPPOINT_KEEP_BENCH_DB=1 keeps it). It bulk-loads `--allocations` rows into
appointment_resources (INSERT ... SELECT generate_series): three years of a salon's stylist, chair and a shared
room (capacity 4) plus filler resources, some allocations cancelled (inactive), the stylist's daily lunch
as one-off blocks, a two-day vacation, the chair's weekly maintenance as a recurring block (RRULE), a deleted
block, and a schedule that ends inside the window. The 30 local days cross Madrid's spring-forward night.

Then, in one run and interleaved, each in a fresh UnitOfWork on an engine from core.db (as the API runs),
it times
- core: `find_slots()` (its queries plus the planner), and
- raw:  one SQL statement that computes the same slots inside PostgreSQL,
checks that both give the same answer, and prints p50/p99 of each and the ratios.

Targets (issue): core p50 <= 2.5 x raw p50, core p99 <= 10 ms.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import statistics
import sys
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

REPO_ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ on the path, not the project root.
sys.path.insert(0, str(REPO_ROOT))

from alembic import command  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402

from core.availability import find_slots, local_midnight  # noqa: E402
from core.config import DEFAULT_DATABASE_URL  # noqa: E402
from core.db import UnitOfWork, make_engine  # noqa: E402
from ops.database import alembic_config, create_database_if_missing, drop_database  # noqa: E402

TZ = "Europe/Madrid"
DATA_FROM, DATA_TO = date(2026, 1, 1), date(2028, 12, 31)
WINDOW_FROM = date(2027, 3, 15)  # 30 local days: 2027-03-15 .. 2027-04-13, Madrid springs forward on 03-28
WINDOW_TO = WINDOW_FROM + timedelta(days=29)
NOW = datetime(2027, 3, 14, 12, 0, tzinfo=UTC)

# The one statement the core is compared with. It serves services whose resources are all required
# (this bench's), reads weekly recurring blocks ('FREQ=WEEKLY') only, and, like the core, keeps a fall-back
# hour's first pass (the window has no fall-back night). Blocks and allocations of the window are read once,
# through the same indexes the core uses, then folded into multiranges that each slot is tested against.
RAW_SQL = text(
    """
WITH svc AS MATERIALIZED (
    SELECT s.id, t.timezone AS tz, s.available_days, s.available_hours,
           make_interval(mins => s.duration_minutes) AS len,
           make_interval(mins => s.duration_minutes + s.buffer_time_minutes) AS occupied,
           coalesce((t.settings ->> 'slot_step_minutes')::int, 15) AS step,
           :now + make_interval(hours => s.min_advance_booking_hours) AS earliest,
           :now + make_interval(days => s.max_advance_booking_days) AS latest
    FROM services s JOIN tenants t ON t.id = s.tenant_id
    WHERE s.id = :service_id AND s.is_active AND s.deleted_at IS NULL
),
need AS MATERIALIZED (
    SELECT sr.resource_id, sr.quantity_required AS quantity, coalesce(r.capacity, 1) AS capacity
    FROM service_resources sr JOIN resources r ON r.id = sr.resource_id
    WHERE sr.service_id = :service_id AND sr.is_required AND r.is_active AND r.deleted_at IS NULL
),
slot AS MATERIALIZED (
    SELECT d.d, g.wall, g.wall AT TIME ZONE svc.tz AS start_at,
           (g.wall AT TIME ZONE svc.tz + svc.len) AT TIME ZONE svc.tz AS end_wall,
           tstzrange(g.wall AT TIME ZONE svc.tz, g.wall AT TIME ZONE svc.tz + svc.len) AS client_during,
           tstzrange(g.wall AT TIME ZONE svc.tz, g.wall AT TIME ZONE svc.tz + svc.occupied) AS occupied_during
    FROM svc
    CROSS JOIN LATERAL (
        SELECT x::date AS d FROM generate_series(CAST(:date_from AS timestamp), CAST(:date_to AS timestamp), interval '1 day') x
    ) d
    CROSS JOIN LATERAL (
        SELECT d.d + make_interval(mins => m) AS wall FROM generate_series(0, 1439, svc.step) m
    ) g
    WHERE svc.available_days @> to_jsonb(extract(dow FROM d.d)::int)
      AND g.wall >= d.d + (svc.available_hours ->> 'start')::time
      AND (g.wall AT TIME ZONE svc.tz) AT TIME ZONE svc.tz = g.wall  -- the wall time exists
      AND (g.wall AT TIME ZONE svc.tz + svc.len) AT TIME ZONE svc.tz <= d.d + (svc.available_hours ->> 'end')::time
      AND g.wall AT TIME ZONE svc.tz BETWEEN svc.earliest AND svc.latest
),
busy AS MATERIALIZED (
    -- Per resource through the btree on (resource_id, allocated_start), as the core reads them.
    SELECT a.resource_id, a.allocated_during AS during, a.units
    FROM need JOIN appointment_resources a ON a.resource_id = need.resource_id
    WHERE a.active AND a.allocated_start < :window_end
      AND a.allocated_during && tstzrange(:window_start, :window_end)
),
blocked AS MATERIALIZED (
    SELECT b.resource_id, tstzrange(b.start_datetime, b.end_datetime) AS during
    FROM need JOIN resource_blocks b ON b.resource_id = need.resource_id
    WHERE b.deleted_at IS NULL AND b.recurrence_rule IS NULL
      AND b.start_datetime < :window_end AND b.end_datetime > :window_start
    UNION ALL
    SELECT b.resource_id, tstzrange(o.s, o.s + (b.end_datetime - b.start_datetime))
    FROM svc CROSS JOIN need JOIN resource_blocks b ON b.resource_id = need.resource_id
    CROSS JOIN LATERAL (
        SELECT (b.start_datetime AT TIME ZONE svc.tz + k * interval '7 days') AT TIME ZONE svc.tz AS s
        FROM generate_series(0, (CAST(:date_to AS date) - (b.start_datetime AT TIME ZONE svc.tz)::date) / 7 + 1) k
    ) o
    WHERE b.deleted_at IS NULL AND b.recurrence_rule = 'FREQ=WEEKLY'
      AND o.s < :window_end AND o.s + (b.end_datetime - b.start_datetime) > :window_start
),
calendar AS MATERIALIZED (
    -- Each needed resource with its blocks and its allocations folded into multiranges: a slot's overlap
    -- test is then one binary search. Shared resources count units per slot instead.
    SELECT n.resource_id, n.quantity, n.capacity,
           coalesce((SELECT range_agg(b.during) FROM blocked b WHERE b.resource_id = n.resource_id),
                    '{}'::tstzmultirange) AS blocked,
           coalesce((SELECT range_agg(b.during) FROM busy b WHERE b.resource_id = n.resource_id),
                    '{}'::tstzmultirange) AS taken
    FROM need n
)
SELECT s.start_at, (SELECT array_agg(resource_id ORDER BY resource_id) FROM need) AS resource_ids
FROM slot s
WHERE EXISTS (SELECT 1 FROM need)
  AND NOT EXISTS (
    SELECT 1 FROM calendar c
    WHERE NOT EXISTS (
            SELECT 1 FROM resource_schedules w
            WHERE w.resource_id = c.resource_id AND w.is_active AND w.day_of_week = extract(dow FROM s.d)
              AND (w.effective_from IS NULL OR w.effective_from <= s.d)
              AND (w.effective_until IS NULL OR w.effective_until >= s.d)
              AND s.d + w.start_time <= s.wall AND s.end_wall <= s.d + w.end_time)
       OR c.blocked && s.client_during
       OR c.quantity > c.capacity
       OR CASE WHEN c.capacity - c.quantity <= 0 THEN c.taken && s.occupied_during
               -- Shared: the units in use at the busiest instant of the occupied time, which is its start
               -- or the start of an allocation inside it.
               ELSE c.quantity + (
                   SELECT coalesce(max((SELECT sum(b.units) FROM busy b
                                        WHERE b.resource_id = c.resource_id AND b.during @> i.instant)), 0)
                   FROM (SELECT lower(s.occupied_during) AS instant
                         UNION ALL
                         SELECT lower(b.during) FROM busy b
                         WHERE b.resource_id = c.resource_id AND lower(b.during) <@ s.occupied_during) AS i
               ) > c.capacity
          END
  )
ORDER BY s.start_at
"""
)


# Bookings are staged in a temporary table, one row an appointment with the resources it holds, then
# written as appointments and then allocations (two statements, so that a trigger on appointment_resources
# sees the appointments).
STAGE = """CREATE TEMP TABLE staged (
    appointment_id uuid DEFAULT gen_random_uuid(), service_id uuid, starts timestamptz, minutes int,
    occupied int, resources uuid[], units int DEFAULT 1, active boolean DEFAULT true, exclusive boolean DEFAULT true
) ON COMMIT DROP"""
WRITE_STAGED = [
    """INSERT INTO appointments (id, tenant_id, service_id, client_id, scheduled_start, scheduled_end, status)
       SELECT appointment_id, :tenant, service_id, :client, starts, starts + make_interval(mins => minutes),
              CASE WHEN active THEN 'scheduled' ELSE 'cancelled' END
       FROM staged""",
    """INSERT INTO appointment_resources (appointment_id, resource_id, allocated_start, allocated_end,
                                        allocated_during, units, exclusive, active)
       SELECT appointment_id, r, starts, starts + make_interval(mins => minutes),
              tstzrange(starts, starts + make_interval(mins => occupied)), units, exclusive, active
       FROM staged, unnest(resources) r""",
    "TRUNCATE staged",
]
DAYS = "generate_series(CAST(:data_from AS timestamp), CAST(:data_to AS timestamp), interval '1 day') AS g(d)"

SETUP = [
    """INSERT INTO tenants (id, slug, name, business_type, timezone, settings)
       VALUES (:tenant, 'bench-salon', 'Bench salon', 'salon', :tz, '{"slot_step_minutes": 15}')""",
    "INSERT INTO clients (id, tenant_id, first_name) VALUES (:client, :tenant, 'Bench')",
    """INSERT INTO services (id, tenant_id, name, duration_minutes, buffer_time_minutes, available_days,
                            available_hours, min_advance_booking_hours, max_advance_booking_days)
       VALUES (:service, :tenant, 'Colour', 45, 10, '[1,2,3,4,5,6]', '{"start": "09:00", "end": "19:00"}', 1, 60),
              (:other_service, :tenant, 'Other', 45, 10, '[1,2,3,4,5]', '{"start": "08:00", "end": "20:00"}', 1, 60)""",
    """INSERT INTO resources (id, tenant_id, name, type, capacity)
       VALUES (:stylist, :tenant, 'Stylist', 'staff', NULL), (:chair, :tenant, 'Chair', 'equipment', 1),
              (:room, :tenant, 'Room', 'room', 4)""",
    """INSERT INTO service_resources (service_id, resource_id, quantity_required)
       VALUES (:service, :stylist, 1), (:service, :chair, 1), (:service, :room, 2)""",
    # Weekdays for all three, a Saturday morning for the stylist and the chair, a room schedule that ends
    # inside the window, and a switched-off Sunday.
    """INSERT INTO resource_schedules (resource_id, day_of_week, start_time, end_time, effective_from, effective_until, is_active)
       SELECT CAST(:stylist AS uuid), d, time '09:00', time '17:00', CAST(NULL AS date), CAST(NULL AS date), true
       FROM generate_series(1, 5) d
       UNION ALL SELECT :stylist, 6, '10:00', '14:00', NULL, NULL, true
       UNION ALL SELECT :chair, d, '08:00', '20:00', NULL, NULL, true FROM generate_series(1, 6) d
       UNION ALL SELECT :room, d, '09:00', '19:00', NULL, NULL, true FROM generate_series(1, 5) d
       UNION ALL SELECT :room, 6, '09:00', '13:00', NULL, DATE '2027-04-03', true
       UNION ALL SELECT :chair, 0, '10:00', '14:00', NULL, NULL, false""",
    # The stylist's lunch, one row a weekday (but during the vacation); the vacation; the chair's weekly
    # maintenance as one recurring row; a deleted block.
    f"""INSERT INTO resource_blocks (resource_id, start_datetime, end_datetime, block_type)
       SELECT :stylist, (d::date + time '13:00') AT TIME ZONE :tz, (d::date + time '13:30') AT TIME ZONE :tz, 'break'
       FROM {DAYS} WHERE extract(isodow FROM d) <= 5 AND d::date NOT IN (DATE '2027-04-01', DATE '2027-04-02')""",
    """INSERT INTO resource_blocks (resource_id, start_datetime, end_datetime, block_type)
       VALUES (:stylist, timestamp '2027-04-01 00:00' AT TIME ZONE :tz, timestamp '2027-04-03 00:00' AT TIME ZONE :tz, 'vacation')""",
    """INSERT INTO resource_blocks (resource_id, start_datetime, end_datetime, block_type, is_recurring, recurrence_rule)
       VALUES (:chair, timestamp '2026-01-07 15:00' AT TIME ZONE :tz, timestamp '2026-01-07 16:00' AT TIME ZONE :tz,
               'maintenance', true, 'FREQ=WEEKLY')""",
    """INSERT INTO resource_blocks (resource_id, start_datetime, end_datetime, block_type, deleted_at)
       VALUES (:chair, timestamp '2027-03-16 09:00' AT TIME ZONE :tz, timestamp '2027-03-16 12:00' AT TIME ZONE :tz, 'other', now())""",
]
BOOKINGS = [
    # This service on the stylist and the chair: weekdays 10:00 and 11:30, Tuesdays and Thursdays 15:00.
    f"""INSERT INTO staged (service_id, starts, minutes, occupied, resources)
        SELECT :service, (d::date + t) AT TIME ZONE :tz, 45, 55, ARRAY[CAST(:stylist AS uuid), CAST(:chair AS uuid)]
        FROM {DAYS}, unnest(ARRAY[time '10:00', time '11:30', time '15:00']) t
        WHERE extract(isodow FROM d) <= 5 AND (t <> time '15:00' OR extract(isodow FROM d) IN (2, 4))""",
    # The chair alone (another service) Mon/Wed/Fri 17:00; cancelled stylist bookings on Wednesdays 14:00.
    f"""INSERT INTO staged (service_id, starts, minutes, occupied, resources, active)
        SELECT :other_service, (d::date + time '17:00') AT TIME ZONE :tz, 45, 55, ARRAY[CAST(:chair AS uuid)], true
        FROM {DAYS} WHERE extract(isodow FROM d) IN (1, 3, 5)
        UNION ALL
        SELECT :other_service, (d::date + time '14:00') AT TIME ZONE :tz, 45, 55, ARRAY[CAST(:stylist AS uuid)], false
        FROM {DAYS} WHERE extract(isodow FROM d) = 3""",
    # The shared room (capacity 4, not exclusive): overlapping groups of 1-3 units.
    f"""INSERT INTO staged (service_id, starts, minutes, occupied, resources, units, exclusive)
        SELECT :other_service, (d::date + t) AT TIME ZONE :tz, 60, 60, ARRAY[CAST(:room AS uuid)], u, false
        FROM {DAYS}, (VALUES (time '09:00', 2), (time '09:30', 1), (time '10:00', 1), (time '14:00', 3),
                             (time '16:15', 2), (time '16:45', 1)) AS v(t, u)
        WHERE extract(isodow FROM d) <= 5""",
]
# Filler: other staff of the salon, four bookings a weekday each, up to the total asked for.
FILLER = f"""INSERT INTO staged (service_id, starts, minutes, occupied, resources)
    SELECT :other_service, (d::date + t) AT TIME ZONE :tz, 45, 55, ARRAY[r.id]
    FROM resources r, {DAYS}, unnest(ARRAY[time '09:00', time '10:30', time '12:00', time '15:30']) t
    WHERE r.name LIKE 'Filler %' AND extract(isodow FROM d) <= 5
    LIMIT :filler"""


def load(engine, allocations: int) -> dict:
    """Bulk-load the data set (as the owner, so row-level security does not apply); returns the ids."""
    ids = {
        name: uuid.uuid4()
        for name in ("tenant", "client", "service", "other_service", "stylist", "chair", "room")
    }
    params = {"tz": TZ, "data_from": DATA_FROM, "data_to": DATA_TO, **ids}
    with engine.begin() as connection:

        def run(statement: str, **extra) -> None:
            connection.execute(text(statement), {**params, **extra})

        for statement in SETUP:
            run(statement)
        run(STAGE)
        for statement in BOOKINGS:
            run(statement)
            for write in WRITE_STAGED:
                run(write)
        have = connection.execute(text("SELECT count(*) FROM appointment_resources")).scalar()
        filler = max(0, allocations - have)
        weekdays = connection.execute(
            text(f"SELECT count(*) FROM {DAYS} WHERE extract(isodow FROM d) <= 5"), params
        ).scalar()
        run(
            "INSERT INTO resources (id, tenant_id, name, type) "
            "SELECT gen_random_uuid(), :tenant, 'Filler ' || n, 'staff' FROM generate_series(1, :n) n",
            n=-(-filler // (weekdays * 4)),
        )
        run(FILLER, filler=filler)
        for write in WRITE_STAGED:
            run(write)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))
    return ids


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=300, help="timed runs of each (after 30 warm-up runs)")
    parser.add_argument("--allocations", type=int, default=200_000, help="rows in appointment_resources")
    args = parser.parse_args()
    # `timeout` and Ctrl-C alike end the run through the clean-up below (the database is dropped).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    base = make_url(os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
    url = base.set(database=f"va_bench_avail_{uuid.uuid4().hex[:10]}").render_as_string(hide_password=False)
    create_database_if_missing(url)
    engine = create_engine(url, pool_size=2)  # loading and checking, as the owner
    app_engines = []
    try:
        command.upgrade(alembic_config(url), "head")
        started = time.perf_counter()
        ids = load(engine, args.allocations)
        with engine.connect() as connection:
            total = connection.execute(text("SELECT count(*) FROM appointment_resources")).scalar()
        print(f"loaded {total} allocations in {time.perf_counter() - started:.1f} s")
        # Both sides are timed the way the API runs: an engine from core.db, one UnitOfWork per request.
        # Each side has its own engine (one pooled connection), so neither inherits the other's connection.
        app_engines = [make_engine(url, pool_size=1), make_engine(url, pool_size=1)]
        core_factory, raw_factory = (sessionmaker(e, expire_on_commit=False) for e in app_engines)
        tz = ZoneInfo(TZ)
        raw_params = {
            "service_id": ids["service"],
            "date_from": WINDOW_FROM,
            "date_to": WINDOW_TO,
            "now": NOW,
            "window_start": local_midnight(WINDOW_FROM, tz),
            "window_end": local_midnight(WINDOW_TO + timedelta(days=1), tz) + timedelta(minutes=55),
        }

        def core() -> list[tuple]:
            with UnitOfWork(ids["tenant"], factory=core_factory, read_only=True) as uow:
                found = find_slots(uow, ids["service"], WINDOW_FROM, WINDOW_TO, NOW)
            return [(slot.start, slot.resource_ids) for slot in found.slots]

        def raw() -> list[tuple]:
            with UnitOfWork(ids["tenant"], factory=raw_factory, read_only=True) as uow:
                rows = uow.session.execute(RAW_SQL, raw_params).all()
            return [(start.astimezone(UTC), tuple(resource_ids)) for start, resource_ids in rows]

        core_answer, raw_answer = core(), raw()
        if core_answer != raw_answer:
            only_core = sorted(set(core_answer) - set(raw_answer))[:5]
            only_raw = sorted(set(raw_answer) - set(core_answer))[:5]
            raise SystemExit(f"different answers: core-only {only_core}, raw-only {only_raw}")
        with engine.connect() as connection:
            in_window = connection.execute(
                text(
                    "SELECT count(*) FROM appointment_resources WHERE resource_id IN (:a, :b, :c) "
                    "AND allocated_during && tstzrange(:window_start, :window_end)"
                ),
                {"a": ids["stylist"], "b": ids["chair"], "c": ids["room"], **raw_params},
            ).scalar()
        print(
            f"same answer: {len(core_answer)} slots over 30 days; {in_window} allocations of the 3 resources in the window"
        )

        # As the API and the workers do at start-up (api/app.py, workers/signals.py): long-lived objects
        # leave the collector's generations, so a collection pass does not walk them on a request.
        gc.freeze()
        timings: dict[str, list[float]] = {"core": [], "raw": []}
        for run in range(30 + args.runs):
            for name, function in (
                (("core", core), ("raw", raw)) if run % 2 else (("raw", raw), ("core", core))
            ):
                started = time.perf_counter()
                function()
                elapsed = (time.perf_counter() - started) * 1000
                if run >= 30:
                    timings[name].append(elapsed)

        p = {name: (statistics.median(t), percentile(t, 0.99)) for name, t in timings.items()}
        print(f"\n{'':6} {'p50 ms':>8} {'p99 ms':>8}   ({args.runs} runs each, interleaved)")
        for name in ("core", "raw"):
            print(f"{name:6} {p[name][0]:8.2f} {p[name][1]:8.2f}")
        ratio50 = p["core"][0] / p["raw"][0]
        ratio99 = p["core"][1] / p["raw"][1]
        print(f"\ncore/raw  p50 {ratio50:.2f}x  p99 {ratio99:.2f}x")
        print(
            f"target: p50 ratio <= 2.5x: {'met' if ratio50 <= 2.5 else 'MISSED'}; "
            f"core p99 <= 10 ms: {'met' if p['core'][1] <= 10 else 'MISSED'}"
        )
    finally:
        for app_engine in app_engines:
            app_engine.dispose()
        engine.dispose()
        if not os.environ.get("VOICEAPPOINT_KEEP_BENCH_DB"):
            drop_database(url)
        else:
            print(f"kept {url}")


if __name__ == "__main__":
    main()
