"""Throughput of the task pipeline with two real worker processes.

    .venv/bin/python bench/booking_pipeline.py [--tasks 2000] [--workers 2] [--concurrency 2]

The run is self-contained: its own database (va_bench_<id>, migrated to head, next to DATABASE_URL), its
own Redis key prefix on REDIS_URL, two worker processes started as the e2e harness starts them; all of
it is stopped, dropped and deleted at the end (VOICEAPPOINT_KEEP_BENCH_DB=1 keeps the database).

What it measures today: the no-op ceiling only, i.e. `diagnostics.noop` tasks sent on the `bookings`
queue, the lane booking jobs use, so it is what the worker machinery alone allows (broker round trips,
acks, result writes, events). Booking measurements are added beside `run_noop` and reported as a ratio
of this ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ on the path, not the project root the harness lives in.
sys.path.insert(0, str(REPO_ROOT))

import redis  # noqa: E402
from alembic import command  # noqa: E402
from celery import Celery  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from core.config import get_settings  # noqa: E402
from ops.database import alembic_config, create_database_if_missing, drop_database  # noqa: E402
from tests.e2e.processes import ProcessEnvironment, ProcessHarness, WorkerProcess  # noqa: E402

RESULTS_DIR = REPO_ROOT / "bench" / "results"
RESULT_TIMEOUT = 300


@dataclass
class Measurement:
    name: str
    tasks: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.tasks / self.seconds if self.seconds else float("inf")


@dataclass
class Bench:
    """One benchmark run's database, key prefix, running workers and a client to send tasks with."""

    database_url: str
    redis_url: str
    redis_prefix: str
    harness: ProcessHarness
    workers: list[WorkerProcess]

    @property
    def client(self) -> Celery:
        return self.harness.client


@contextmanager
def bench_environment(workers: int = 2, concurrency: int = 2) -> Iterator[Bench]:
    settings = get_settings()
    run_id = uuid.uuid4().hex[:10]
    database_url = (
        make_url(settings.database_url)
        .set(database=f"va_bench_{run_id}")
        .render_as_string(hide_password=False)
    )
    redis_prefix = f"va_bench_{run_id}:"
    log_dir = Path(tempfile.mkdtemp(prefix=f"va_bench_{run_id}_"))

    create_database_if_missing(database_url)
    harness = None
    try:
        command.upgrade(alembic_config(database_url), "head")
        harness = ProcessHarness(ProcessEnvironment(database_url, settings.redis_url, redis_prefix, log_dir))
        started = [harness.start_worker(name="bench-worker", concurrency=concurrency) for _ in range(workers)]
        yield Bench(database_url, settings.redis_url, redis_prefix, harness, started)
    finally:
        if harness is not None:
            harness.stop_all()
        if not os.environ.get("VOICEAPPOINT_KEEP_BENCH_DB"):
            drop_database(database_url)
        _delete_keys(settings.redis_url, redis_prefix)
        print(f"worker logs: {log_dir}")


def _delete_keys(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()


def _run_tasks(bench: Bench, name: str, task: str, n: int, queue: str) -> Measurement:
    started = time.perf_counter()
    results = [bench.client.send_task(task, queue=queue) for _ in range(n)]
    for result in results:
        result.get(timeout=RESULT_TIMEOUT)
    return Measurement(name, n, time.perf_counter() - started)


def run_noop(n: int, bench: Bench) -> Measurement:
    """The ceiling: n no-op tasks through the bookings lane, from the first send to the last result."""
    _run_tasks(bench, "warm-up", "diagnostics.noop", min(50, n), queue="bookings")
    return _run_tasks(bench, "noop ceiling", "diagnostics.noop", n, queue="bookings")


def report(measurements: list[Measurement], bench: Bench) -> None:
    shape = f"{len(bench.workers)} workers x {bench.workers[0].concurrency} processes"
    for measurement in measurements:
        print(
            f"{measurement.name}: {measurement.tasks} tasks in {measurement.seconds:.2f} s = "
            f"{measurement.per_second:.0f} tasks/s ({shape})"
        )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"booking_pipeline-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "shape": shape,
                "measurements": [asdict(m) | {"per_second": m.per_second} for m in measurements],
            },
            indent=2,
        )
    )
    print(f"results: {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per measurement")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes per worker")
    args = parser.parse_args(argv)

    with bench_environment(workers=args.workers, concurrency=args.concurrency) as bench:
        measurements = [run_noop(args.tasks, bench)]
        report(measurements, bench)
    print("measured: the no-op ceiling only (booking throughput is not measured by this script yet)")


if __name__ == "__main__":
    main()
