"""Sending jobs to the workers by task name (the API never imports tasks/)."""

import uuid

from workers.celery_app import send_intake_job

# A down broker must not hold a request for long: the job row is committed and the sweeper re-queues it.
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def enqueue_intake_job(job_id: uuid.UUID, queue: str) -> None:
    send_intake_job(job_id, queue, retry=True, retry_policy=PUBLISH_RETRY)
