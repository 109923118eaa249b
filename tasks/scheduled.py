"""Periodic jobs driven by Celery Beat (see beat_schedule.py)."""

import logging
import uuid
from datetime import timedelta

from celery.exceptions import SoftTimeLimitExceeded

from core import intake
from core.clock import utcnow
from core.config import get_settings
from core.db import UnitOfWork
from workers.base import JobTask
from workers.celery_app import app, send_intake_job

log = logging.getLogger(__name__)

# A `running` job that has not started again for longer than its longest wait for a retry plus a whole
# run lost its message; sooner, it may be a live job waiting for its retry's countdown.
RUNNING_TOO_LONG = timedelta(
    seconds=max(JobTask.retry_backoff_max, JobTask.retry_after_max) + JobTask.time_limit + 20
)


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
        uow.after_commit(lambda: _send_all(stale))
        uow.commit()
    return {"requeued": len(stale)}


def _send_all(jobs: list[tuple[uuid.UUID, str]]) -> None:
    # One failed send must not hold back the others; a job not sent now is claimed by a later sweep.
    for job_id, queue in jobs:
        try:
            send_intake_job(job_id, queue)
        except intake.EnqueueFailed as error:
            log.warning("could not re-send job %s (%s); a later sweep will", job_id, error)
        except SoftTimeLimitExceeded:
            raise  # the sweep has run too long (a Redis that hangs): stop, the next sweep goes on
        except Exception:
            log.exception("could not re-send job %s (a defect, not the broker); a later sweep will", job_id)
