"""The tasks the workers send, on this run's Redis key prefix: the sweeper's and the hard-limit hook's sends
and a retried job ignore their results, so no sender subscribes to a result channel."""

from __future__ import annotations

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
