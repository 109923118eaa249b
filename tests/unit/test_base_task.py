"""The retry policy of JobTask, run eagerly (in this process, no broker): what is retried and what is not."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from unittest import mock

import kombu.exceptions
import psycopg
import pytest
import redis.exceptions
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import exc as sa_exc

from core import intake
from core import logging as core_logging
from core.errors import NotFound, SlotUnavailable
from workers.base import JobTask, TransientError, is_transient
from workers.celery_app import VISIBILITY_TIMEOUT_SECONDS, celery_config

app = Celery("test_base_task", set_as_current=False)
app.conf.update(task_always_eager=True, task_eager_propagates=False, broker_url="memory://")


def database_gone() -> Exception:
    return sa_exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))


def database_error(sqlstate_error: type[psycopg.Error]) -> Exception:
    """The OperationalError SQLAlchemy raises for an error the server answered with this SQLSTATE."""
    return sa_exc.OperationalError("SELECT 1", {}, sqlstate_error("as the server said"))


ERRORS: dict[str, Callable[[], Exception]] = {
    "operational": database_gone,
    "deadlock": lambda: database_error(psycopg.errors.DeadlockDetected),
    "statement_timeout": lambda: database_error(psycopg.errors.QueryCanceled),
    "program_limit": lambda: database_error(psycopg.errors.ProgramLimitExceeded),
    "interface": lambda: sa_exc.InterfaceError("SELECT 1", {}, Exception("connection already closed")),
    "invalidated": lambda: sa_exc.DBAPIError(
        "SELECT 1", {}, Exception("terminating connection"), connection_invalidated=True
    ),
    "integrity": lambda: sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key value")),
    "redis": lambda: redis.exceptions.ConnectionError("Connection refused"),
    # What a send inside a task raises when Redis refuses it (kombu wraps redis-py's error).
    "broker_send": lambda: kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379"),
    "transient": lambda: TransientError("provider answered 503"),
    "soft_time_limit": lambda: SoftTimeLimitExceeded(),
    "slot_taken": lambda: SlotUnavailable("10:00 is taken", code="slot_taken", alternatives=[]),
    "not_found": lambda: NotFound("no such service", code="service_not_found"),
    "bug": lambda: ValueError("a bug"),
}

attempts: list[int] = []


@app.task(bind=True, base=JobTask, name="unit.fails_then_succeeds")
def fails_then_succeeds(self, error: str, failures: int) -> dict:
    attempts.append(self.request.retries)
    if len(attempts) <= failures:
        raise ERRORS[error]()
    return {"ok": True, "attempts": len(attempts)}


@pytest.fixture(autouse=True)
def fresh_attempts():
    attempts.clear()
    yield
    attempts.clear()


@pytest.mark.parametrize(
    "error",
    [
        "operational",
        "deadlock",
        "statement_timeout",
        "interface",
        "invalidated",
        "redis",
        "broker_send",
        "transient",
        "soft_time_limit",
    ],
)
def test_a_transient_error_is_retried_until_the_task_succeeds(error):
    result = fails_then_succeeds.apply(args=(error, 2))

    assert result.successful(), result.traceback
    assert result.get() == {"ok": True, "attempts": 3}
    assert attempts == [0, 1, 2]


@pytest.mark.parametrize("error", ["slot_taken", "not_found", "integrity", "program_limit", "bug"])
def test_a_domain_error_or_a_bug_is_not_retried(error):
    result = fails_then_succeeds.apply(args=(error, 1))

    assert result.failed()
    assert isinstance(result.result, type(ERRORS[error]()))
    assert attempts == [0]


def test_retries_stop_after_max_retries_with_the_original_error():
    result = fails_then_succeeds.apply(args=("operational", 100))

    assert result.failed()
    assert isinstance(result.result, sa_exc.OperationalError)
    assert len(attempts) == JobTask.max_retries + 1 == 9


def test_each_retry_is_delayed_by_a_jittered_exponential_backoff():
    with mock.patch.object(fails_then_succeeds, "retry", wraps=fails_then_succeeds.retry) as retry:
        fails_then_succeeds.apply(args=("operational", 4))

    countdowns = [call.kwargs["countdown"] for call in retry.call_args_list]
    assert len(countdowns) == 4
    for retries, countdown in enumerate(countdowns):
        assert 2**retries / 2 <= countdown <= 2**retries


def test_the_retries_of_a_job_wait_long_enough_together_for_a_restarting_database():
    # Eight retries with half of each wait fixed: at least 2 minutes from the first failure to the last try.
    fails_then_succeeds.push_request(retries=0)
    try:
        shortest = 0.0
        for retries in range(JobTask.max_retries):
            fails_then_succeeds.request.retries = retries
            shortest += min(fails_then_succeeds.retry_countdown(database_gone()) for _ in range(50))
    finally:
        fails_then_succeeds.pop_request()
    assert shortest >= 120


def test_backoff_is_capped_and_retry_after_is_honoured():
    fails_then_succeeds.push_request(retries=20)
    try:
        samples = [fails_then_succeeds.retry_countdown(database_gone()) for _ in range(200)]
        assert max(samples) <= JobTask.retry_backoff_max == 240
        assert min(samples) >= JobTask.retry_backoff_max / 2
        assert len(set(samples)) > 1, "jitter spreads retries out"

        assert fails_then_succeeds.retry_countdown(TransientError("429", retry_after=7)) == 7
        assert fails_then_succeeds.retry_countdown(TransientError("429", retry_after=10**6)) == 240
    finally:
        fails_then_succeeds.pop_request()


def test_what_counts_as_transient():
    assert is_transient(database_gone())
    assert is_transient(ERRORS["invalidated"]())
    assert not is_transient(sa_exc.DBAPIError("SELECT 1", {}, Exception("syntax error")))
    assert not is_transient(ERRORS["integrity"]())
    assert not is_transient(ERRORS["slot_taken"]())


@pytest.mark.parametrize(
    ("sqlstate_error", "transient"),
    [
        (psycopg.errors.ConnectionFailure, True),  # 08006
        (psycopg.errors.InvalidPassword, True),  # 28P01, while the credentials change
        (psycopg.errors.SerializationFailure, True),  # 40001
        (psycopg.errors.TooManyConnections, True),  # 53300
        (psycopg.errors.LockNotAvailable, True),  # 55P03, lock_timeout
        (psycopg.errors.AdminShutdown, True),  # 57P01
        (psycopg.errors.ProgramLimitExceeded, False),  # 54000: the same statement exceeds it again
        (psycopg.errors.StatementTooComplex, False),  # 54001
        (psycopg.errors.CantChangeRuntimeParam, False),  # 55P02
        (psycopg.errors.InvalidSavepointSpecification, False),  # 3B001: a bug
        (psycopg.errors.TriggerProtocolViolated, False),  # 39P01
    ],
)
def test_a_database_error_is_retried_only_if_a_later_try_may_not_meet_it(sqlstate_error, transient):
    assert is_transient(database_error(sqlstate_error)) is transient
    # Whatever the server said, a connection SQLAlchemy dropped is a lost connection.
    dropped = sa_exc.OperationalError("SELECT 1", {}, sqlstate_error("x"), connection_invalidated=True)
    assert is_transient(dropped)


def _raised_while_handling(first: BaseException, then: BaseException) -> BaseException:
    try:
        try:
            raise first
        except BaseException:
            raise then  # noqa: B904 - as a clean-up's error carries the first one as its context
    except BaseException as error:
        return error


def test_a_clean_up_on_a_dead_connection_is_as_transient_as_what_killed_it():
    pending = sa_exc.PendingRollbackError("Can't reconnect until invalid transaction is rolled back")
    assert is_transient(_raised_while_handling(database_gone(), pending))
    pending = sa_exc.PendingRollbackError("Can't reconnect until invalid transaction is rolled back")
    assert not is_transient(_raised_while_handling(ERRORS["integrity"](), pending))
    assert not is_transient(sa_exc.PendingRollbackError("on its own"))


def test_delivery_guarantees_and_limits_fit_the_broker_visibility_timeout():
    assert JobTask.acks_late is True
    assert JobTask.reject_on_worker_lost is True
    assert 0 < JobTask.soft_time_limit < JobTask.time_limit
    # Anything longer would let Redis hand a running or waiting task to a second worker.
    assert (
        max(JobTask.time_limit, JobTask.retry_backoff_max, JobTask.retry_after_max)
        < VISIBILITY_TIMEOUT_SECONDS
    )


def test_a_failure_is_logged_with_its_task_id(caplog):
    with caplog.at_level(logging.INFO, logger="workers.base"):
        failed = fails_then_succeeds.apply(args=("bug", 1), task_id="task-bug-1")
        ended = fails_then_succeeds.apply(args=("slot_taken", 5), task_id="task-slot-1")

    assert failed.failed() and ended.failed()
    by_task = {r.task_id: r for r in caplog.records if r.name == "workers.base" and hasattr(r, "task_id")}
    assert by_task["task-bug-1"].levelno == logging.ERROR
    assert by_task["task-bug-1"].exc_info is not None
    # A domain error is an expected outcome: recorded quietly, without a traceback.
    assert by_task["task-slot-1"].levelno == logging.INFO
    assert "slot_taken" in by_task["task-slot-1"].getMessage()


def test_a_failure_is_logged_as_one_error_and_a_domain_error_as_none(caplog):
    # Celery's trace logged each failure again, an ERROR with the same traceback ("raised unexpected"), and a
    # domain error (job_not_found) too, as an ERROR with a traceback beside the task's INFO.
    with caplog.at_level(logging.INFO):
        fails_then_succeeds.apply(args=("bug", 1))
        fails_then_succeeds.apply(args=("not_found", 1))

    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert [(record.name, record.exc_info is not None) for record in errors] == [("workers.base", True)]
    traced = [record for record in caplog.records if record.name == "celery.app.trace"]
    assert len(traced) == 2 and all(record.exc_info is None for record in traced)


def test_in_production_a_failure_is_one_json_line_with_the_task_id():
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        core_logging.configure("INFO", json=True, stream=stream)
        fails_then_succeeds.apply(args=("bug", 1), task_id="task-json-1")
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)

    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    failure = next(e for e in entries if e["logger"] == "workers.base")
    assert failure["level"] == "ERROR"
    assert failure["task_id"] == "task-json-1"
    assert "ValueError: a bug" in failure["exc_info"]


def test_a_job_may_start_more_often_than_the_worker_retries_it():
    # Each transient retry is a new start of the job; intake.run fails a job started RUN_FAILS_AFTER_STARTS times.
    assert JobTask.max_retries + 1 < intake.RUN_FAILS_AFTER_STARTS


def test_a_worker_waits_for_the_broker_for_good():
    # Celery gives up after 100 tries (~49 minutes without Redis) and the worker exits: nothing brought it
    # back where no supervisor restarts it (found in the Celery review).
    from core.config import get_settings

    assert celery_config(get_settings())["broker_connection_max_retries"] is None


def test_the_celery_configuration_is_the_one_operations_md_documents():
    """DESIGN §6 and docs/operations.md §1 ("fixed in code"): what operators and Flower rely on."""
    from core.config import Settings
    from workers.celery_app import create_app

    config = celery_config(Settings(redis_key_prefix="va_prefix:"))
    # JSON messages only: a pickle from anyone who can write to Redis would be code execution.
    assert (config["task_serializer"], config["result_serializer"]) == ("json", "json")
    assert config["accept_content"] == config["result_accept_content"] == ["json"]
    # One message at a time, acknowledged after the run, handed back if the process dies or Redis goes away.
    assert config["worker_prefetch_multiplier"] == 1
    assert config["task_acks_late"] is config["task_reject_on_worker_lost"] is True
    assert config["worker_cancel_long_running_tasks_on_connection_loss"] is True
    # Flower sees every task: sent events from publishers, the rest from workers.
    assert config["worker_send_task_events"] is config["task_send_sent_event"] is True
    assert config["result_expires"] == 24 * 60 * 60
    assert config["broker_transport_options"]["visibility_timeout"] == 2 * 60 * 60
    assert config["worker_max_memory_per_child"] == 512 * 1024  # KiB
    # Every broker and result key under the deployment's prefix, or deployments sharing a Redis meet.
    assert config["broker_transport_options"]["global_keyprefix"] == "va_prefix:"
    assert config["result_backend_transport_options"]["global_keyprefix"] == "va_prefix:"

    # One queue per family, so that operators can run a worker per queue; the probes go to `realtime`.
    routed = create_app(Settings(redis_key_prefix="va_prefix:"), set_as_current=False)
    try:
        queues = {
            name: routed.amqp.router.route({}, name)["queue"].name
            for name in (
                "bookings.process",
                "bookings.give_up",
                "scheduled.sweep_intake",
                "diagnostics.ping_db",
                "webhooks.stripe",
                "notifications.send",
                "realtime.tool_call",
                "unrouted.task",
            )
        }
    finally:
        routed.close()
    assert queues == {
        "bookings.process": "bookings",
        "bookings.give_up": "bookings",
        "scheduled.sweep_intake": "scheduled",
        "diagnostics.ping_db": "realtime",
        "webhooks.stripe": "webhooks",
        "notifications.send": "notifications",
        "realtime.tool_call": "realtime",
        "unrouted.task": "bookings",  # the default queue
    }


def test_the_api_waits_two_seconds_at_most_for_the_broker():
    # docs/operations.md §4: with Redis hanging, a request is answered within about 5 s (two tries of 2 s).
    from core.config import Settings
    from workers.celery_app import bound_waits_for_sending, create_app

    sender = create_app(Settings(), set_as_current=False)
    try:
        bound_waits_for_sending(sender)
        options = sender.conf.broker_transport_options
        assert (options["socket_timeout"], options["socket_connect_timeout"]) == (2.0, 2.0)
        assert "visibility_timeout" in options  # added to the worker's options, not instead of them
    finally:
        sender.close()


def test_only_the_hard_time_limit_tells_the_task_and_names_the_queue_its_message_came_from(monkeypatch):
    # docs/operations.md §3: the worker's main process sends bookings.give_up to the job's queue after the
    # hard limit; the soft limit is the task's own business (an exception inside it, retried).
    from celery.worker.request import Request

    from workers.base import JobRequest

    monkeypatch.setattr(Request, "on_timeout", lambda self, soft, timeout: None)  # Celery's own bookkeeping
    told = []

    class Task:
        def on_hard_time_limit(self, args, kwargs, queue):
            told.append((args, kwargs, queue))

    request = JobRequest.__new__(JobRequest)
    request._args, request._kwargs = ["job-1"], {}
    request._delivery_info = {"routing_key": "realtime"}
    request._task = Task()
    request.on_timeout(soft=True, timeout=30)
    assert told == []
    request.on_timeout(soft=False, timeout=40)
    assert told == [(["job-1"], {}, "realtime")]


def test_each_retry_is_logged_as_retry_k_of_8(caplog):
    # docs/operations.md §3: the worker WARNING `retry k/8 after transient error` counts the retries from 1.
    with caplog.at_level(logging.WARNING, logger="workers.base"):
        fails_then_succeeds.apply(args=("operational", 2), task_id="task-retried-1")
    retries = [r.getMessage() for r in caplog.records if r.name == "workers.base"]
    assert len(retries) == 2
    assert [message.split(" after ")[0].split()[-1] for message in retries] == ["1/8", "2/8"]
    assert all("retry" in message and "after transient error" in message for message in retries)


@app.task(base=JobTask, name="unit.reads_its_log_context")
def reads_its_log_context(job_id: str) -> dict:
    return dict(core_logging.get_context())


def test_a_task_logs_with_its_own_context_and_leaves_its_callers_as_it_was():
    # docs/operations.md §6: a worker binds task_id and job_id (for tasks whose first argument is job_id) and
    # starts every task from a clean context; run eagerly, the caller's context is given back afterwards.
    with core_logging.bound(request_id="api-request", tenant_id="tenant-1"):
        seen = reads_its_log_context.apply(args=["job-7"], task_id="task-context-1").get()
        after = core_logging.get_context()
    assert seen == {"task_id": "task-context-1", "job_id": "job-7"}
    assert after == {"request_id": "api-request", "tenant_id": "tenant-1"}


def test_a_sent_task_carries_the_senders_request_and_tenant_to_the_workers_log_lines():
    # docs/operations.md §3: the worker's lines for a job carry the request_id of the API call that created it.
    from celery.signals import before_task_publish

    from workers import signals

    captured = []

    def capture(headers=None, **kwargs):
        captured.append(dict(headers))

    before_task_publish.connect(capture)
    try:
        headers: dict = {}
        with core_logging.bound(request_id="req-42", tenant_id="tenant-9", job_id="not passed on"):
            before_task_publish.send(
                sender="bookings.process", body=(), headers=headers, exchange="", routing_key=""
            )
    finally:
        before_task_publish.disconnect(capture)
    assert captured[-1][signals._HEADER] == {"request_id": "req-42", "tenant_id": "tenant-9"}


def test_a_redis_that_answers_too_late_is_transient_and_retried():
    # docs/operations.md §3: Redis connection errors and timeouts are retried like a database outage.
    timeout = redis.exceptions.TimeoutError("Timeout reading from socket")
    assert is_transient(timeout)
    with mock.patch.object(fails_then_succeeds, "retry", wraps=fails_then_succeeds.retry) as retry:
        ERRORS["redis_timeout"] = lambda: redis.exceptions.TimeoutError("Timeout reading from socket")
        try:
            result = fails_then_succeeds.apply(args=("redis_timeout", 1))
        finally:
            del ERRORS["redis_timeout"]
    assert result.successful() and retry.call_count == 1


def test_each_forked_worker_process_opens_its_own_database_connections(monkeypatch):
    # A forked pool process must not reuse the parent's pooled sockets (two processes on one PostgreSQL
    # connection corrupt each other's protocol stream).
    from celery.signals import worker_process_init

    from workers import signals

    disposed = []
    monkeypatch.setattr(signals.db, "dispose_engine", lambda: disposed.append(True))
    monkeypatch.setattr(signals.gc, "freeze", lambda: None)
    worker_process_init.send(sender=None)
    assert disposed == [True]
