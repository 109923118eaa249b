"""Smoke tests of the worker machinery with real worker processes on this run's database and Redis prefix."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy.engine import make_url

from beat_schedule import BEAT_SCHEDULE
from core import logging as log
from ops.services import delete_keys_with_prefix
from tests.e2e.processes import ProcessEnvironment, client_app, eventually
from workers.celery_app import QUEUE_NAMES, WORKER_MAX_MEMORY_KIB

TIMEOUT = 30


def test_noop_and_ping_db_run_on_the_real_workers(worker, celery_client, database_url):
    noop = celery_client.send_task("diagnostics.noop")
    ping = celery_client.send_task("diagnostics.ping_db")

    assert noop.get(timeout=TIMEOUT) == {"ok": True}
    # The worker reached PostgreSQL through a unit of work, and it is this run's database.
    assert ping.get(timeout=TIMEOUT) == {"ok": True, "database": make_url(database_url).database}


def test_both_workers_consume_every_queue_with_the_configured_guarantees(worker, celery_client):
    nodenames = [w.nodename for w in worker]
    inspect = celery_client.control.inspect(destination=nodenames, timeout=3)

    active_queues = inspect.active_queues()
    assert sorted(active_queues) == sorted(nodenames)
    for node in nodenames:
        assert {queue["name"] for queue in active_queues[node]} == set(QUEUE_NAMES)

    stats = inspect.stats()
    for node in nodenames:
        assert stats[node]["pool"]["max-concurrency"] == 2
        assert stats[node]["prefetch_count"] == 2  # concurrency x worker_prefetch_multiplier (1)

    configs = inspect.conf(with_defaults=True)
    for node in nodenames:
        conf = configs[node]
        assert conf["task_acks_late"] is True
        assert conf["task_reject_on_worker_lost"] is True
        assert conf["accept_content"] == ["json"]
        assert conf["worker_send_task_events"] is True
        assert conf["worker_max_memory_per_child"] == WORKER_MAX_MEMORY_KIB


def test_flower_sees_every_task_from_sent_to_succeeded(worker, celery_client):
    # Flower is an event consumer like this one: what this receiver gets, Flower shows.
    assert celery_client.conf.task_send_sent_event is True
    assert celery_client.conf.worker_send_task_events is True

    events: list[dict] = []
    connection = celery_client.connection_for_read()
    receiver = celery_client.events.Receiver(connection, handlers={"*": events.append})
    listener = threading.Thread(target=receiver.capture, kwargs={"limit": None, "timeout": None}, daemon=True)
    listener.start()
    try:
        # Events are broadcast, not queued: wait until the receiver hears anything before the real test.
        def heard_a_task() -> bool:
            probe = celery_client.send_task("diagnostics.noop")
            probe.get(timeout=TIMEOUT)
            return eventually(lambda: any(e.get("uuid") == probe.id for e in events), timeout=1.0)

        assert eventually(heard_a_task, timeout=20), "no task event reached the receiver"

        result = celery_client.send_task("diagnostics.noop")
        result.get(timeout=TIMEOUT)
        wanted = {"task-sent", "task-received", "task-started", "task-succeeded"}

        def types_seen() -> set[str]:
            return {e["type"] for e in list(events) if e.get("uuid") == result.id}

        assert eventually(lambda: wanted <= types_seen(), timeout=10), types_seen()
        worker_hosts = {
            e["hostname"] for e in list(events) if e.get("uuid") == result.id and e["type"] != "task-sent"
        }
        assert worker_hosts <= {w.nodename for w in worker}
    finally:
        receiver.should_stop = True
        listener.join(timeout=5)
        connection.release()


def test_worker_logs_carry_the_task_id_and_the_publishers_request_id(worker, celery_client):
    request_id = f"e2e-{uuid.uuid4().hex[:12]}"
    with log.bound(request_id=request_id):
        result = celery_client.send_task("diagnostics.noop")
    result.get(timeout=TIMEOUT)

    def succeeded_line() -> str | None:
        for w in worker:
            for line in w.log_text().splitlines():
                if f"[{result.id}] succeeded" in line:
                    return line
        return None

    line = eventually(succeeded_line, timeout=5)
    assert line is not None, "no 'succeeded' line in the worker logs"
    assert f"task_id={result.id}" in line
    assert f"request_id={request_id}" in line


def test_keys_live_under_this_runs_prefix_and_other_prefixes_are_not_served(
    worker, celery_client, process_environment, redis_prefix
):
    raw = redis.Redis.from_url(process_environment.redis_url)
    result = celery_client.send_task("diagnostics.noop")
    assert result.get(timeout=TIMEOUT) == {"ok": True}
    assert raw.exists(f"{redis_prefix}celery-task-meta-{result.id}")
    assert not raw.exists(f"celery-task-meta-{result.id}")
    assert raw.exists(f"{redis_prefix}_kombu.binding.realtime")

    # Another deployment on the same Redis: same queue names, another prefix. Our workers must not
    # take its task, nor answer its control messages.
    other_prefix = f"va_test_other_{uuid.uuid4().hex[:10]}:"
    other = client_app(
        ProcessEnvironment(
            process_environment.database_url,
            process_environment.redis_url,
            other_prefix,
            process_environment.log_dir,
        )
    )
    try:
        stranger = other.send_task("diagnostics.noop")
        assert other.control.ping(timeout=1.0) == []
        time.sleep(2)
        assert raw.llen(f"{other_prefix}realtime") == 1, "the message should still wait in the other queue"
        assert stranger.state == "PENDING"
    finally:
        other.close()
        delete_keys_with_prefix(process_environment.redis_url, other_prefix)
        raw.close()


def test_a_task_whose_process_is_killed_is_redelivered_and_completes(worker, celery_client, processes):
    result = celery_client.send_task("diagnostics.sleep", args=[3])
    assert eventually(lambda: result.state == "STARTED", timeout=TIMEOUT), result.state
    running_in = result.info  # {"pid": ..., "hostname": ...} while STARTED
    victim = next(w for w in worker if w.nodename == running_in["hostname"])

    killed = victim.kill_hard()

    assert running_in["pid"] in killed
    # acks_late + reject_on_worker_lost: the message goes back to the queue and runs again, in full.
    assert result.get(timeout=TIMEOUT) == {"ok": True, "slept": 3.0}
    # The worker replaced its pool processes and still serves.
    assert eventually(lambda: len(victim.child_pids()) == victim.concurrency, timeout=TIMEOUT)
    assert running_in["pid"] not in victim.child_pids()
    assert processes.ping(victim)


@pytest.mark.parametrize("task_name", ["realtime.x", "bookings.process", "webhooks.stripe", "scheduled.y"])
def test_tasks_are_routed_to_their_family_queue(celery_client, task_name):
    route = celery_client.amqp.router.route({}, task_name)
    assert route["queue"].name == task_name.split(".")[0]


def test_diagnostics_go_to_realtime_and_unknown_names_to_bookings(celery_client):
    assert celery_client.amqp.router.route({}, "diagnostics.noop")["queue"].name == "realtime"
    assert celery_client.amqp.router.route({}, "unknown.task")["queue"].name == "bookings"


def test_the_api_process_is_up_and_reaches_the_database_and_the_broker(api_server):
    with api_server.client(timeout=10) as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
    assert ready.status_code == 200, ready.text


def test_a_sweep_from_a_beat_whose_clock_is_behind_the_workers_clock_still_runs(worker, celery_client):
    # Beat stamps a sweep's expiry with its own clock and the worker judges it by its own: two minutes apart
    # (an unsynchronised host), a 25-second expiry revoked every sweep, and nothing was ever swept.
    entry = BEAT_SCHEDULE["sweep-intake"]
    beats_clock = datetime.now(UTC) - timedelta(minutes=2)
    sweep = celery_client.send_task(
        entry["task"],
        queue=entry["options"]["queue"],
        expires=beats_clock + timedelta(seconds=entry["options"]["expires"]),
    )
    assert "requeued" in sweep.get(timeout=TIMEOUT)


def test_beat_sends_the_intake_sweep_to_the_workers(worker, processes, celery_client):
    # Other tests may have sent a sweep by hand to these workers: only what is logged from now counts.
    seen = {w.nodename: len(w.log_text()) for w in worker}
    beat = processes.start_beat()
    try:
        # sweep-intake runs every 30 s, the first time 30 s after Beat starts.
        def swept() -> bool:
            return any(
                "Task scheduled.sweep_intake[" in line and "succeeded" in line
                for w in worker
                for line in w.log_text()[seen[w.nodename] :].splitlines()
            )

        assert eventually(swept, timeout=50, interval=1), beat.log_tail()
        assert "Sending due task sweep-intake (scheduled.sweep_intake)" in beat.log_text()
        # Nothing reads a sweep's result: stored, each one stayed in Redis for 24 h, 2880 keys a day.
        task_ids = {
            line.split("Task scheduled.sweep_intake[", 1)[1].split("]", 1)[0]
            for w in worker
            for line in w.log_text()[seen[w.nodename] :].splitlines()
            if "Task scheduled.sweep_intake[" in line and "succeeded" in line
        }
        backend = celery_client.backend
        assert task_ids and all(backend.get(backend.get_key_for_task(i)) is None for i in task_ids)
    finally:
        beat.stop()
