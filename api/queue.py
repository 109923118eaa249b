"""Sending jobs to the workers by task name (the API never imports tasks/)."""

import uuid

from workers.celery_app import app as celery_app

# A down broker must not hold a request for long: the job row is committed and the sweeper re-queues it.
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def enqueue_intake_job(job_id: uuid.UUID, queue: str) -> None:
    # ignore_result: the job row is the outcome, and subscribing to a result channel on a down Redis
    # would hold the request for ~20 s (the result backend's reconnect loop) instead of failing at once.
    celery_app.send_task(
        "bookings.process",
        args=[str(job_id)],
        queue=queue,
        retry=True,
        retry_policy=PUBLISH_RETRY,
        ignore_result=True,
    )
