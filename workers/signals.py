"""Worker and publisher hooks: logging, one database engine per process, the log context of each task."""

from __future__ import annotations

import gc
import inspect
from functools import cache
from typing import Any

from celery import signals

from core import db
from core import logging as log

# The context fields a publisher passes on to the task it sends, so the worker's lines for a job carry
# the request_id of the API call that created it.
PROPAGATED_FIELDS = ("request_id", "tenant_id")
_HEADER = "va_log_context"


@signals.setup_logging.connect
def _configure_logging(loglevel: int | str | None = None, **_: Any) -> None:
    # Connecting this receiver tells Celery not to install its own handlers: ours are the only ones.
    log.configure(level=loglevel)


@signals.worker_process_init.connect
def _fresh_engine_per_process(**_: Any) -> None:
    # A forked child must not reuse the parent's pooled sockets: two processes talking over one
    # PostgreSQL connection corrupt each other's protocol stream.
    db.dispose_engine()
    # Everything imported so far lives as long as the process: keep it out of the collector's
    # generations, so a collection during a booking does not walk it.
    gc.freeze()


@signals.before_task_publish.connect
def _propagate_context(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is None:
        return
    context = log.get_context()
    passed_on = {name: str(context[name]) for name in PROPAGATED_FIELDS if name in context}
    if passed_on:
        headers[_HEADER] = passed_on


@cache
def _takes_job_id_first(task_run: Any) -> bool:
    try:
        parameters = list(inspect.signature(task_run).parameters)
    except (TypeError, ValueError):
        return False
    return bool(parameters) and parameters[0] == "job_id"


def job_id_of(task: Any, args: Any, kwargs: Any) -> str | None:
    """The job id, for tasks whose first parameter is named `job_id` (the convention for job tasks)."""
    if kwargs and "job_id" in kwargs:
        return str(kwargs["job_id"])
    if args and _takes_job_id_first(task.run):
        return str(args[0])
    return None


# The context that was there before each running task, put back afterwards: a worker process starts every
# task from a clean context, and an eagerly run task (unit tests) leaves its caller's context as it was.
_outer_context: dict[str, dict[str, Any]] = {}


@signals.task_prerun.connect
def _bind_task_context(
    task_id: str | None = None, task: Any = None, args: Any = None, kwargs: Any = None, **_: Any
) -> None:
    if task_id is not None:
        _outer_context[task_id] = log.get_context()
    log.clear()
    if task is None:
        log.bind(task_id=task_id)
        return
    inherited = getattr(task.request, _HEADER, None)
    if isinstance(inherited, dict):
        log.bind(**{name: inherited[name] for name in PROPAGATED_FIELDS if name in inherited})
    log.bind(task_id=task_id, job_id=job_id_of(task, args, kwargs))


@signals.task_postrun.connect
def _restore_context(task_id: str | None = None, **_: Any) -> None:
    log.clear()
    log.bind(**_outer_context.pop(task_id, {}))
