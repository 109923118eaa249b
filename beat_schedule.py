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
        # While no worker serves the queue, sweeps pile up; expired ones are dropped, so at most ten wait.
        # Not much shorter: Beat stamps the expiry by its clock and the worker judges it by its own, so
        # the expiry is also how far apart the two clocks may be before every sweep is dropped unseen.
        "options": {"queue": "scheduled", "expires": 300},
    },
}
