"""The whole stack under sustained, mixed traffic: what an operator meets after a while of running.

    .venv/bin/python bench/soak.py [--minutes 10] [--clients 20] [--rate 25] [--sample-seconds 30]

It runs `voiceappoint up` (API, one worker, Beat, Flower) on a database, a Redis key prefix and a data folder
of its own, on free ports, and sends it the traffic of many clients of the demo business at up to `--rate`
requests a second: availability over 1-14 days, bookings of offered slots (many of them colliding) with
`?wait=`, job polls, appointment reads, moves, cancellations, requests with an unknown field, and bookings sent
again with their `Idempotency-Key`. Every `--sample-seconds` it reads the memory (RSS) of each process of the
stack and the database's connections. At the end it waits for every job to end, stops `up` with SIGTERM and
prints:
- per kind of request: how many, their HTTP statuses, p50 / p99 / max latency;
- the jobs by status and error code, and how many were started more than once;
- each process's memory at the start and the end, and its growth over the second half of the run (MB a
  minute: a leak shows as growth that does not level off);
- the most database connections seen, and any transaction left idle;
- what must never happen: a 5xx, a replayed key answered with another job, a job that never ended, two
  overlapping active allocations of a capacity-1 resource, an ERROR or a traceback in the stack's log, `up`
  not stopping cleanly. The exit status is 1 when any of them happened.

Not a target of the issues: a check that long runs stay healthy (docs/performance.md, "soak test"). Everything
it made is dropped and deleted at the end (VOICEAPPOINT_KEEP_BENCH_DB=1 keeps the database).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import date, timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ on the path, not the project root.
sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from bench.workload import overlapping_allocations  # noqa: E402
from core import seed  # noqa: E402
from core.config import get_settings  # noqa: E402
from ops.cli import DEMO_KEY_FILE  # noqa: E402
from ops.database import drop_database  # noqa: E402
from ops.services import delete_keys_with_prefix  # noqa: E402
from tests.e2e.processes import free_port  # noqa: E402

STARTED_WITHIN = 180  # seconds: migrations of a new database, then four processes
JOBS_END_WITHIN = 120  # seconds after the traffic stops
# What each client does, with its weight.
ACTIONS = {
    "availability": 40,
    "booking": 20,
    "job": 10,
    "appointment": 10,
    "reschedule": 5,
    "cancel": 5,
    "invalid": 5,
    "replay": 5,
}
LOG_PROBLEM = re.compile(r"\bERROR\b|\bCRITICAL\b|Traceback")


class Traffic:
    """What the clients have learnt and seen, shared between their threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.slots: list[str] = []
        self.jobs: list[str] = []
        self.appointments: list[str] = []
        self.sent_bookings: list[tuple[str, dict, str]] = []  # (Idempotency-Key, body, job id)
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.statuses: dict[str, Counter] = defaultdict(Counter)
        self.broken: list[str] = []  # what must never happen, as it happened

    def record(self, kind: str, response: httpx.Response, seconds: float) -> None:
        with self.lock:
            self.latencies[kind].append(seconds)
            self.statuses[kind][response.status_code] += 1
            if response.status_code >= 500:
                self.broken.append(f"{kind}: {response.status_code} {response.text[:200]}")

    def pick(self, items: list[str]) -> str | None:
        with self.lock:
            return random.choice(items) if items else None


def _client_body(service_id: str, start: str) -> dict:
    number = random.randrange(10_000_000, 99_999_999)
    return {
        "service_id": service_id,
        "start": start,
        "client": {"first_name": "Soak", "last_name": str(number), "phone": f"+346{number}"},
    }


def _send(api: httpx.Client, traffic: Traffic, kind: str, method: str, url: str, **kwargs) -> httpx.Response:
    began = time.perf_counter()
    response = api.request(method, url, **kwargs)
    traffic.record(kind, response, time.perf_counter() - began)
    return response


def _one_request(api: httpx.Client, traffic: Traffic, kind: str, services: list[str]) -> None:
    today = date.today()
    if kind == "availability":
        first = today + timedelta(days=random.randrange(0, 10))
        answer = _send(
            api,
            traffic,
            kind,
            "GET",
            "/v1/availability",
            params={
                "service_id": random.choice(services),
                "from": str(first),
                "to": str(first + timedelta(days=random.randrange(0, 14))),
            },
        )
        if answer.status_code == 200:
            # The earliest slots, where clients collide most.
            starts = [(slot["start"], answer.json()["service_id"]) for slot in answer.json()["slots"][:20]]
            with traffic.lock:
                traffic.slots[:] = [f"{service} {start}" for start, service in starts] or traffic.slots
    elif kind == "booking":
        picked = traffic.pick(traffic.slots)
        if picked is None:
            return
        service_id, start = picked.split(" ", 1)
        body, key = _client_body(service_id, start), f"soak-{uuid.uuid4()}"
        answer = _send(
            api, traffic, kind, "POST", "/v1/bookings?wait=10", json=body, headers={"Idempotency-Key": key}
        )
        if answer.status_code in (201, 202, 409):
            job = answer.json()
            with traffic.lock:
                traffic.jobs.append(job["job_id"])
                traffic.sent_bookings.append((key, body, job["job_id"]))
                if answer.status_code == 201:
                    traffic.appointments.append(job["result"]["appointment_id"])
    elif kind == "job":
        job_id = traffic.pick(traffic.jobs)
        if job_id:
            _send(api, traffic, kind, "GET", f"/v1/jobs/{job_id}")
    elif kind == "appointment":
        appointment_id = traffic.pick(traffic.appointments)
        if appointment_id:
            _send(api, traffic, kind, "GET", f"/v1/appointments/{appointment_id}")
    elif kind == "reschedule":
        appointment_id, picked = traffic.pick(traffic.appointments), traffic.pick(traffic.slots)
        if appointment_id and picked:
            answer = _send(
                api,
                traffic,
                kind,
                "POST",
                f"/v1/appointments/{appointment_id}/reschedule?wait=10",
                json={"start": picked.split(" ", 1)[1]},
                headers={"Idempotency-Key": f"soak-{uuid.uuid4()}"},
            )
            job_id = answer.json().get("job_id") if answer.status_code < 500 else None
            if job_id:
                with traffic.lock:
                    traffic.jobs.append(job_id)
    elif kind == "cancel":
        appointment_id = traffic.pick(traffic.appointments)
        if appointment_id:
            _send(
                api,
                traffic,
                kind,
                "POST",
                f"/v1/appointments/{appointment_id}/cancel?wait=10",
                json={"reason": "soak test"},
                headers={"Idempotency-Key": f"soak-{uuid.uuid4()}"},
            )
    elif kind == "invalid":
        body = {**_client_body(random.choice(services), "2030-01-01T10:00:00+01:00"), "colour": "blue"}
        answer = _send(
            api, traffic, kind, "POST", "/v1/bookings", json=body, headers={"Idempotency-Key": "x"}
        )
        if answer.status_code != 422 or answer.json().get("code") != "unknown_field":
            with traffic.lock:
                traffic.broken.append(f"unknown field: {answer.status_code} {answer.text[:200]}")
    elif kind == "replay":
        with traffic.lock:
            sent = random.choice(traffic.sent_bookings) if traffic.sent_bookings else None
        if sent:
            key, body, job_id = sent
            answer = _send(
                api, traffic, kind, "POST", "/v1/bookings", json=body, headers={"Idempotency-Key": key}
            )
            if answer.status_code < 500 and answer.json().get("job_id") != job_id:
                with traffic.lock:
                    traffic.broken.append(
                        f"replayed key {key} answered {answer.status_code} {answer.text[:200]}"
                    )


def _client_loop(
    base_url: str, key: str, services: list[str], traffic: Traffic, interval: float, until: float
):
    kinds, weights = list(ACTIONS), list(ACTIONS.values())
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as api:
        next_start = time.monotonic() + random.uniform(0, interval)
        while next_start < until:
            time.sleep(max(0.0, next_start - time.monotonic()))
            next_start += interval
            try:
                _one_request(api, traffic, random.choices(kinds, weights)[0], services)
            except httpx.HTTPError as exc:
                with traffic.lock:
                    traffic.broken.append(f"no answer: {exc!r}")
            except Exception as exc:  # an answer not shaped as documented (no JSON, a field missing)
                with traffic.lock:
                    traffic.broken.append(f"unexpected answer: {exc!r}")


# --- the stack's processes ---------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        text_ = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text_.split()]


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _name_of(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [word.decode(errors="replace") for word in argv]
    for name in ("uvicorn", "worker", "beat", "flower"):
        if name in words:
            return "api" if name == "uvicorn" else name
    return "?"


def memory_of_stack(up_pid: int) -> dict[str, float]:
    """RSS in MB of each process `up` started, and of the worker's pool processes (`worker child 1`, ...)."""
    memory = {}
    for pid in _children(up_pid):
        name = _name_of(pid)
        memory[name] = _rss_mb(pid) or 0.0
        if name == "worker":
            for number, child in enumerate(sorted(_children(pid)), start=1):
                memory[f"worker child {number}"] = _rss_mb(child) or 0.0
    return memory


def _connections(engine, database: str) -> tuple[int, int]:
    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT count(*), count(*) FILTER (WHERE state LIKE 'idle in transaction%'"
                " AND state_change < now() - interval '10 seconds')"
                " FROM pg_stat_activity WHERE datname = :database AND pid <> pg_backend_pid()"
            ),
            {"database": database},
        ).one()
    return row[0], row[1]


# --- the run ----------------------------------------------------------------------------------------------


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _growth_mb_per_minute(samples: list[tuple[float, dict[str, float]]], name: str) -> float:
    """The slope of a least-squares line through the second half of the samples."""
    points = [(at, memory[name]) for at, memory in samples[len(samples) // 2 :] if name in memory]
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_m = sum(m for _, m in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return 60 * sum((t - mean_t) * (m - mean_m) for t, m in points) / spread if spread else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rate", type=float, default=25, help="requests a second, all clients together")
    parser.add_argument("--sample-seconds", type=float, default=30)
    args = parser.parse_args(argv)

    settings = get_settings()
    run_id = uuid.uuid4().hex[:10]
    database = f"va_soak_{run_id}"
    database_url = (
        make_url(settings.database_url).set(database=database).render_as_string(hide_password=False)
    )
    redis_prefix = f"va_soak_{run_id}:"
    data_dir = Path(tempfile.mkdtemp(prefix=f"va_soak_{run_id}_"))
    log_path = data_dir / "up.log"
    api_port, flower_port = free_port(), free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "VOICEAPPOINT_REDIS_KEY_PREFIX": redis_prefix,
        "VOICEAPPOINT_DATA_DIR": str(data_dir),
    }
    up_argv = ["up", "--port", str(api_port), "--flower-port", str(flower_port)]
    print(f"soak {run_id}: voiceappoint {' '.join(up_argv)}; log {log_path}", flush=True)
    with log_path.open("w") as log:
        up = subprocess.Popen(
            [sys.executable, "-c", "from ops.cli import main; main()", *up_argv],
            cwd=REPO_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # The database and the Redis keys go whatever happens: `up` failing to start, Ctrl-C, a failed check.
    try:
        engine = create_engine(make_url(settings.database_url).set(database="postgres"), pool_size=1)
        traffic = Traffic()
        samples: list[tuple[float, dict[str, float]]] = []
        most_connections, idle_in_transaction = 0, 0
        stopped_cleanly = False
        try:
            deadline = time.monotonic() + STARTED_WITHIN
            while "VoiceAppoint is running" not in log_path.read_text():
                if up.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"`up` did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            key = (data_dir / DEMO_KEY_FILE).read_text().strip()
            base_url = f"http://127.0.0.1:{api_port}"
            services = [str(service_id) for service_id in seed.DEMO_SERVICE_IDS.values()]

            began = time.monotonic()
            until = began + args.minutes * 60
            interval = args.clients / args.rate
            clients = [
                threading.Thread(
                    target=_client_loop, args=(base_url, key, services, traffic, interval, until), daemon=True
                )
                for _ in range(args.clients)
            ]
            for client in clients:
                client.start()
            while any(client.is_alive() for client in clients):
                samples.append((time.monotonic() - began, memory_of_stack(up.pid)))
                connections, idle = _connections(engine, database)
                most_connections, idle_in_transaction = (
                    max(most_connections, connections),
                    max(idle_in_transaction, idle),
                )
                with traffic.lock:
                    sent = sum(len(latencies) for latencies in traffic.latencies.values())
                print(
                    f"  {time.monotonic() - began:6.0f} s: {sent} requests, {connections} connections",
                    flush=True,
                )
                for client in clients:
                    client.join(timeout=args.sample_seconds / len(clients))
            samples.append((time.monotonic() - began, memory_of_stack(up.pid)))
            seconds = time.monotonic() - began

            jobs_end = time.monotonic() + JOBS_END_WITHIN
            while (jobs := _jobs(database_url))["unfinished"] and time.monotonic() < jobs_end:
                time.sleep(1)
        finally:
            up.send_signal(signal.SIGTERM)
            try:
                stopped_cleanly = up.wait(timeout=60) == 0
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait()
            engine.dispose()
        overlaps = overlapping_allocations(database_url)
        problems_in_log = [line for line in log_path.read_text().splitlines() if LOG_PROBLEM.search(line)]
    finally:
        if not os.environ.get("VOICEAPPOINT_KEEP_BENCH_DB"):
            drop_database(database_url)
        delete_keys_with_prefix(settings.redis_url, redis_prefix)

    broken = list(traffic.broken)
    if jobs["unfinished"]:
        broken.append(
            f"{jobs['unfinished']} jobs still queued or running {JOBS_END_WITHIN} s after the traffic"
        )
    if overlaps:
        broken.append(f"{overlaps} pairs of overlapping active allocations of a capacity-1 resource")
    broken += [f"log: {line}" for line in problems_in_log[:20]]
    if idle_in_transaction:
        broken.append(f"{idle_in_transaction} connections idle in a transaction for over 10 s")
    if not stopped_cleanly:
        broken.append("`up` did not stop cleanly on SIGTERM")
    _report(traffic, jobs, samples, seconds, most_connections, broken)
    print(f"log of the stack: {log_path}")
    return 1 if broken else 0


def _jobs(database_url: str) -> dict:
    engine = create_engine(database_url, pool_size=1)
    try:
        with engine.connect() as connection:
            outcomes = connection.execute(
                text(
                    "SELECT status, coalesce(error->>'code', ''), count(*), count(*) FILTER (WHERE attempts > 1)"
                    " FROM intake_jobs GROUP BY 1, 2 ORDER BY 3 DESC"
                )
            ).all()
    finally:
        engine.dispose()
    return {
        "outcomes": outcomes,
        "unfinished": sum(count for status, _, count, _ in outcomes if status in ("queued", "running")),
        "started_again": sum(again for *_, again in outcomes),
    }


def _report(traffic: Traffic, jobs: dict, samples, seconds: float, most_connections: int, broken: list[str]):
    total = sum(len(latencies) for latencies in traffic.latencies.values())
    print(f"\n{total} requests in {seconds:.0f} s ({total / seconds:.1f}/s)")
    print(f"{'request':<13}{'count':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}  statuses")
    for kind, latencies in sorted(traffic.latencies.items()):
        statuses = ", ".join(f"{status}: {count}" for status, count in sorted(traffic.statuses[kind].items()))
        print(
            f"{kind:<13}{len(latencies):>7}{_percentile(latencies, 0.5) * 1000:>9.0f}"
            f"{_percentile(latencies, 0.99) * 1000:>9.0f}{max(latencies) * 1000:>9.0f}  {statuses}"
        )
    print("\njobs (status, error code, count):")
    for status, code, count, _ in jobs["outcomes"]:
        print(f"  {status:<10} {code or '-':<28} {count}")
    print(f"  started more than once: {jobs['started_again']}")
    print(f"\n{'process':<16}{'RSS start MB':>13}{'RSS end MB':>12}{'growth, 2nd half':>20}")
    first, last = samples[0][1], samples[-1][1]
    for name in sorted(last):
        growth = _growth_mb_per_minute(samples, name)
        print(f"{name:<16}{first.get(name, 0):>13.0f}{last[name]:>12.0f}{growth:>14.2f} MB/min")
    print(f"\nmost database connections: {most_connections}")
    print(f"\nwhat must never happen: {len(broken) or 'none'}")
    for line in broken:
        print(f"  {line}")


if __name__ == "__main__":
    sys.exit(main())
