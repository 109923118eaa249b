"""Defects found in review, each fixed and guarded here: hostile input that must be a 4xx (NUL
characters, dates at the calendar's edge, oversized chunked bodies, odd request ids), the plan limit and
the notifications of a reschedule, the resources a changed appointment reports, the sweeper's
handling of jobs that keep dying or have just started, the locks of a process killed mid-wait, /ready
while the database pool is full, the tasks the workers send themselves ignoring their results, a
business locale written `es-ES`, the cancellation of a retired service's appointment, and requests
shed when too many wait for a thread."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select, text

from api.app import create_app
from core import booking, intake
from core.booking import BookingRequest
from core.clients import ClientDetails
from core.db import UnitOfWork
from core.errors import LimitReached
from core.models import Appointment, Client, IntakeJob, Notification
from tasks.scheduled import RUNNING_TOO_LONG
from tests import factories
from tests.scenarios import build_salon
from workers.base import JobTask, TransientError
from workers.celery_app import app as celery_app

NOW = datetime(2027, 3, 1, 7, 0, tzinfo=UTC)
DAY = date(2027, 3, 3)


@pytest.fixture
def salon(db):
    salon = build_salon(db, with_api_key=True)
    for kind in ("appointment_confirmed", "appointment_cancelled"):
        factories.make_notification_template(db, salon.tenant, type=kind, channel="email", locale="es")
    return salon


@pytest.fixture
def api(db, redis_prefix, salon):
    assert celery_app.conf.broker_transport_options.get("global_keyprefix") == redis_prefix
    # raise_server_exceptions=False: the test sees the 500 the caller would get, not the traceback.
    with TestClient(
        create_app(),
        headers={"Authorization": f"Bearer {salon.api_key}"},
        raise_server_exceptions=False,
    ) as test_client:
        yield test_client


def request(salon, day=DAY, clock="10:00", phone="612 345 678", resource_ids=()):
    return BookingRequest(
        service_id=salon.haircut.id,
        start=salon.at(day, clock),
        client=ClientDetails(first_name="Lucía", phone=phone, email="lucia@example.com"),
        resource_ids=tuple(resource_ids),
    )


def book(salon, req, now=NOW):
    with UnitOfWork(salon.tenant.id) as uow:
        booked = booking.book(uow, req, now)
        uow.commit()
    return booked


def api_body(salon, start: str, **client):
    return {
        "service_id": str(salon.haircut.id),
        "start": start,
        "client": {"first_name": "Lucía", "phone": "612 345 678", **client},
    }


def rows(db, model, salon):
    return db.scalar(select(func.count()).select_from(model).where(model.tenant_id == salon.tenant.id))


def submit_job(salon, at=NOW):
    with UnitOfWork(salon.tenant.id) as uow:
        job, _ = intake.submit(
            uow,
            "booking",
            {
                "service_id": str(salon.haircut.id),
                "start": salon.at(DAY, "10:00").isoformat(),
                "client": {"first_name": "Lucía", "phone": "+34612345678"},
            },
            None,
            at,
            lambda *_: None,
        )
    return job


def claim(now):
    with UnitOfWork(system=True) as uow:  # as the sweeper runs it
        claimed = intake.claim_stale(uow, now, queued_for=timedelta(minutes=1), running_for=RUNNING_TOO_LONG)
        uow.commit()
    return {job_id for job_id, _ in claimed}


# --- API: client input that becomes a 500 ---------------------------------------------------------------


def test_a_nul_character_in_the_body_is_a_4xx_not_a_500(db, api, salon):
    start = salon.at(datetime.now(UTC).date() + timedelta(days=2), "10:00").isoformat()
    response = api.post("/v1/bookings", json={**api_body(salon, start), "notes": "call me\u0000"})
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert rows(db, IntakeJob, salon) == 0


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"service_id": ', "application/json"),
        (b'{"service_id": "x"}', "text/plain"),
        (b"service_id=x", "application/x-www-form-urlencoded"),
        (b'["not", "an", "object"]', "application/json"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_a_400_bad_request(db, api, salon, content, content_type):
    response = api.post("/v1/bookings", content=content, headers={"Content-Type": content_type})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "bad_request"
    assert rows(db, IntakeJob, salon) == 0


def test_an_empty_idempotency_key_is_refused_not_shared(db, api, salon):
    start = salon.at(datetime.now(UTC).date() + timedelta(days=2), "10:00").isoformat()
    response = api.post("/v1/bookings", json=api_body(salon, start), headers={"Idempotency-Key": ""})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert rows(db, IntakeJob, salon) == 0


@pytest.mark.parametrize("start", ["0001-01-01T00:00:00+01:00", "9999-12-31T10:00:00+01:00"])
def test_a_start_at_the_edge_of_the_calendar_is_a_4xx_not_a_500(db, api, salon, start):
    response = api.post("/v1/bookings", json=api_body(salon, start))
    assert response.status_code == 422, response.text
    assert response.json()["code"] in ("start_in_past", "invalid_start", "validation_error")
    assert rows(db, IntakeJob, salon) == 0


def test_a_chunked_body_over_the_limit_is_413(db, api, salon):
    def chunks():
        yield b'{"notes": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}'

    response = api.post("/v1/bookings", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "payload_too_large"


def test_a_request_id_that_is_not_utf8_does_not_break_the_request():
    # Straight to the ASGI app: HTTP clients refuse to send the byte, servers (h11) pass it on.
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/health",
        "raw_path": b"/health",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"x-request-id", b"caf\xe9")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    with contextlib.suppress(Exception):  # the server error middleware re-raises after answering
        asyncio.run(create_app()(scope, receive, send))
    assert sent[0]["status"] == 200


# --- booking rules ----------------------------------------------------------------------------------------


def test_a_reschedule_into_a_full_month_is_refused(db, salon):
    plan = factories.make_plan(db, max_appointments_per_month=1)
    factories.make_subscription(db, salon.tenant, plan, status="active")
    march = book(salon, request(salon))
    book(salon, request(salon, date(2027, 4, 1), phone="612 345 679"))  # April is now full
    with pytest.raises(LimitReached), UnitOfWork(salon.tenant.id) as uow:
        booking.reschedule(uow, march.appointment_id, salon.at(date(2027, 4, 2), "10:00"), NOW)
        uow.commit()


def test_a_cancel_after_a_reschedule_reports_the_current_resources_only(db, salon):
    first, second = salon.stylists
    booked = book(salon, request(salon, resource_ids=[first.id]))
    with UnitOfWork(salon.tenant.id) as uow:
        booking.reschedule(uow, booked.appointment_id, salon.at(DAY, "12:00"), NOW, (second.id,))
        cancelled = booking.cancel(uow, booked.appointment_id, None, NOW)
        uow.commit()
    assert set(cancelled.resource_ids) == {second.id, salon.chairs[0].id}


def test_a_reschedule_leaves_one_pending_confirmation(db, salon):
    booked = book(salon, request(salon))
    with UnitOfWork(salon.tenant.id) as uow:
        booking.reschedule(uow, booked.appointment_id, salon.at(DAY, "12:00"), NOW)
        uow.commit()
    pending = db.scalars(
        select(Notification).where(
            Notification.appointment_id == booked.appointment_id,
            Notification.notification_type == "appointment_confirmed",
            Notification.status == "pending",
        )
    ).all()
    assert len(pending) == 1, [n.body for n in pending]


# --- job life cycle ---------------------------------------------------------------------------------------


def test_a_job_that_keeps_dying_is_failed_not_requeued_forever(db, salon):
    job = submit_job(salon)
    stored = db.get(IntakeJob, job.job_id)
    stored.status, stored.attempts = "running", 50
    stored.started_at = stored.enqueued_at = NOW - timedelta(hours=1)
    db.flush()
    claimed = claim(NOW)
    db.refresh(stored)
    assert job.job_id not in claimed
    assert stored.status == "failed"


def test_a_job_waiting_for_its_longest_retry_is_left_to_it_by_the_sweeper(db, salon):
    # The provider asked for a long pause; the job stays `running` while its retry waits.
    longest_wait = JobTask().retry_countdown(TransientError("429", retry_after=10**6))
    job = submit_job(salon)
    stored = db.get(IntakeJob, job.job_id)
    stored.status, stored.attempts, stored.started_at = "running", 5, NOW
    db.flush()
    retry_starts = NOW + timedelta(seconds=longest_wait + JobTask.time_limit)
    assert job.job_id not in claim(retry_starts)
    db.refresh(stored)
    assert stored.status == "running", stored.error
    # Not started again for longer: its message may be lost, or its retry may still wait behind a backlog
    # (a retry is queued at the tail). It is sent again (a copy books nothing twice), not failed while a
    # retry that would book it may be on its way.
    assert job.job_id in claim(NOW + RUNNING_TOO_LONG + timedelta(seconds=1))
    db.refresh(stored)
    assert stored.status == "running"


@pytest.mark.parametrize(
    ("starts", "outcome"),
    [(intake.RUN_FAILS_AFTER_STARTS - 1, "running"), (intake.RUN_FAILS_AFTER_STARTS, "failed")],
)
def test_the_sweeper_fails_a_stale_running_job_only_once_its_next_start_would(db, salon, starts, outcome):
    job = submit_job(salon)
    stored = db.get(IntakeJob, job.job_id)
    stored.status, stored.attempts = "running", starts
    stored.started_at = stored.enqueued_at = NOW - RUNNING_TOO_LONG - timedelta(seconds=1)
    db.flush()
    claimed = claim(NOW)
    db.refresh(stored)
    assert stored.status == outcome
    assert (job.job_id in claimed) == (outcome == "running")


def test_a_job_re_run_as_the_runbook_says_is_sent_by_the_next_sweep(db, salon):
    runbook = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    (requeue,) = re.findall(r"UPDATE intake_jobs SET status = 'queued'.*?;", runbook, flags=re.S)
    # On the real clock: the runbook's SQL reads the database's now().
    now = datetime.now(UTC)
    job = submit_job(salon, at=now - timedelta(days=2))
    stored = db.get(IntakeJob, job.job_id)
    stored.status, stored.error = "failed", {"code": "internal_error"}
    db.flush()
    db.execute(text(requeue.replace("<job_id>", str(job.job_id))))
    assert job.job_id in claim(now)


def test_a_job_that_just_started_after_a_backlog_is_not_requeued(db, salon):
    job = submit_job(salon)
    stored = db.get(IntakeJob, job.job_id)
    # Waited ten minutes in a busy queue, picked up ten seconds ago, still booking.
    stored.status, stored.attempts = "running", 1
    stored.enqueued_at = NOW - timedelta(minutes=10)
    stored.started_at = NOW - timedelta(seconds=10)
    db.flush()
    assert job.job_id not in claim(NOW)


def test_the_review_fixture_builds_a_bookable_salon(db, salon):
    # Guards the fixtures above: the tests here must fail for their stated reason, not a broken setup.
    booked = book(salon, request(salon))
    assert booked.appointment_id and rows(db, Client, salon) == 1


def test_a_job_started_too_often_is_failed_as_it_starts_and_books_nothing(db, salon):
    # A job that kills its worker process comes straight back (reject_on_worker_lost), again and again.
    job = submit_job(salon)
    stored = db.get(IntakeJob, job.job_id)
    stored.status, stored.attempts = "running", intake.RUN_FAILS_AFTER_STARTS
    db.flush()
    with UnitOfWork(system=True) as uow:
        outcome = intake.run(uow, job.job_id, now=NOW)
    db.refresh(stored)
    assert outcome["status"] == "failed" and outcome["error"]["code"] == "internal_error"
    assert (stored.status, stored.attempts, stored.finished_at) == (
        "failed",
        intake.RUN_FAILS_AFTER_STARTS + 1,
        NOW,
    )
    assert rows(db, Appointment, salon) == 0


def test_a_job_one_start_below_the_cap_still_books(db, salon):
    job = submit_job(salon)
    stored = db.get(IntakeJob, job.job_id)
    stored.status, stored.attempts = "running", intake.RUN_FAILS_AFTER_STARTS - 1
    db.flush()
    with UnitOfWork(system=True) as uow:
        assert intake.run(uow, job.job_id, now=NOW)["status"] == "succeeded"


def _booked_in_a_few_days(salon):
    day = datetime.now(UTC).date() + timedelta(days=3)
    return day, book(salon, request(salon, day=day), now=datetime.now(UTC))


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ("off_grid", 422, "off_grid"),
        ("past", 422, "start_in_past"),
        ("service_off", 422, "service_inactive"),
        ("suspended", 403, "tenant_inactive"),
    ],
)
def test_a_reschedule_that_can_never_succeed_is_refused_before_a_job_exists(
    db, api, salon, change, status, code
):
    day, booked = _booked_in_a_few_days(salon)
    start = salon.at(day, "12:07" if change == "off_grid" else "12:00")
    if change == "past":
        start = salon.at(datetime.now(UTC).date() - timedelta(days=2), "12:00")
    if change == "service_off":
        salon.haircut.is_active = False
    if change == "suspended":
        salon.tenant.subscription_status = "suspended"
    db.flush()
    response = api.post(
        f"/v1/appointments/{booked.appointment_id}/reschedule", json={"start": start.isoformat()}
    )
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert rows(db, IntakeJob, salon) == 0


# A process of the application (its engine, from core.db) that waits for an advisory lock forever.
_WAITER = """
import sys
from sqlalchemy import text
from core.db import make_engine
with make_engine(sys.argv[1]).connect() as connection:
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": int(sys.argv[2])})
"""


def test_a_process_killed_while_waiting_for_a_lock_leaves_nothing_running_behind(database_url):
    """A worker killed in a lock wait (hard time limit, OOM, deploy): PostgreSQL would run its statement,
    and keep its transaction's locks, until the wait ended; the application's connections ask it to
    check that the client is still there, so the statement ends within about a second."""
    key = uuid.uuid4().int % 2**62
    owner = create_engine(database_url)

    def waiting() -> list[int]:
        # A connection of its own each time: a transaction sees one snapshot of pg_stat_activity.
        with owner.connect() as connection:
            return connection.scalars(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE 'SELECT pg_advisory_lock%'"
                )
            ).all()

    try:
        with owner.connect() as holder:
            holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            waiter = subprocess.Popen(
                [sys.executable, "-c", _WAITER, database_url, str(key)], cwd=Path(__file__).parents[2]
            )
            try:
                deadline = time.monotonic() + 15
                while not (pids := waiting()):
                    assert time.monotonic() < deadline and waiter.poll() is None, "the waiter never waited"
                    time.sleep(0.05)
            finally:
                os.kill(waiter.pid, signal.SIGKILL)
                waiter.wait()
            deadline = time.monotonic() + 5
            while waiting():
                assert time.monotonic() < deadline, f"backend {pids} still waits for its killed client"
                time.sleep(0.1)
            holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        owner.dispose()


def test_ready_names_a_full_pool_as_the_database_and_its_probes_do_not_pile_up(database_url, monkeypatch):
    """Every pooled connection busy: /ready answers within its limit that the database is unavailable, the
    broker still ok, and probes arriving meanwhile share the one check that waits for a connection instead
    of each holding a thread of their own."""
    from api.routes import health
    from core import db as core_db
    from core.config import get_settings

    monkeypatch.setenv("VOICEAPPOINT_DB_POOL_SIZE", "1")
    monkeypatch.setenv("VOICEAPPOINT_DB_MAX_OVERFLOW", "0")
    monkeypatch.setenv("VOICEAPPOINT_DB_POOL_TIMEOUT_SECONDS", "5")
    monkeypatch.setattr(health, "READY_TIMEOUT_SECONDS", 0.2)
    started = []
    database_answers = health._database.probe
    monkeypatch.setattr(health._database, "probe", lambda: started.append(1) or database_answers())
    get_settings.cache_clear()
    core_db.dispose_engine()
    held = core_db.get_engine().connect()  # the pool's only connection
    try:
        with TestClient(create_app()) as client:
            answers = [client.get("/ready") for _ in range(8)]
    finally:
        held.close()
        monkeypatch.undo()
        get_settings.cache_clear()
        core_db.dispose_engine()
    assert [answer.status_code for answer in answers] == [503] * 8
    assert answers[-1].json()["checks"] == {"database": "unavailable", "broker": "ok"}
    assert len(started) == 1


def run_job(job_id):
    with UnitOfWork(system=True) as uow:  # as the worker runs it
        return intake.run(uow, job_id, NOW)


def test_a_business_whose_locale_is_written_es_ES_still_takes_bookings(db, salon):
    # babel reads `es_ES`, not `es-ES`: the confirmation's date failed every booking of such a business.
    salon.tenant.locale = "es-ES"
    factories.make_notification_template(
        db,
        salon.tenant,
        type="appointment_confirmed",
        channel="sms",
        locale="es",
        body_template="{{ appointment_date }}",
    )
    outcome = run_job(submit_job(salon).job_id)
    assert outcome["status"] == "succeeded", outcome.get("error")
    (confirmation,) = db.scalars(
        select(Notification).where(Notification.appointment_id == outcome["result"]["appointment_id"])
    ).all()
    assert confirmation.body == "3 de marzo de 2027"


def test_an_appointment_of_a_service_retired_since_can_still_be_cancelled(db, salon):
    booked = run_job(submit_job(salon).job_id)
    assert booked["status"] == "succeeded", booked
    salon.haircut.deleted_at = NOW  # the business retires the service; its appointments remain
    db.flush()
    with UnitOfWork(salon.tenant.id) as uow:
        job, _ = intake.submit(
            uow, "cancel", {"appointment_id": booked["result"]["appointment_id"]}, None, NOW, lambda *_: None
        )
    outcome = run_job(job.job_id)
    assert outcome["status"] == "succeeded", outcome.get("error")
    appointment = db.get(Appointment, uuid.UUID(booked["result"]["appointment_id"]))
    db.refresh(appointment)
    assert appointment.status == "cancelled"


def test_requests_are_refused_at_once_while_too_many_wait_for_a_thread(db, redis_prefix, salon, monkeypatch):
    """The API's worker threads all busy and two requests already queued for one: the next is a 503
    `overloaded` with Retry-After, /health is still answered, and the queued two are served once a thread
    is free."""
    from anyio import to_thread

    from core.config import get_settings

    monkeypatch.setenv("VOICEAPPOINT_API_MAX_QUEUED_REQUESTS", "2")
    get_settings.cache_clear()
    try:
        app = create_app()
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()

    async def burst():
        threads = to_thread.current_default_thread_limiter()  # this event loop's own
        threads.total_tokens = 1
        await threads.acquire()  # the one thread is busy
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {salon.api_key}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=headers) as client:
            queued = [asyncio.create_task(client.get("/v1/services")) for _ in range(2)]
            try:
                while threads.statistics().tasks_waiting < 2:
                    await asyncio.sleep(0.01)
                # Without the cap it would queue behind the other two, for as long as the thread is held.
                refused = await asyncio.wait_for(client.get("/v1/services"), 5)
                health = await client.get("/health")
            finally:
                threads.release()
                served = await asyncio.gather(*queued)
        return refused, health, served

    refused, health, served = asyncio.run(burst())
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "overloaded"
    assert health.status_code == 200
    assert [response.status_code for response in served] == [200, 200]
    assert served[0].json()["services"]


def test_the_tasks_the_workers_send_ignore_their_results(redis_prefix):
    """A sent task whose result is not ignored subscribes the sender to a result channel, which the cyclic
    collector later ends, and that can deadlock the next subscribe on the same connection (a test run hung
    so). The sweeper (in a pool process) and the hard-limit hook (in the worker's main process) never wait
    on a result, so they must not subscribe."""
    from celery.signals import before_task_publish

    from tasks import bookings, scheduled

    published = []

    def capture(sender=None, headers=None, **kwargs):
        published.append((sender, headers.get("ignore_result")))

    before_task_publish.connect(capture)
    try:
        scheduled._send_all([(uuid.uuid4(), "bookings")])
        bookings.process.on_hard_time_limit([str(uuid.uuid4())], {}, "bookings")
    finally:
        before_task_publish.disconnect(capture)
    assert published == [("bookings.process", True), ("bookings.give_up", True)]


def test_a_retried_job_is_sent_again_without_a_result_as_it_was_first(redis_prefix, monkeypatch):
    from celery.exceptions import Retry
    from celery.signals import before_task_publish
    from sqlalchemy.exc import OperationalError

    from tasks import bookings

    def transient(*args, **kwargs):
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(bookings.intake, "run", transient)
    published = []

    def capture(sender=None, headers=None, **kwargs):
        published.append((sender, headers.get("ignore_result")))

    job_id = str(uuid.uuid4())
    before_task_publish.connect(capture)
    # As a worker runs the job sent by the API (api/queue.py): without a result.
    bookings.process.push_request(
        id=str(uuid.uuid4()),
        args=[job_id],
        kwargs={},
        retries=0,
        called_directly=False,
        ignore_result=True,
        delivery_info={"routing_key": "bookings"},
    )
    try:
        with pytest.raises(Retry):
            bookings.process(job_id)
    finally:
        bookings.process.pop_request()
        before_task_publish.disconnect(capture)
    assert published == [("bookings.process", True)]


def test_a_failed_statement_does_not_carry_a_clients_details_into_logs(db, salon):
    with pytest.raises(Exception) as failed, UnitOfWork(salon.tenant.id) as uow:
        uow.session.execute(
            text("SELECT 1 / 0 FROM clients WHERE phone = :phone OR email = :email"),
            {"phone": "+34600999888", "email": "secret.client@example.com"},
        )
    message = str(failed.value)
    assert "division by zero" in message
    assert "+34600999888" not in message and "secret.client" not in message


def test_two_interchangeable_stylists_are_refused_before_a_job_exists(db, api, salon):
    """The worker could never serve them (one stylist serves an appointment): the request was a job that
    always failed, and the corrected request under the same key was a 409."""
    day, booked = _booked_in_a_few_days(salon)
    both = [str(stylist.id) for stylist in salon.stylists]
    start = salon.at(day, "12:00").isoformat()
    key = {"Idempotency-Key": "order-1"}
    response = api.post("/v1/bookings", json={**api_body(salon, start), "resource_ids": both}, headers=key)
    assert (response.status_code, response.json()["code"]) == (422, "resource_not_eligible"), response.text
    moved = api.post(
        f"/v1/appointments/{booked.appointment_id}/reschedule", json={"start": start, "resource_ids": both}
    )
    assert (moved.status_code, moved.json()["code"]) == (422, "resource_not_eligible"), moved.text
    assert rows(db, IntakeJob, salon) == 0
    fixed = api.post("/v1/bookings", json={**api_body(salon, start), "resource_ids": both[:1]}, headers=key)
    assert fixed.status_code == 202, fixed.text


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/services/"), ("POST", "/v1/bookings/")])
def test_a_trailing_slash_is_a_404_problem_not_a_redirect(api, salon, method, path):
    start = salon.at(DAY, "10:00").isoformat()
    response = api.request(method, path, json=api_body(salon, start) if method == "POST" else None)
    assert (response.status_code, response.headers["content-type"]) == (404, "application/problem+json")
    assert response.json()["code"] == "not_found" and "location" not in response.headers


@pytest.mark.parametrize("name", ["\u200b", "\u2060 \u200b", "\ufeff"])
def test_a_first_name_of_invisible_characters_is_an_invalid_name(db, api, salon, name):
    start = salon.at(DAY, "10:00").isoformat()
    response = api.post(
        "/v1/bookings", json={**api_body(salon, start), "client": {"first_name": name, "phone": "612345678"}}
    )
    assert (response.status_code, response.json()["code"]) == (422, "invalid_name"), response.text
    assert rows(db, IntakeJob, salon) == 0


@pytest.mark.parametrize(
    ("authorization", "challenge"),
    [
        ("", 'Bearer realm="voiceappoint"'),
        ("Bearer va_live_abc_def", 'Bearer realm="voiceappoint", error="invalid_token"'),
    ],
)
def test_a_401_names_the_scheme_it_expects(api, authorization, challenge):
    response = api.get("/v1/services", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == challenge


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/services?wiat=10"), ("POST", "/v1/bookings?wiat=10"), ("GET", "/v1/jobs/{job}?x=1")],
)
def test_a_query_parameter_the_operation_does_not_take_is_an_unknown_field(db, api, salon, method, path):
    start = salon.at(DAY, "10:00").isoformat()
    path = path.format(job=uuid.uuid4())
    response = api.request(method, path, json=api_body(salon, start) if method == "POST" else None)
    assert (response.status_code, response.json()["code"]) == (422, "unknown_field"), response.text
    assert response.json()["errors"][0]["field"] in ("wiat", "x")
    assert rows(db, IntakeJob, salon) == 0
    # The parameters an operation takes still work, and the probes take anything (a monitor's cache-buster).
    assert api.post("/v1/bookings?wait=0", json=api_body(salon, start)).status_code == 202
    assert api.get("/health?_=1700000000").status_code == 200
