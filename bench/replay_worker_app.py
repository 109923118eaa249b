"""The real worker app with one bench task more, `bench.replay_booking`: a booking's recorded SQL sent
again by bare psycopg (bench/sql_replay.py), so that `bench/booking_pipeline.py` can measure, through the
same workers, what a booking task would reach if the application's Python cost nothing beyond the driver.

    celery -A bench.replay_worker_app worker ...
"""

from __future__ import annotations

import pickle
from pathlib import Path

import psycopg

from bench.sql_replay import Transaction, connect_as_application, replay
from workers.base import JobTask
from workers.celery_app import app  # noqa: F401 (the app the worker runs)

# Per pool process, made at its first replay (after the fork): the recordings read, the connections open.
_recordings: dict[str, list[list[Transaction]]] = {}
_connections: dict[str, psycopg.Connection] = {}


@app.task(name="bench.replay_booking", base=JobTask)
def replay_booking(recording_path: str, database_url: str, job: int) -> dict:
    """Replay the transactions of recorded job number `job` (its running marker, then its booking)."""
    if recording_path not in _recordings:
        _recordings[recording_path] = pickle.loads(Path(recording_path).read_bytes())
    if database_url not in _connections:
        _connections[database_url] = connect_as_application(database_url)
    for transaction in _recordings[recording_path][job]:
        replay(_connections[database_url], transaction)
    return {"status": "succeeded"}
