"""The real worker app with one change, for tests/e2e: a booking for a client named "Crash" kills the pool
process that runs it, every time, as a segfault or an out-of-memory kill would.

    celery -A tests.e2e.crashing_app worker ...
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from core import booking, intake
from core.db import UnitOfWork
from workers.celery_app import app  # noqa: F401 (the app the worker runs)

CRASHING_NAME = "Crash"
_real = intake.KINDS["booking"]


def _crash_or_book(uow: UnitOfWork, payload: dict[str, Any], now: datetime) -> booking.BookedAppointment:
    if payload["client"]["first_name"] == CRASHING_NAME:
        os._exit(1)
    return _real.handle(uow, payload, now)


# Patched in the worker's main process, before it forks its pool: every pool process inherits it.
intake.KINDS["booking"] = intake.JobKind(_real.validate, _crash_or_book)
