"""The real worker app with two changes, for tests/e2e. A booking for a client named "Crash" kills the pool
process that runs it, every time, as a segfault or an out-of-memory kill would; one for "Hang" swallows
the soft time limit and runs into the hard one, as code stuck in a library that catches everything
would. The time limits are short, so that the hard one comes in seconds.

    celery -A tests.e2e.misbehaving_app worker ...
"""

from __future__ import annotations

import contextlib
import os
import time
from datetime import datetime
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from core import booking, intake
from tasks.bookings import IntakeJobTask
from workers.celery_app import app  # noqa: F401 (the app the worker runs)

CRASHING_NAME = "Crash"
HANGING_NAME = "Hang"
SOFT_TIME_LIMIT = 3
TIME_LIMIT = 5
_real = intake.KINDS["booking"]


def _misbehave_or_book(
    uow: Any, payload: dict[str, Any], now: datetime, requested_at: datetime
) -> booking.BookedAppointment:
    name = payload["client"]["first_name"]
    if name == CRASHING_NAME:
        os._exit(1)
    if name == HANGING_NAME:
        deadline = time.monotonic() + 10 * TIME_LIMIT
        while time.monotonic() < deadline:
            with contextlib.suppress(SoftTimeLimitExceeded):
                time.sleep(0.1)
    return _real.handle(uow, payload, now, requested_at)


# Patched in the worker's main process, before it forks its pool: every pool process inherits it.
intake.KINDS["booking"] = intake.JobKind(_real.validate, _misbehave_or_book)
IntakeJobTask.soft_time_limit = SOFT_TIME_LIMIT
IntakeJobTask.time_limit = TIME_LIMIT
