"""Booking jobs: one task processes any intake job (booking, reschedule, cancel) by its id."""

import logging

from core import intake
from core.clock import utcnow
from core.db import UnitOfWork
from workers.base import JobTask
from workers.celery_app import app
from workers.signals import job_id_of

log = logging.getLogger(__name__)


class IntakeJobTask(JobTask):
    def on_failure(self, exc, task_id, args, kwargs, einfo):
        # Retries are exhausted or the error is not transient: the job must not stay `running` forever.
        _fail_job(job_id_of(self, args, kwargs))
        super().on_failure(exc, task_id, args, kwargs, einfo)

    def on_hard_time_limit(self, args, kwargs, queue):
        # A job that went on past the soft limit's interruption is stuck beyond what a retry would cure;
        # left `running`, it would be failed only after the sweeper re-sent it five times, minutes apart.
        # Failed by another task, not here: the main process calls this before the stuck process is
        # killed, so the job's row is still locked, and the main process must never wait.
        job_id = job_id_of(self, args, kwargs)
        try:
            # ignore_result, as for every job: the worker's main process must never hold a result
            # subscription (its cleanup by the cyclic collector can deadlock the next subscribe).
            give_up.apply_async(args=[job_id], queue=queue, ignore_result=True)
        except Exception:
            log.exception("could not send the failure of job %s; the sweeper will fail it", job_id)


def _fail_job(job_id: str) -> None:
    # System mode: only the job's id is known here, not its tenant.
    with UnitOfWork(system=True) as uow:
        intake.fail_unexpectedly(uow, job_id, utcnow())


@app.task(name="bookings.give_up", base=JobTask)
def give_up(job_id: str) -> None:
    """Fail a job whose task the hard time limit killed (sent by the worker's main process)."""
    _fail_job(job_id)


@app.task(name="bookings.process", base=IntakeJobTask)
def process(job_id: str) -> dict:
    # System mode until intake.run has read the job: it then scopes the unit of work to the job's tenant.
    with UnitOfWork(system=True) as uow:
        return intake.run(uow, job_id, now=utcnow())
