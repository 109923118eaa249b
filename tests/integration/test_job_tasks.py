"""The tasks the workers send, on this run's Redis key prefix: the sweeper's and the hard-limit hook's sends
and a retried job ignore their results, so no sender subscribes to a result channel."""

from __future__ import annotations

import logging
import uuid

import pytest


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


def test_the_sweeper_stops_at_its_soft_time_limit_instead_of_sending_on(monkeypatch):
    # Sends to a Redis that hangs: the soft limit interrupts one, and the sweeper went on to the next (its
    # `except Exception` took the limit for a defect) until the hard limit killed it (found in the Celery review).
    from celery.exceptions import SoftTimeLimitExceeded

    from tasks import scheduled

    sent = []

    def hangs_then_is_interrupted(job_id, queue):
        sent.append(job_id)
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(scheduled, "send_intake_job", hangs_then_is_interrupted)
    with pytest.raises(SoftTimeLimitExceeded):
        scheduled._send_all([(uuid.uuid4(), "bookings"), (uuid.uuid4(), "bookings")])
    assert len(sent) == 1


def test_the_api_gives_a_refusing_broker_two_quick_tries_then_leaves_the_job_to_the_sweeper(monkeypatch):
    """docs/operations.md §3: after its commit the API sends the job with two quick tries; if both fail the
    request is still answered (202) at once, and the sweeper sends the job later."""
    import socket
    import time

    import redis.connection

    from api import queue
    from core.config import Settings
    from core.intake import EnqueueFailed
    from workers import celery_app

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    refusing = celery_app.create_app(Settings(redis_url=f"redis://127.0.0.1:{port}/0"), set_as_current=False)
    celery_app.bound_waits_for_sending(refusing)
    monkeypatch.setattr(celery_app, "app", refusing)
    tries = []
    connect = redis.connection.AbstractConnection.connect

    def counted(self, *args, **kwargs):
        tries.append(time.monotonic())
        return connect(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "connect", counted)
    started = time.monotonic()
    try:
        with pytest.raises(EnqueueFailed):
            queue.enqueue_intake_job(uuid.uuid4(), "bookings")
    finally:
        refusing.close()
    assert len(tries) == 2
    assert time.monotonic() - started < 1


def _stored_job(job_id):
    from core.db import UnitOfWork
    from core.models import IntakeJob

    with UnitOfWork(system=True) as uow:
        job = uow.session.get(IntakeJob, job_id)
        return job.status, (job.error or {}).get("code"), job.finished_at


def test_a_job_whose_task_fails_for_good_is_failed_with_internal_error(db, monkeypatch, caplog):
    # docs/operations.md §3: retries spent or a non-transient error (a bug): on_failure sets the job `failed`
    # with internal_error, so that it does not stay `running` for the client to poll for ever.
    from tasks import bookings
    from tests.scenarios import build_salon, submit_job

    job = submit_job(build_salon(db))

    def bug(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(bookings.intake, "run", bug)
    with caplog.at_level(logging.ERROR, logger="workers.base"):
        outcome = bookings.process.apply(args=[str(job.job_id)])
    assert outcome.failed()
    status, code, finished_at = _stored_job(job.job_id)
    assert (status, code) == ("failed", "internal_error") and finished_at is not None
    # ...and workers.base logs the ERROR with its traceback, for the operator to find the cause.
    [logged] = [r for r in caplog.records if r.name == "workers.base"]
    assert logged.levelno == logging.ERROR and logged.exc_info is not None


def test_give_up_fails_the_job_the_hard_time_limit_killed(db):
    from tasks import bookings
    from tests.scenarios import build_salon, submit_job

    job = submit_job(build_salon(db))
    assert bookings.give_up.apply(args=[str(job.job_id)]).successful()
    assert _stored_job(job.job_id)[:2] == ("failed", "internal_error")


def test_the_hard_time_limit_sends_give_up_to_the_jobs_own_queue(redis_prefix):
    # A job of the realtime queue is failed by a realtime worker, not left to a bookings one that may not run.
    from celery.signals import before_task_publish

    from tasks import bookings

    published = []

    def capture(sender=None, routing_key=None, **kwargs):
        published.append((sender, routing_key))

    before_task_publish.connect(capture)
    try:
        bookings.process.on_hard_time_limit([str(uuid.uuid4())], {}, "realtime")
    finally:
        before_task_publish.disconnect(capture)
    assert published == [("bookings.give_up", "realtime")]


def test_the_hard_time_limit_hook_never_raises_in_the_workers_main_process(monkeypatch, caplog):
    # It runs in the worker's main process: a broker that refuses the message must not take the worker down.
    import kombu.exceptions

    from tasks import bookings

    def refused(*args, **kwargs):
        raise kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379")

    monkeypatch.setattr(bookings.give_up, "apply_async", refused)
    job_id = str(uuid.uuid4())
    bookings.process.on_hard_time_limit([job_id], {}, "bookings")
    assert any(f"could not send the failure of job {job_id}" in r.getMessage() for r in caplog.records)


@pytest.fixture
def committed_salon(committed_engine):
    from sqlalchemy import update
    from sqlalchemy.orm import Session

    from core.models import IntakeJob
    from tests import scenarios

    salon = scenarios.committed_salon(committed_engine)
    yield salon
    with Session(committed_engine) as session:  # nothing of this test left for another test's sweep
        session.execute(
            update(IntakeJob)
            .where(IntakeJob.tenant_id == salon.tenant.id, IntakeJob.status.in_(("queued", "running")))
            .values(status="failed", error={})
        )
        session.commit()


def test_the_sweep_sends_after_its_commit_the_jobs_queued_longer_than_the_setting(
    committed_engine, committed_salon, monkeypatch
):
    """docs/operations.md §3: `queued` jobs older than VOICEAPPOINT_INTAKE_SWEEP_AFTER_SECONDS are claimed
    (enqueued_at = now) and sent after the commit; the worker line ends with {'requeued': N}."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import select, update
    from sqlalchemy.orm import Session

    from core.config import get_settings
    from core.models import IntakeJob
    from tasks import scheduled
    from tests.scenarios import submit_job

    now = datetime.now(UTC)
    stale = submit_job(committed_salon, at=now - timedelta(seconds=30))
    fresh = submit_job(committed_salon, at=now - timedelta(seconds=5))
    with Session(committed_engine) as session:
        for job, at in ((stale, now - timedelta(seconds=30)), (fresh, now - timedelta(seconds=5))):
            session.execute(update(IntakeJob).where(IntakeJob.id == job.job_id).values(enqueued_at=at))
        session.commit()

    sent, seen_at_send = [], {}

    def send(job_id, queue):
        sent.append(job_id)
        if job_id in (stale.job_id, fresh.job_id):
            with Session(committed_engine) as session:  # what a worker taking the message would read
                seen_at_send[job_id] = session.scalar(
                    select(IntakeJob.enqueued_at).where(IntakeJob.id == job_id)
                )

    monkeypatch.setattr(scheduled, "send_intake_job", send)
    monkeypatch.setenv("VOICEAPPOINT_INTAKE_SWEEP_AFTER_SECONDS", "10")
    get_settings.cache_clear()
    try:
        result = scheduled.sweep_intake.apply().get()
    finally:
        monkeypatch.delenv("VOICEAPPOINT_INTAKE_SWEEP_AFTER_SECONDS")
        get_settings.cache_clear()
    assert stale.job_id in sent and fresh.job_id not in sent
    assert result == {"requeued": len(sent)}
    # Sent once the claim was committed: the job's new enqueued_at is what anyone reads by then.
    assert seen_at_send[stale.job_id] > now - timedelta(seconds=5)


def test_a_send_the_broker_refuses_is_a_warning_and_the_sweep_goes_on_to_the_next(monkeypatch, caplog):
    # A refused send is the broker's trouble, not a defect: a WARNING, and a later sweep sends that job.
    from core.intake import EnqueueFailed
    from tasks import scheduled

    refused, sent = uuid.uuid4(), []

    def send(job_id, queue):
        if job_id == refused:
            raise EnqueueFailed("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        sent.append(job_id)

    monkeypatch.setattr(scheduled, "send_intake_job", send)
    other = uuid.uuid4()
    with caplog.at_level(logging.WARNING, logger="tasks.scheduled"):
        scheduled._send_all([(refused, "bookings"), (other, "bookings")])
    assert sent == [other]
    [logged] = [r for r in caplog.records if r.name == "tasks.scheduled"]
    assert logged.levelno == logging.WARNING
    assert f"could not re-send job {refused}" in logged.getMessage()


def test_the_sleep_probe_holds_a_worker_20_seconds_at_most(monkeypatch):
    # Below the 30 s soft limit: a probe asked for longer must not end as a time-limit failure, retried.
    from tasks import diagnostics

    slept = []
    monkeypatch.setattr(diagnostics.time, "sleep", slept.append)
    assert diagnostics.sleep.apply(args=[1000]).get() == {"ok": True, "slept": 20.0}
    assert diagnostics.sleep.apply(args=[-5]).get() == {"ok": True, "slept": 0.0}
    assert slept == [20.0, 0.0]
