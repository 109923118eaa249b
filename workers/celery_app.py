"""The Celery app and all of its configuration.

    celery -A workers.celery_app worker -Q realtime,bookings,webhooks,notifications,scheduled
    celery -A workers.celery_app beat

(Flower through `voiceappoint flower` only: it passes the basic auth, which plain `celery flower` would not.)

Creating the app connects to nothing: the broker is only contacted when a task is sent or a worker starts.

Queues (one route per family, so operators can run a worker per queue):
    realtime       voice tool calls and bookings someone is waiting for; also diagnostics.*, because a
                   health probe should answer on the lane that must never be backed up
    bookings       booking / reschedule / cancel jobs (the default queue)
    webhooks       Stripe, Vapi reports, Twilio and SendGrid events
    notifications  email and SMS sends
    scheduled      Beat jobs (see beat_schedule.py)
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from celery import Celery
from kombu import Exchange, Queue
from kombu.exceptions import OperationalError
from pydantic import ValidationError

from beat_schedule import BEAT_SCHEDULE
from core.config import Settings, describe, get_settings
from core.intake import EnqueueFailed
from workers import signals  # noqa: F401  (connects logging, per-process DB engines, log context)

QUEUE_NAMES = ("realtime", "bookings", "webhooks", "notifications", "scheduled")
DEFAULT_QUEUE = "bookings"

TASK_ROUTES = {
    "realtime.*": {"queue": "realtime"},
    "bookings.*": {"queue": "bookings"},
    "webhooks.*": {"queue": "webhooks"},
    "notifications.*": {"queue": "notifications"},
    "scheduled.*": {"queue": "scheduled"},
    "diagnostics.*": {"queue": "realtime"},
}

TASK_MODULES = ["tasks.bookings", "tasks.scheduled", "tasks.diagnostics"]

# A message a worker has taken but not acknowledged (acks_late) goes back to its queue after this long,
# and so does a message held for its ETA/countdown. It must stay above the longest task time limit
# (workers.base.JobTask.time_limit) and the longest retry delay (JobTask.retry_backoff_max and
# retry_after_max; tests/unit/test_base_task.py checks), or Redis would hand a still-running or
# still-waiting task to a second worker.
VISIBILITY_TIMEOUT_SECONDS = 2 * 60 * 60

RESULT_EXPIRES_SECONDS = 24 * 60 * 60
WORKER_MAX_MEMORY_KIB = 512 * 1024

# The longest a process that only sends (the API) waits for Redis to take a connection or to answer. A Redis
# that hangs (stopped, swapping, a network black hole) must not hold requests whose jobs are committed
# already: the send fails, and the sweeper sends the job later. Not for workers or Flower: they wait on idle
# subscriptions, where a read timeout is no fault and would only make kombu reconnect them again and again.
SENDER_SOCKET_TIMEOUT_SECONDS = 2.0


# TCP keepalive on every broker connection: one whose peer vanished without a word (a Redis failover behind a
# virtual IP, a NAT or load balancer that forgot an idle flow) fails after about 60 + 3 × 10 s, and kombu
# reconnects. Without it a worker waits on the dead socket for good, idle and healthy-looking (the kernel's
# own keepalive starts after 2 hours). Unlike a read timeout, it never trips on a live idle subscription.
KEEPALIVE_OPTIONS = {
    option: value
    for option, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))
    if hasattr(socket, option)  # Linux names; a developer's macOS has no TCP_KEEPIDLE
}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting of the project, derived from our Settings."""
    broker_transport_options: dict[str, Any] = {
        "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
        "socket_keepalive": True,
        "socket_keepalive_options": {
            getattr(socket, name): value for name, value in KEEPALIVE_OPTIONS.items()
        },
    }
    result_backend_transport_options: dict[str, Any] = {}
    if settings.redis_key_prefix:
        # Every broker key (queues, bindings, unacked sets, event and control channels) and every result
        # key starts with the prefix, so deployments or test runs sharing one Redis never meet.
        broker_transport_options["global_keyprefix"] = settings.redis_key_prefix
        result_backend_transport_options["global_keyprefix"] = settings.redis_key_prefix

    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "broker_transport_options": broker_transport_options,
        "result_backend_transport_options": result_backend_transport_options,
        "redis_socket_keepalive": True,
        "broker_connection_retry_on_startup": True,
        # For good (Celery's default gives up after 100 tries, ~49 minutes, and the worker exits): a worker left
        # alone during a long Redis outage must come back with it, as operations.md promises.
        "broker_connection_max_retries": None,
        # JSON only: a pickle payload from anyone who can write to Redis would be code execution.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Take one message at a time: a long booking never holds others hostage in a busy process's buffer.
        "worker_prefetch_multiplier": 1,
        # A pool process past this resident size (KiB) is replaced once its task ends: a slow leak (a library's
        # cache, a reference cycle the collector never frees) costs a restart, not the host's memory. Ours sit
        # near 100 MB.
        "worker_max_memory_per_child": WORKER_MAX_MEMORY_KIB,
        # Acknowledge after the task ran; a worker that dies mid-task gets the message redelivered.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # On a broker connection loss, stop running acks_late tasks instead of finishing them: the broker
        # redelivers them anyway, and our handlers are idempotent. (Celery 6 makes this the default.)
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Flower builds its view from events: the sent event comes from the publisher, the rest from workers.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "result_expires": RESULT_EXPIRES_SECONDS,
        "task_queues": [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUE_NAMES],
        "task_default_queue": DEFAULT_QUEUE,
        "task_default_exchange": DEFAULT_QUEUE,
        "task_default_routing_key": DEFAULT_QUEUE,
        "task_routes": TASK_ROUTES,
        "beat_schedule": BEAT_SCHEDULE,
        "timezone": "UTC",
        "enable_utc": True,
    }


def create_app(settings: Settings | None = None, *, set_as_current: bool = True) -> Celery:
    """A configured app; tests and the benchmark build one for their own database and key prefix.

    Without explicit settings the configuration is read when the app first needs it (first task sent,
    worker start), not at import: a test session sets its key prefix in the environment after modules
    were imported, and the module-level `app` must still use that prefix.
    """
    celery = Celery("voiceappoint", include=TASK_MODULES, set_as_current=set_as_current)
    if settings is not None:
        celery.config_from_object(celery_config(settings))
    else:

        @celery.on_configure.connect(weak=False)
        def _configure_from_settings(sender: Celery, **_: Any) -> None:
            try:
                settings = get_settings()
            except ValidationError as error:
                # Celery catches (and, before logging is set up, silently drops) a receiver's Exception and
                # goes on with its defaults: a `celery -A workers.celery_app worker` started with a bad
                # setting ran against amqp://guest@localhost:5672 with results and events off, looking
                # healthy. SystemExit is no Exception: it stops the process, with one line, as `voiceappoint`.
                print(f"voiceappoint: error: {describe(error)}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None
            sender.config_from_object(celery_config(settings))

    return celery


def bound_waits_for_sending(celery: Celery) -> None:
    """Make `celery`'s broker connections give up after SENDER_SOCKET_TIMEOUT_SECONDS (the API's)."""
    celery.conf.broker_transport_options = {
        **celery.conf.broker_transport_options,
        "socket_timeout": SENDER_SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": SENDER_SOCKET_TIMEOUT_SECONDS,
    }


app = create_app()


def send_intake_job(job_id: Any, queue: str, **options: Any) -> None:
    """Send an intake job to `bookings.process`: from the API after its commit, and from the sweeper.

    ignore_result: the job row is the outcome. A result subscription would only hold a sender whose Redis is
    down (~20 s of the result backend's reconnect loop) or be left to the cyclic collector to end, which can
    deadlock the next subscribe on the same connection.
    """
    try:
        app.send_task("bookings.process", args=[str(job_id)], queue=queue, ignore_result=True, **options)
    except OperationalError as error:  # kombu's, for any broker connection or timeout error
        raise EnqueueFailed(str(error)) from error
