"""Booking jobs: one task processes any intake job (booking, reschedule, cancel) by its id."""

from core import intake
from core.clock import utcnow
from core.db import UnitOfWork
from workers.base import JobTask
from workers.celery_app import app


class IntakeJobTask(JobTask):
    def on_failure(self, exc, task_id, args, kwargs, einfo):
        # Retries are exhausted or the error is not transient: the job must not stay `running` forever.
        # System mode: only the job's id is known here, not its tenant.
        with UnitOfWork(system=True) as uow:
            intake.fail_unexpectedly(uow, kwargs.get("job_id") or args[0], utcnow())
        super().on_failure(exc, task_id, args, kwargs, einfo)


@app.task(name="bookings.process", base=IntakeJobTask)
def process(job_id: str) -> dict:
    # System mode until intake.run has read the job: it then scopes the unit of work to the job's tenant.
    with UnitOfWork(system=True) as uow:
        return intake.run(uow, job_id, now=utcnow())
