"""Real processes for end-to-end tests and benchmarks: Celery workers, Celery Beat and the API.

Each process runs from the project's virtual environment with this run's database and Redis key prefix,
writes its output to a log file, and is stopped at the end (SIGTERM, then SIGKILL of its own process
group). Nothing here is pytest-specific, so bench/ uses it too:

    harness = ProcessHarness(ProcessEnvironment(database_url, redis_url, redis_prefix, log_dir))
    workers = [harness.start_worker(name="w1"), harness.start_worker(name="w2")]
    api = harness.start_api()
    ...
    harness.stop_all()
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from celery import Celery
from celery.utils.nodenames import host_format

from core.config import Settings
from workers.celery_app import QUEUE_NAMES, create_app

REPO_ROOT = Path(__file__).resolve().parents[2]
# The interpreter running the tests is the project's; its scripts (celery, uvicorn) sit beside it.
BIN_DIR = Path(sys.executable).parent


class ProcessFailed(RuntimeError):
    """A process died or never became ready; the message ends with the tail of its log."""


def eventually(check: Callable[[], object], timeout: float = 10.0, interval: float = 0.1):
    """`check()`'s first truthy value, polled until `timeout`; its last value if none came."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ProcessEnvironment:
    """What every started process is pointed at."""

    database_url: str
    redis_url: str
    redis_prefix: str
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            VOICEAPPOINT_REDIS_KEY_PREFIX=self.redis_prefix,
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def settings(self) -> Settings:
        return Settings(
            **{"DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url},
            redis_key_prefix=self.redis_prefix,
        )


def client_app(environment: ProcessEnvironment) -> Celery:
    """A Celery app of this run's own (broker, results, key prefix): sends tasks, pings workers."""
    return create_app(environment.settings(), set_as_current=False)


class ManagedProcess:
    def __init__(self, name: str, argv: Sequence[str], environment: ProcessEnvironment):
        self.name = name
        self.argv = list(argv)
        self.log_path = environment.log_dir / f"{name}.log"
        self._env = environment.env()
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # A session of its own: stopping it can take its whole process group, children included,
            # and a Ctrl-C in the test terminal does not hit it before the harness does.
            self.popen = subprocess.Popen(
                self.argv,
                cwd=REPO_ROOT,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def is_running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running():
                raise ProcessFailed(
                    f"{self.name} exited with {self.popen and self.popen.returncode} before {what}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if ready():
                return
            time.sleep(0.2)
        raise ProcessFailed(
            f"{self.name} not {what} after {timeout:.0f} s; log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (a Celery worker finishes its running tasks), then SIGKILL of the process group."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        # Our own session's group: the process and any child it left behind (pool processes).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)


class WorkerProcess(ManagedProcess):
    def __init__(
        self,
        name: str,
        queues: Sequence[str],
        concurrency: int,
        environment: ProcessEnvironment,
        app: str = "workers.celery_app",
    ):
        self.queues = list(queues)
        self.concurrency = concurrency
        # Unique per start, so two harnesses on one host (xdist, a benchmark next to a test run) never
        # share a node name; %h is the host name, as Celery expands it.
        node = f"{name}-{uuid.uuid4().hex[:8]}@%h"
        self.nodename = host_format(node)
        argv = [
            str(BIN_DIR / "celery"),
            "-A",
            app,
            "worker",
            "-P",
            "prefork",
            "-c",
            str(concurrency),
            "-Q",
            ",".join(self.queues),
            "-n",
            node,
            "--without-gossip",
            "--without-mingle",
            "-l",
            "info",
        ]
        super().__init__(name, argv, environment)

    def child_pids(self) -> list[int]:
        """The pool processes the worker has forked (Linux: read from /proc)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except FileNotFoundError:
            return []

    def kill_hard(self) -> list[int]:
        """SIGKILL every pool process, as an out-of-memory kill would; the worker forks new ones.

        A task those processes were running is redelivered (acks_late + reject_on_worker_lost).
        Returns the killed pids.
        """
        killed = []
        for pid in self.child_pids():
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        return killed


class ApiProcess(ManagedProcess):
    def __init__(self, name: str, port: int, environment: ProcessEnvironment):
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        argv = [
            str(BIN_DIR / "uvicorn"),
            "--factory",
            "api.app:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        super().__init__(name, argv, environment)

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, **kwargs)

    def is_healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False


class BeatProcess(ManagedProcess):
    def __init__(self, name: str, environment: ProcessEnvironment):
        self.schedule_path = environment.log_dir / f"{name}-schedule"
        argv = [
            str(BIN_DIR / "celery"),
            "-A",
            "workers.celery_app",
            "beat",
            "-s",
            str(self.schedule_path),
            "--pidfile=",
            "-l",
            "info",
        ]
        super().__init__(name, argv, environment)


class ProcessHarness:
    """Starts processes for one environment and stops all of them at the end."""

    def __init__(self, environment: ProcessEnvironment, client: Celery | None = None):
        self.environment = environment
        self._owns_client = client is None
        self.client = client or client_app(environment)
        self.processes: list[ManagedProcess] = []
        self._counter = 0

    def _unique(self, name: str) -> str:
        self._counter += 1
        return f"{name}-{self._counter}"

    def start_worker(
        self,
        queues: Iterable[str] = QUEUE_NAMES,
        concurrency: int = 2,
        name: str = "worker",
        timeout: float = 60.0,
        app: str = "workers.celery_app",
    ) -> WorkerProcess:
        worker = WorkerProcess(self._unique(name), list(queues), concurrency, self.environment, app)
        self.processes.append(worker)
        worker.start()
        # Ready means it answers a control ping through this run's prefixed Redis, so it consumes too.
        worker.wait_until(lambda: self.ping(worker, timeout=0.5), timeout, "answering pings")
        return worker

    def ping(self, worker: WorkerProcess, timeout: float = 1.0) -> bool:
        replies = self.client.control.ping(destination=[worker.nodename], timeout=timeout)
        return any(worker.nodename in reply for reply in replies)

    def start_api(self, port: int | None = None, timeout: float = 30.0) -> ApiProcess:
        api = ApiProcess(self._unique("api"), port or free_port(), self.environment)
        self.processes.append(api)
        api.start()
        api.wait_until(api.is_healthy, timeout, "answering GET /health with 200")
        return api

    def start_beat(self, timeout: float = 30.0) -> BeatProcess:
        beat = BeatProcess(self._unique("beat"), self.environment)
        self.processes.append(beat)
        beat.start()
        beat.wait_until(lambda: "beat: Starting..." in beat.log_text(), timeout, "starting its schedule")
        return beat

    def stop_all(self) -> None:
        errors = []
        for process in reversed(self.processes):
            try:
                process.stop()
            except Exception as error:  # keep stopping the others
                errors.append(f"{process.name}: {error!r}")
        self.processes.clear()
        if self._owns_client:
            self.client.close()
        if errors:
            raise RuntimeError("could not stop: " + "; ".join(errors))

    def __enter__(self) -> ProcessHarness:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop_all()
