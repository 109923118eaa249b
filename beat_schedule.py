"""The whole periodic schedule, in one place.

Beat only sends messages; the tasks do the work, and each is safe to run twice at once (they claim rows
with conditional UPDATEs or FOR UPDATE SKIP LOCKED), so a second Beat or a late run does no harm.
Entries are routed by name (scheduled.* -> queue "scheduled", see workers/celery_app.py).
"""

from datetime import datetime, timedelta

from celery.schedules import schedule


class ClockSafeInterval(schedule):
    """A fixed interval that a clock set back does not stop.

    Beat keeps each entry's last run in its state file. A host whose clock ran ahead and was then corrected
    (NTP stepping it back) leaves a last run in the future, and Celery's own interval waits for that run plus
    the interval by the corrected clock: no sweep for as long as the clock had been ahead (celery#6742). A
    last run in the future counts as now.
    """

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        now = self.maybe_make_aware(self.now())
        return super().remaining_estimate(min(self.maybe_make_aware(last_run_at), now))


BEAT_SCHEDULE = {
    # Re-enqueue intake jobs that were committed but never reached the broker (Redis down at enqueue time).
    "sweep-intake": {
        "task": "scheduled.sweep_intake",
        "schedule": ClockSafeInterval(timedelta(seconds=30)),
        # While no worker serves the queue, sweeps pile up; expired ones are dropped, so at most ten wait.
        # Not much shorter: Beat stamps the expiry by its clock and the worker judges it by its own, so
        # the expiry is also how far apart the two clocks may be before every sweep is dropped unseen.
        # No result: nothing reads it, and each sweep's would stay in Redis for the results' 24 h (2880 keys).
        "options": {"queue": "scheduled", "expires": 300, "ignore_result": True},
    },
}
