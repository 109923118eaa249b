"""Diagnostics: the smallest possible tasks, for smoke tests, health probes and the throughput ceiling."""

import time

from sqlalchemy import text

from core.db import UnitOfWork
from workers.base import JobTask
from workers.celery_app import app


@app.task(name="diagnostics.noop", base=JobTask)
def noop() -> dict:
    """Does nothing: what the worker machinery alone costs per task."""
    return {"ok": True}


@app.task(name="diagnostics.ping_db", base=JobTask)
def ping_db() -> dict:
    """One round trip to PostgreSQL through a unit of work, as every real task makes."""
    with UnitOfWork(read_only=True) as uow:
        one, database = uow.session.execute(text("SELECT 1, current_database()")).one()
    return {"ok": one == 1, "database": database}


MAX_SLEEP_SECONDS = 20.0


@app.task(name="diagnostics.sleep", base=JobTask)
def sleep(seconds: float) -> dict:
    """Hold a worker process for a while: crash tests kill it mid-task and watch the task come back."""
    seconds = min(max(float(seconds), 0.0), MAX_SLEEP_SECONDS)
    time.sleep(seconds)
    return {"ok": True, "slept": seconds}
