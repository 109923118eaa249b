"""Throughput of the task pipeline with two real worker processes.

    .venv/bin/python bench/booking_pipeline.py [--tasks 2000] [--workers 2] [--concurrency 2]

The run is self-contained: its own database (va_bench_<id>, migrated to head, next to DATABASE_URL), its
own Redis key prefix on REDIS_URL, two worker processes started as the e2e harness starts them; all of
it is stopped, dropped and deleted at the end (VOICEAPPOINT_KEEP_BENCH_DB=1 keeps the database).

What it measures, through the same workers in one run:
- the no-op ceiling: `diagnostics.noop` tasks on the `bookings` queue, the lane booking jobs use, i.e.
  what the worker machinery alone allows (broker round trips, acks, result writes, events);
- bookings spread over many businesses (no two jobs compete for a resource lock);
- bookings all on one hot resource (every job locks the same stylist and chair, at distinct times);
- the same SQL without the application: `bench.replay_booking` tasks, each sending a recorded booking's
  statements again by bare psycopg (bench/sql_replay.py; the bookings are run and recorded in this
  process before the workers start, on a database of their own, and replayed on a copy made before
  they ran). This is the most any booking task that sends the booking's SQL could reach: what is left
  between it and the no-op is PostgreSQL's work and the driver's.
Booking jobs are recorded as intake jobs before the clock starts, as the API records them (each client
with a phone and an email, the system templates seeded, so each booking queues two confirmations); the clock
runs from the first `bookings.process` sent to the last result. Every booking must succeed, and the
run checks that no resource is ever allocated twice at overlapping times.

Targets (issue 4): bookings >= 0.5 x the no-op ceiling; hot >= 0.9 x spread; zero double bookings.
The workers run bench/replay_worker_app.py: the real app with the replay task added.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ on the path, not the project root the harness lives in.
sys.path.insert(0, str(REPO_ROOT))

from alembic import command  # noqa: E402
from celery import Celery  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402

from bench.sql_replay import by_job, copy_database, database, record  # noqa: E402
from bench.workload import (  # noqa: E402
    SPREAD_BUSINESSES,
    overlapping_allocations,
    record_booking_jobs,
    run_intake_jobs,
    seed_system_rows,
)
from core.config import get_settings  # noqa: E402
from core.db import make_engine  # noqa: E402
from ops.database import alembic_config, create_database_if_missing, drop_database  # noqa: E402
from ops.services import delete_keys_with_prefix  # noqa: E402
from tests.e2e.processes import ProcessEnvironment, ProcessHarness, WorkerProcess  # noqa: E402

RESULTS_DIR = REPO_ROOT / "bench" / "results"
RESULT_TIMEOUT = 300


@dataclass
class Measurement:
    name: str
    tasks: int
    seconds: float
    # CPU milliseconds per task, by the kind of process that spent them (empty where /proc is missing).
    cpu_ms_per_task: dict[str, float] = field(default_factory=dict)

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
        seed_system_rows(database_url)
        harness = ProcessHarness(ProcessEnvironment(database_url, settings.redis_url, redis_prefix, log_dir))
        started = [
            harness.start_worker(name="bench-worker", concurrency=concurrency, app="bench.replay_worker_app")
            for _ in range(workers)
        ]
        yield Bench(database_url, settings.redis_url, redis_prefix, harness, started)
    finally:
        if harness is not None:
            harness.stop_all()
        if not os.environ.get("VOICEAPPOINT_KEEP_BENCH_DB"):
            drop_database(database_url)
        delete_keys_with_prefix(settings.redis_url, redis_prefix)
        print(f"worker logs: {log_dir}")


def cpu_seconds_by_kind() -> dict[str, float]:
    """CPU time spent so far by the processes a task goes through, by kind (Linux only: read from /proc).

    With both cores busy, this says what a task costs in all (Python, PostgreSQL, Redis, Celery), which
    the throughput alone does not."""
    ticks: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # exited meanwhile
        if int(entry.name) == os.getpid():
            kind = "bench client"
        elif "bench-worker" in command_line:
            kind = "celery workers"
        elif command_line.startswith("postgres"):
            kind = "postgresql"
        elif command_line.startswith("redis-server"):
            kind = "redis"
        else:
            continue
        user, system = stat[stat.rindex(")") + 2 :].split()[11:13]
        ticks[kind] = ticks.get(kind, 0) + int(user) + int(system)
    per_second = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return {kind: count / per_second for kind, count in ticks.items()}


def _cpu_ms_per_task(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    spent = {kind: (after[kind] - before.get(kind, 0.0)) * 1000 / n for kind in after}
    return {kind: round(ms, 2) for kind, ms in sorted(spent.items(), key=lambda item: -item[1])}


def _run_tasks(bench: Bench, name: str, task: str, n: int, queue: str) -> Measurement:
    gc.collect()
    cpu_before = cpu_seconds_by_kind()
    started = time.perf_counter()
    results = [bench.client.send_task(task, queue=queue) for _ in range(n)]
    for result in results:
        result.get(timeout=RESULT_TIMEOUT)
    seconds = time.perf_counter() - started
    return Measurement(name, n, seconds, _cpu_ms_per_task(cpu_before, cpu_seconds_by_kind(), n))


def run_noop(n: int, bench: Bench) -> Measurement:
    """The ceiling: n no-op tasks through the bookings lane, from the first send to the last result."""
    _run_tasks(bench, "warm-up", "diagnostics.noop", min(50, n), queue="bookings")
    return _run_tasks(bench, "noop ceiling", "diagnostics.noop", n, queue="bookings")


def run_bookings(name: str, n: int, businesses: int, bench: Bench) -> Measurement:
    job_ids = record_booking_jobs(bench.database_url, n, businesses)
    gc.collect()
    cpu_before = cpu_seconds_by_kind()
    started = time.perf_counter()
    results = [
        bench.client.send_task("bookings.process", args=[job_id], queue="bookings") for job_id in job_ids
    ]
    outcomes = [result.get(timeout=RESULT_TIMEOUT) for result in results]
    seconds = time.perf_counter() - started
    cpu = _cpu_ms_per_task(cpu_before, cpu_seconds_by_kind(), n)
    failed = [outcome for outcome in outcomes if outcome["status"] != "succeeded"]
    if failed:
        raise SystemExit(f"{name}: {len(failed)} bookings failed, e.g. {failed[0]}")
    return Measurement(name, n, seconds, cpu)


@dataclass
class Recording:
    path: str  # the pickled transactions of each job, by job number
    replay_url: str  # a copy of the database the jobs ran on, made before they ran
    jobs: int


@contextmanager
def recorded_bookings(n: int) -> Iterator[Recording]:
    """n spread bookings (every client a new one, so they can be replayed in any order) run by
    `intake.run` in this process and recorded; their database and its copy are dropped at the end."""
    run_id = uuid.uuid4().hex[:10]
    source_url = database(get_settings().database_url, f"va_bench_{run_id}_recorded")
    replay_url = database(source_url, f"va_bench_{run_id}_replayed")
    path = Path(tempfile.mkdtemp(prefix=f"va_bench_{run_id}_")) / "recording.pickle"
    created = [source_url]
    try:
        create_database_if_missing(source_url)
        command.upgrade(alembic_config(source_url), "head")
        seed_system_rows(source_url)
        job_ids = record_booking_jobs(source_url, n, SPREAD_BUSINESSES, returning_clients=False)
        copy_database(source_url, make_url(replay_url).database)
        created.append(replay_url)
        engine = make_engine(source_url, pool_size=1, max_overflow=0)
        try:
            recording = record(engine)
            run_intake_jobs(sessionmaker(engine, expire_on_commit=False), job_ids)
        finally:
            engine.dispose()
        path.write_bytes(pickle.dumps(by_job(recording, n)))
        yield Recording(str(path), replay_url, n)
    finally:
        path.unlink(missing_ok=True)
        for url in created:
            drop_database(url)


def run_replays(name: str, jobs: range, recording: Recording, bench: Bench) -> Measurement:
    """Recorded bookings `jobs` replayed by the workers, from the first send to the last result."""
    gc.collect()
    cpu_before = cpu_seconds_by_kind()
    started = time.perf_counter()
    results = [
        bench.client.send_task(
            "bench.replay_booking", args=[recording.path, recording.replay_url, job], queue="bookings"
        )
        for job in jobs
    ]
    for result in results:
        result.get(timeout=RESULT_TIMEOUT)
    seconds = time.perf_counter() - started
    return Measurement(
        name, len(jobs), seconds, _cpu_ms_per_task(cpu_before, cpu_seconds_by_kind(), len(jobs))
    )


def check_replayed(recording: Recording) -> None:
    """Every recorded booking was replayed in full: its job succeeded in the copy, as in the original."""
    engine = create_engine(recording.replay_url)
    try:
        with engine.connect() as connection:
            succeeded = connection.execute(
                text("SELECT count(*) FROM intake_jobs WHERE status = 'succeeded'")
            ).scalar_one()
    finally:
        engine.dispose()
    if succeeded != recording.jobs:
        raise SystemExit(f"{recording.jobs} bookings replayed, but {succeeded} jobs succeeded in the copy")


def median_round(rounds: list[Measurement]) -> Measurement:
    return sorted(rounds, key=lambda m: m.per_second)[len(rounds) // 2]


def report(measurements: list[Measurement], bench: Bench) -> None:
    shape = f"{len(bench.workers)} workers x {bench.workers[0].concurrency} processes"
    for measurement in measurements:
        cpu = measurement.cpu_ms_per_task
        spent = f"; CPU ms per task: {sum(cpu.values()):.1f} = " + ", ".join(
            f"{kind} {ms}" for kind, ms in cpu.items()
        )
        print(
            f"{measurement.name}: {measurement.tasks} tasks in {measurement.seconds:.2f} s = "
            f"{measurement.per_second:.0f} tasks/s ({shape}){spent if cpu else ''}"
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
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median round counts")
    args = parser.parse_args(argv)
    # `timeout` and Ctrl-C alike end the run through the clean-up below (workers stopped, database dropped).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    # Rounds alternate the three measurements so that a slow moment of a shared host, or the growing
    # tables, does not fall on one of them only; each figure is the median of its rounds.
    measured: dict[str, list[Measurement]] = {"noop": [], "spread": [], "hot": [], "replay": []}
    # The cyclic collector may run an AsyncResult's __del__ (which unsubscribes from the result channel)
    # while a send is subscribing on that same Redis connection, and the two deadlock. Collect only
    # between measurements, where no Redis call is in flight.
    gc.disable()
    warm_up = 100
    with (
        recorded_bookings(warm_up + args.rounds * args.tasks) as recording,
        bench_environment(workers=args.workers, concurrency=args.concurrency) as bench,
    ):
        # A worker process's first booking costs ~0.2 s (imports, first compiles, connections): not measured.
        run_bookings("warm-up", warm_up, SPREAD_BUSINESSES, bench)
        run_replays("warm-up", range(warm_up), recording, bench)
        for round_ in range(args.rounds):
            measured["noop"].append(run_noop(args.tasks, bench))
            measured["spread"].append(run_bookings("bookings spread", args.tasks, SPREAD_BUSINESSES, bench))
            measured["hot"].append(run_bookings("bookings on one hot resource", args.tasks, 1, bench))
            first = warm_up + round_ * args.tasks
            replays = range(first, first + args.tasks)
            measured["replay"].append(run_replays("same SQL by bare psycopg", replays, recording, bench))
        names = ("noop", "spread", "hot", "replay")
        noop, spread, hot, replayed = (median_round(measured[name]) for name in names)
        report([m for name in names for m in measured[name]], bench)
        overlaps = overlapping_allocations(bench.database_url)
        check_replayed(recording)
    print(
        f"median rounds: no-op {noop.per_second:.0f}/s, spread {spread.per_second:.0f}/s,"
        f" hot {hot.per_second:.0f}/s, same SQL by bare psycopg {replayed.per_second:.0f}/s"
    )
    slowest = min(spread.per_second, hot.per_second)
    print(f"bookings / no-op ceiling: {slowest / noop.per_second:.2f} (target >= 0.5)")
    print(
        f"same SQL by bare psycopg / no-op ceiling: {replayed.per_second / noop.per_second:.2f}"
        " (what a booking task sending this SQL could reach at most)"
    )
    print(f"hot / spread: {hot.per_second / spread.per_second:.2f} (target >= 0.9)")
    print(f"double bookings: {overlaps} (target 0)")


if __name__ == "__main__":
    main()
