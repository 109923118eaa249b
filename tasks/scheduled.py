"""Periodic jobs driven by Celery Beat (see beat_schedule.py)."""

from datetime import timedelta

from core import intake
from core.clock import utcnow
from core.config import get_settings
from core.db import UnitOfWork
from workers.base import JobTask
from workers.celery_app import app

RUNNING_TOO_LONG = timedelta(minutes=5)


@app.task(name="scheduled.sweep_intake", base=JobTask)
def sweep_intake() -> dict:
    """Re-queue intake jobs that were accepted but never reached (or never left) a worker."""
    with UnitOfWork(system=True) as uow:  # every tenant's jobs
        stale = intake.claim_stale(
            uow,
            utcnow(),
            queued_for=timedelta(seconds=get_settings().intake_sweep_after_seconds),
            running_for=RUNNING_TOO_LONG,
        )
        uow.after_commit(
            lambda: [
                app.send_task("bookings.process", args=[str(job_id)], queue=queue) for job_id, queue in stale
            ]
        )
        uow.commit()
    return {"requeued": len(stale)}
