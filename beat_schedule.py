"""The whole periodic schedule, in one place.

Beat only sends messages; the tasks do the work, and each is safe to run twice at once (they claim rows
with conditional UPDATEs or FOR UPDATE SKIP LOCKED), so a second Beat or a late run does no harm.
Entries are routed by name (scheduled.* -> queue "scheduled", see workers/celery_app.py).
"""

from datetime import timedelta

BEAT_SCHEDULE = {
    # Re-enqueue intake jobs that were committed but never reached the broker (Redis down at enqueue time).
    "sweep-intake": {
        "task": "scheduled.sweep_intake",
        "schedule": timedelta(seconds=30),
        # A sweep that has waited longer than the interval is pointless, the next one is already due:
        # drop it rather than let a backlog of sweeps build up while no worker serves the queue.
        "options": {"queue": "scheduled", "expires": 25},
    },
}
