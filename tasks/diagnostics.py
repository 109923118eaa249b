"""Diagnostics: the smallest possible tasks, for smoke tests, health probes and the throughput ceiling."""

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
    with UnitOfWork() as uow:
        one, database = uow.session.execute(text("SELECT 1, current_database()")).one()
    return {"ok": one == 1, "database": database}
