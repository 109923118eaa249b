"""The base class of every task: late acknowledgement, time limits, and retries for transient errors only.

What is transient: the database or Redis being unreachable, a connection dropped mid-transaction (or
dropped by core.db for refusing writes during a failover, 25006), a deadlock, a serialization failure, a
statement timeout and the other database errors that core.db.may_pass says a later try may not meet, the
soft time limit (a lock wait or a slow database under load), and any `TransientError` a task raises
(provider 5xx/429 wrappers will derive from it or be added to TRANSIENT_ERRORS). A DomainError is a final
outcome: the task records it on its job and is never retried, and neither is anything else (a bug, or a
database error such as a program limit exceeded, does not get better by running it again).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import kombu.exceptions
import redis.exceptions
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval
from celery.worker.request import Request
from sqlalchemy import exc as sa_exc

from core.db import may_pass
from core.errors import DomainError

logger = logging.getLogger(__name__)


class TransientError(Exception):
    """Raise it (or a subclass) when the same call may well succeed later.

    `retry_after` (seconds) is honoured as the retry delay, e.g. from a provider's Retry-After header.
    """

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError,
    # Over the soft time limit, a task is usually waiting on a lock or a slow database under load: the
    # same reason a statement timeout (an OperationalError, below) is retried.
    SoftTimeLimitExceeded,
    sa_exc.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    # A send inside a task (a notification after its booking commits) when Redis refuses it.
    kombu.exceptions.OperationalError,
)


# Redis (the broker and the result backend) not answering, as redis-py and kombu report it.
BROKER_UNREACHABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
    OSError,
)


def is_transient(error: BaseException) -> bool:
    if isinstance(error, DomainError):
        return False
    if isinstance(error, sa_exc.OperationalError):
        return may_pass(error)
    if isinstance(error, TRANSIENT_ERRORS):
        return True
    if isinstance(error, sa_exc.PendingRollbackError) and error.__context__ is not None:
        # Clean-up that touched a connection after it failed: the first error says what happened.
        return is_transient(error.__context__)
    # Any DBAPI error raised because the connection died (SQLAlchemy marks the connection invalidated), or
    # was dropped as one that reached a standby in a failover (core.db refuses to keep those).
    return isinstance(error, sa_exc.DBAPIError) and bool(error.connection_invalidated)


class JobRequest(Request):
    """A task's message as the worker's main process handles it.

    The hard time limit kills the pool process mid-task: nothing runs there any more (no on_failure), and
    the message is acknowledged. Only the main process knows, so it tells the task here.
    """

    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)
        if not soft:
            self.task.on_hard_time_limit(self.args, self.kwargs, self.delivery_info.get("routing_key"))

    def _announce_cancelled(self, emit_retry: bool = True) -> None:
        # Called when the broker connection is lost under a running task (which is stopped, unacknowledged:
        # see worker_cancel_long_running_tasks_on_connection_loss). Celery then records the task's RETRY
        # state in the result backend, which is the same Redis that just went away: its ConnectionError
        # escaped to the consumer as "unrecoverable" and the worker exited for good, instead of
        # reconnecting. The state is only for Flower; the job row and the sweeper carry the job on.
        try:
            super()._announce_cancelled(emit_retry=emit_retry)
        except BROKER_UNREACHABLE as error:
            logger.warning(
                "task %s[%s] stopped; its state could not be recorded: %r", self.name, self.id, error
            )
            self._already_cancelled = True


class JobTask(Task):
    Request = JobRequest
    acks_late = True
    reject_on_worker_lost = True
    # The soft limit raises SoftTimeLimitExceeded inside the task (its transaction rolls back); the hard
    # limit kills the process. Both only apply under the prefork pool. Slower tasks set their own.
    soft_time_limit = 30
    time_limit = 40
    # Each failure is logged once, by on_failure below: a bug as an ERROR with its traceback, a domain error as
    # an INFO. Celery's trace would log it again ("raised unexpected", an ERROR with the same traceback); for
    # the exceptions in `throws` it writes an INFO line without the traceback instead.
    throws = (Exception,)

    # Retry policy, applied by __call__ below to transient errors only. Celery's own `autoretry_for`
    # matches on exception classes alone and cannot tell a dropped connection from a constraint violation.
    max_retries = 8
    retry_backoff = True
    retry_backoff_max = 240
    retry_jitter = True
    # A Retry-After longer than this is cut short. While a retry waits, its job stays `running`: the
    # sweeper takes a job that has not started again for longer than the wait and a run
    # (tasks.scheduled.RUNNING_TOO_LONG, derived from these) as lost, and re-sends or fails it. Both waits
    # also stay under the broker's visibility timeout (workers.celery_app.VISIBILITY_TIMEOUT_SECONDS), which
    # would otherwise redeliver a message still waiting for its ETA.
    retry_after_max = 240

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except DomainError:
            raise
        except Exception as error:
            if not is_transient(error):
                raise
            # retry() raises Retry, or the original error once max_retries is spent. It sends the retry with
            # the task's own ignore_result unless told: keep the sender's (the job tasks are sent without a
            # result, and each retry would otherwise store two result keys for a day).
            raise self.retry(  # noqa: B904
                exc=error, countdown=self.retry_countdown(error), ignore_result=self.request.ignore_result
            )

    def retry_countdown(self, error: BaseException) -> float:
        """Seconds before the next attempt: the error's Retry-After, else exponential backoff (1, 2, 4… s,
        at most retry_backoff_max) of which the second half is random ("equal jitter")."""
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return min(max(float(retry_after), 0.0), float(self.retry_after_max))
        ceiling = get_exponential_backoff_interval(
            factor=1, retries=self.request.retries or 0, maximum=self.retry_backoff_max, full_jitter=False
        )
        if not self.retry_jitter:
            return float(ceiling)
        # Half of it fixed: with the whole wait random (Celery's full jitter), the eight retries could all be
        # spent within seconds, before a restarting database is back, and the job would fail.
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def on_hard_time_limit(self, args: Any, kwargs: Any, queue: str | None) -> None:
        """Called in the worker's main process when the hard time limit stops the task (the process is
        being killed): the task's arguments, and the queue its message came from."""

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        logger.warning(
            "task %s[%s] retry %s/%s after transient error: %r",
            self.name,
            task_id,
            (self.request.retries or 0) + 1,
            self.max_retries,
            exc,
            extra={"task_id": task_id},
        )

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, DomainError):
            # An expected outcome (slot taken, not found...): no traceback, the job row says the rest.
            logger.info(
                "task %s[%s] ended with domain error %s: %s",
                self.name,
                task_id,
                exc.code,
                exc.message,
                extra={"task_id": task_id},
            )
            return
        logger.error(
            "task %s[%s] failed: %r",
            self.name,
            task_id,
            exc,
            exc_info=(type(exc), exc, exc.__traceback__),
            extra={"task_id": task_id},
        )
