"""A seeded, mixed burst over HTTP against uvicorn and two real worker processes, then the invariants in SQL.

One salon: four stylists (capacity 1, interchangeable, the client may choose one) and a shared room of three
places that every haircut needs, on a plan of PLAN_LIMIT appointments a month. First a handful of bookings
(held with ?wait=), then, all at once: new bookings at random grid times over two days (some for a chosen
stylist, some for a returning client's phone, a few out of hours), moves of the first ones (to random times,
to their own time, to another month), cancels (some of one appointment twice), bookings followed at once by
a move or a cancel of their own appointment, and requests sent twice with one Idempotency-Key (or once more
with another body under the same key). Once every job has ended, on the committed rows:

- every job ended, and every failure has a code docs/api.md documents, never internal_error;
- no two active allocations of a capacity-1 resource overlap; the room never holds more than 3 places;
- every live appointment holds exactly the room and one stylist, at its scheduled time; a cancelled one
  holds nothing; the appointments are those the succeeded bookings made, at a time one of their jobs gave;
- no local month holds more live appointments than the plan allows;
- a replayed Idempotency-Key gave the same job; another body under it was refused.

STRESS_SEED overrides the seed (default: fixed).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time as clock
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from tests import factories
from tests.e2e.test_booking_pipeline import body, booking_day
from tests.scenarios import build_salon

SEED = int(os.environ.get("STRESS_SEED", "20261127"))
PLAN_LIMIT = 12
ROOM_PLACES = 3
STYLISTS = 4
FIRST_BOOKINGS = 8
NEW_BOOKINGS = 76
CHAINED = 12
MOVES = 28
CANCELS = 8
REPLAYED = 10  # of the requests above, sent a second time with the same key and body
KEY_REUSED = 3  # of the requests above, sent again under the same key with another body
JOBS_TIMEOUT = 40
WAIT = "?wait=15"

REPO = Path(__file__).resolve().parents[2]


def documented_codes() -> set[str]:
    """Every `code` in docs/api.md's "Error codes" section."""
    section = (REPO / "docs" / "api.md").read_text().split("## Error codes", 1)[1]
    return set(re.findall(r"`([a-z_]+)`", section))


@dataclass
class Sent:
    kind: str  # booking, reschedule, cancel
    label: str  # what the request meant to do
    path: str
    payload: dict
    wait: bool
    key: str | None = None
    status: int | None = None
    answer: dict = field(default_factory=dict)

    @property
    def job_id(self) -> str | None:
        return self.answer.get("job_id")


@pytest.fixture
def stress_salon(committed_engine):
    with Session(committed_engine, expire_on_commit=False) as session:
        salon = build_salon(session, stylists=STYLISTS, chairs=0, with_api_key=True)
        room = factories.make_resource(session, salon.tenant, "room", ROOM_PLACES, name="Shared room")
        factories.link_service_resource(session, salon.haircut, room, is_required=True)
        for day in range(7):
            factories.make_schedule(session, room, day, "09:00", "18:00")
        plan = factories.make_plan(session, max_appointments_per_month=PLAN_LIMIT)
        factories.make_subscription(session, salon.tenant, plan, status="active")
        session.commit()
    return salon, room


class Burst:
    def __init__(self, salon, seed: int):
        self.salon = salon
        self.rng = random.Random(seed)
        self.day = booking_day(salon)
        self.days = [self.day, self.day + timedelta(days=1)]
        self.other_month = self.day + timedelta(days=35)
        self.sent: list[Sent] = []
        self.phones = 0
        self.returning = [self.phone() for _ in range(12)]

    def phone(self) -> str:
        self.phones += 1
        return f"+34617{self.phones:06d}"

    def grid_time(self, day=None) -> datetime:
        day = day or self.rng.choice(self.days)
        if self.rng.random() < 0.06:  # out of hours (the haircut would end after 18:00, or starts at night)
            return self.salon.at(day, self.rng.choice(["17:30", "19:00", "07:45"]))
        minutes = self.rng.randrange(0, 16) * 15  # 09:00 .. 12:45: the room is the bottleneck
        return self.salon.at(day, "09:00") + timedelta(minutes=minutes)

    def booking(self, label: str, start: datetime | None = None, wait: bool | None = None) -> Sent:
        start = start or self.grid_time()
        phone = self.rng.choice(self.returning) if self.rng.random() < 0.25 else self.phone()
        stylist = [self.rng.choice(self.salon.stylists).id] if self.rng.random() < 0.3 else ()
        return Sent(
            "booking",
            label,
            "/v1/bookings",
            body(self.salon, start, phone, stylist),
            self.rng.random() < 0.5 if wait is None else wait,
        )

    def move(self, appointment_id: str, own_start: datetime, wait: bool | None = None) -> Sent:
        roll = self.rng.random()
        if roll < 0.2:
            label, start = "move to its own time", own_start
        elif roll < 0.4:
            label, start = "move to another month", self.grid_time(self.other_month)
        else:
            label, start = "move to a random time", self.grid_time()
        payload = {"start": start.isoformat()}
        if self.rng.random() < 0.25:
            payload["resource_ids"] = [str(self.rng.choice(self.salon.stylists).id)]
        return Sent(
            "reschedule",
            label,
            f"/v1/appointments/{appointment_id}/reschedule",
            payload,
            self.rng.random() < 0.5 if wait is None else wait,
        )

    def cancel(self, appointment_id: str, wait: bool | None = None) -> Sent:
        return Sent(
            "cancel",
            "cancel",
            f"/v1/appointments/{appointment_id}/cancel",
            {"reason": "stress"},
            self.rng.random() < 0.5 if wait is None else wait,
        )


async def send(client: httpx.AsyncClient, request: Sent, log: list[Sent]) -> Sent:
    headers = {"Idempotency-Key": request.key} if request.key else {}
    response = await client.post(
        request.path + (WAIT if request.wait else ""), json=request.payload, headers=headers
    )
    request.status = response.status_code
    request.answer = response.json()
    log.append(request)
    return request


async def book_then_change(
    client, burst: Burst, booking: Sent, change: str, rng: random.Random, log: list[Sent]
) -> None:
    """A booking held until it is booked, then at once a move or a cancel of its appointment (drawn from
    a generator of its own, so the requests do not depend on the order the answers come in)."""
    await send(client, booking, log)
    if booking.status != 201:
        return
    appointment_id = booking.answer["result"]["appointment_id"]
    own = datetime.fromisoformat(booking.answer["result"]["start"])
    own_burst = Burst.__new__(Burst)
    own_burst.__dict__.update(burst.__dict__, rng=rng)
    follow_up = own_burst.move(appointment_id, own) if change == "move" else own_burst.cancel(appointment_id)
    await send(client, follow_up, log)


def fire(api_server, salon, seed: int) -> tuple[Burst, list[Sent]]:
    burst = Burst(salon, seed)
    log: list[Sent] = []

    async def run() -> None:
        headers = {"Authorization": f"Bearer {salon.api_key}"}
        async with httpx.AsyncClient(
            base_url=api_server.base_url,
            headers=headers,
            limits=httpx.Limits(max_connections=250),
            timeout=60,
        ) as client:
            # The appointments to move and cancel: four a day, at distinct times, held until booked.
            first = [
                burst.booking("first booking", salon.at(day, clock_time), wait=True)
                for day in burst.days
                for clock_time in ("09:00", "10:30", "12:00", "13:30")
            ][:FIRST_BOOKINGS]
            await asyncio.gather(*(send(client, request, log) for request in first))
            booked = [
                (r.answer["result"]["appointment_id"], datetime.fromisoformat(r.answer["result"]["start"]))
                for r in first
                if r.status == 201
            ]
            assert len(booked) == FIRST_BOOKINGS, [(r.status, r.answer) for r in first]

            plain: list[Sent] = [burst.booking("new booking") for _ in range(NEW_BOOKINGS)]
            plain += [burst.move(*burst.rng.choice(booked)) for _ in range(MOVES)]
            plain += [burst.cancel(burst.rng.choice(booked)[0]) for _ in range(CANCELS)]
            replays, reused = [], []
            for n, original in enumerate(burst.rng.sample(plain, REPLAYED + KEY_REUSED)):
                original.key = f"stress-{seed}-{n}-{uuid.uuid4().hex[:6]}"
                again = Sent(
                    original.kind, "replay", original.path, dict(original.payload), not original.wait
                )
                again.key = original.key
                if n < REPLAYED:
                    replays.append((original, again))
                else:
                    # Another body under the same key: one of the two is a job, the other is refused.
                    if original.kind == "cancel":
                        again.payload = {"reason": "another reason"}
                    else:
                        moved = datetime.fromisoformat(original.payload["start"]) + timedelta(minutes=15)
                        again.payload = {**original.payload, "start": moved.isoformat()}
                    again.label = "same key, another body"
                    reused.append((original, again))
            chained = [
                book_then_change(
                    client,
                    burst,
                    burst.booking("booking then change", wait=True),
                    burst.rng.choice(["move", "cancel"]),
                    random.Random(burst.rng.random()),
                    log,
                )
                for _ in range(CHAINED)
            ]
            everything = [send(client, r, log) for r in plain]
            everything += [send(client, again, log) for _, again in replays + reused]
            everything += chained
            burst.rng.shuffle(everything)
            await asyncio.gather(*everything)
            burst.replays, burst.reused = replays, reused

    asyncio.run(run())
    return burst, log


def rows(engine, sql: str, **params) -> list:
    with engine.connect() as connection:
        return connection.execute(text(sql), params).all()


def wait_until_every_job_ended(engine, tenant_id) -> list:
    deadline = clock.monotonic() + JOBS_TIMEOUT
    while True:
        jobs = rows(
            engine,
            "SELECT id, kind, status, error, result, payload, appointment_id, idempotency_key, finished_at"
            " FROM intake_jobs WHERE tenant_id = :tenant",
            tenant=tenant_id,
        )
        if all(job.status in ("succeeded", "failed") for job in jobs) or clock.monotonic() > deadline:
            return jobs
        clock.sleep(0.25)


def summary(jobs) -> str:
    counts = Counter(
        (job.kind, job.status if job.status != "failed" else f"failed:{(job.error or {}).get('code')}")
        for job in jobs
    )
    return "\n".join(f"  {kind:<10} {outcome:<36} {n}" for (kind, outcome), n in sorted(counts.items()))


def test_a_mixed_burst_of_bookings_moves_and_cancels_keeps_every_invariant(
    committed_engine, worker, api_server, stress_salon
):
    salon, room = stress_salon
    tenant = salon.tenant.id
    began = clock.monotonic()
    burst, log = fire(api_server, salon, SEED)
    fired = clock.monotonic() - began
    jobs = wait_until_every_job_ended(committed_engine, tenant)
    ended = clock.monotonic() - began
    print(
        f"\nseed {SEED}: {len(log)} requests, {len(jobs)} jobs; fired in {fired:.1f} s, all ended after"
        f" {ended:.1f} s\nHTTP answers: {sorted(Counter((r.kind, r.status) for r in log).items())}\n"
        f"labels: {sorted(Counter(r.label for r in log).items())}\njobs:\n{summary(jobs)}"
    )
    problems: list[str] = []

    # --- the HTTP answers -------------------------------------------------------------------------------
    unexpected = [(r.label, r.status, r.answer) for r in log if r.status not in (200, 201, 202, 409, 422)]
    problems += [f"unexpected HTTP answer {u}" for u in unexpected]
    refused = [r for r in log if r.status in (409, 422) and not r.job_id]
    problems += [
        f"refused without a job: {r.label} {r.status} {r.answer}"
        for r in refused
        if r.answer.get("code") != "idempotency_key_reused"
    ]

    # --- every job ended, with a documented code -------------------------------------------------------
    codes = documented_codes()
    unfinished = [
        (str(job.id), job.kind, job.status) for job in jobs if job.status not in ("succeeded", "failed")
    ]
    problems += [f"job not ended: {u}" for u in unfinished]
    for job in jobs:
        if job.status == "failed":
            code = (job.error or {}).get("code")
            if code not in codes or code == "internal_error":
                problems.append(f"job {job.id} ({job.kind}) failed with {code!r}: {job.error}")
    # Every answered job id is a job of this tenant, and every job was answered to someone.
    job_ids = {str(job.id) for job in jobs}
    answered = {r.job_id for r in log if r.job_id}
    problems += [f"answered job {j} not in intake_jobs" for j in answered - job_ids]
    problems += [f"job {j} answered to nobody" for j in job_ids - answered]

    # --- Idempotency-Key ---------------------------------------------------------------------------------
    for original, again in burst.replays:
        if original.job_id is None or original.job_id != again.job_id:
            problems.append(
                f"replayed key {original.key}: {original.status} {original.job_id} vs {again.status}"
                f" {again.job_id} ({again.answer.get('code')})"
            )
    for original, again in burst.reused:
        outcomes = (
            sorted([bool(original.job_id), bool(again.job_id)]),
            sorted(r.answer.get("code") for r in (original, again) if not r.job_id),
        )
        if outcomes != ([False, True], ["idempotency_key_reused"]):
            problems.append(
                f"key {original.key} with two bodies: {original.status}/{again.status} {outcomes}"
            )
    per_key = Counter(job.idempotency_key for job in jobs if job.idempotency_key)
    problems += [f"key {k} has {n} jobs" for k, n in per_key.items() if n != 1]

    # --- capacity-1 resources: no overlap ---------------------------------------------------------------
    overlaps = rows(
        committed_engine,
        """
        SELECT r.name, a.appointment_id AS one, b.appointment_id AS other,
               a.allocated_during::text AS one_during, b.allocated_during::text AS other_during
        FROM appointment_resources a
        JOIN appointment_resources b
          ON a.resource_id = b.resource_id AND a.id < b.id AND a.allocated_during && b.allocated_during
        JOIN resources r ON r.id = a.resource_id
        WHERE a.active AND b.active AND r.tenant_id = :tenant AND coalesce(r.capacity, 1) = 1
        """,
        tenant=tenant,
    )
    problems += [
        f"overlap on {o.name}: {o.one} {o.one_during} / {o.other} {o.other_during}" for o in overlaps
    ]

    # --- the room: never more than its places at any instant -------------------------------------------
    crowded = rows(
        committed_engine,
        """
        SELECT lower(a.allocated_during) AS instant,
               (SELECT sum(o.units) FROM appointment_resources o
                 WHERE o.resource_id = a.resource_id AND o.active
                   AND o.allocated_during @> lower(a.allocated_during)) AS in_use
        FROM appointment_resources a WHERE a.resource_id = :room AND a.active
        """,
        room=room.id,
    )
    most = max((c.in_use for c in crowded), default=0)
    problems += [f"room holds {c.in_use} at {c.instant}" for c in crowded if c.in_use > ROOM_PLACES]

    # --- every appointment holds what it should ---------------------------------------------------------
    appointments = rows(
        committed_engine,
        "SELECT id, status, scheduled_start, scheduled_end, deleted_at FROM appointments WHERE tenant_id = :tenant",
        tenant=tenant,
    )
    allocations = defaultdict(list)
    for a in rows(
        committed_engine,
        """
        SELECT ar.appointment_id, ar.resource_id, ar.allocated_start, ar.allocated_end,
               lower(ar.allocated_during) AS lower_during, upper(ar.allocated_during) AS upper_during
        FROM appointment_resources ar JOIN appointments ap ON ap.id = ar.appointment_id
        WHERE ap.tenant_id = :tenant AND ar.active
        """,
        tenant=tenant,
    ):
        allocations[a.appointment_id].append(a)
    stylists = {s.id for s in salon.stylists}
    statuses = Counter(a.status for a in appointments)
    for appointment in appointments:
        held = allocations.get(appointment.id, [])
        if appointment.status in ("cancelled", "rescheduled", "no_show"):
            if held:
                problems.append(
                    f"{appointment.status} appointment {appointment.id} holds {len(held)} allocations"
                )
            continue
        held_rooms = [a for a in held if a.resource_id == room.id]
        held_stylists = [a for a in held if a.resource_id in stylists]
        others = [a for a in held if a.resource_id != room.id and a.resource_id not in stylists]
        if len(held_rooms) != 1 or len(held_stylists) != 1 or others:
            problems.append(
                f"appointment {appointment.id} ({appointment.status}) holds {len(held_rooms)} room,"
                f" {len(held_stylists)} stylist and {len(others)} other allocations"
            )
        for a in held:
            if (a.allocated_start, a.allocated_end, a.lower_during, a.upper_during) != (
                appointment.scheduled_start,
                appointment.scheduled_end,
                appointment.scheduled_start,
                appointment.scheduled_end,
            ):
                problems.append(
                    f"appointment {appointment.id} at {appointment.scheduled_start}-{appointment.scheduled_end}"
                    f" holds {a.resource_id} at {a.allocated_start}-{a.allocated_end}"
                    f" [{a.lower_during}, {a.upper_during})"
                )

    # --- the appointments are those the jobs made, where the jobs put them ------------------------------
    succeeded = [job for job in jobs if job.status == "succeeded"]
    booked_by = {
        job.appointment_id or uuid.UUID(job.result["appointment_id"]): job
        for job in succeeded
        if job.kind == "booking"
    }
    by_id = {a.id: a for a in appointments}
    problems += [f"appointment {a} made by no succeeded booking" for a in set(by_id) - set(booked_by)]
    problems += [f"succeeded booking of {a} left no appointment" for a in set(booked_by) - set(by_id)]
    places = defaultdict(set)
    cancelled_by = set()
    for job in succeeded:
        target = uuid.UUID(job.result["appointment_id"])
        if job.kind in ("booking", "reschedule"):
            places[target].add(datetime.fromisoformat(job.result["start"]))
        if job.kind == "cancel":
            cancelled_by.add(target)
        asked = set(job.payload.get("resource_ids") or ()) if job.kind == "booking" else set()
        if asked - set(job.result["resource_ids"]):
            problems.append(f"booking {job.id} asked for {job.payload['resource_ids']}, got {job.result}")
    for appointment in appointments:
        if appointment.scheduled_start not in places[appointment.id]:
            problems.append(
                f"appointment {appointment.id} at {appointment.scheduled_start}, a time none of its jobs gave:"
                f" {sorted(places[appointment.id])}"
            )
        if (appointment.status == "cancelled") != (appointment.id in cancelled_by):
            problems.append(
                f"appointment {appointment.id} is {appointment.status}; cancelled by a job: "
                f"{appointment.id in cancelled_by}"
            )

    # --- the plan's monthly limit ------------------------------------------------------------------------
    months = rows(
        committed_engine,
        """
        SELECT to_char(scheduled_start AT TIME ZONE :zone, 'YYYY-MM') AS month, count(*) AS booked
        FROM appointments
        WHERE tenant_id = :tenant AND deleted_at IS NULL AND status NOT IN ('cancelled', 'rescheduled')
        GROUP BY 1 ORDER BY 1
        """,
        tenant=tenant,
        zone=salon.tenant.timezone,
    )
    problems += [
        f"{m.month} holds {m.booked} appointments, plan allows {PLAN_LIMIT}"
        for m in months
        if m.booked > PLAN_LIMIT
    ]

    print(
        f"appointments: {dict(statuses)}; per month: {[(m.month, m.booked) for m in months]};"
        f" room at most {most} of {ROOM_PLACES}; capacity-1 overlaps: {len(overlaps)}"
    )
    assert not problems, "\n".join(problems[:60])
    # The burst really did exercise what it is for.
    kinds = Counter((job.kind, job.status) for job in jobs)
    assert kinds[("booking", "succeeded")] >= FIRST_BOOKINGS
    assert kinds[("reschedule", "succeeded")] >= 1 and kinds[("cancel", "succeeded")] >= 1
    failure_codes = {(job.error or {}).get("code") for job in jobs if job.status == "failed"}
    assert {"slot_taken", "plan_limit_reached"} <= failure_codes, failure_codes
