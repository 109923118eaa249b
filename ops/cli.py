"""The `voiceappoint` command: set up, run and test the whole back end.

    voiceappoint up        everything at once, for a developer (private PostgreSQL/Redis if none answers)
    voiceappoint test      lint, import contracts and the test suite, as CI runs them
    voiceappoint migrate | seed | apikey create|list|revoke | api | worker | beat | flower

Errors an operator can fix (a server that does not answer, a bad setting) are printed as one line and
exit with status 2; a failing test run exits with 1.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import click
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from ops.services import (
    IN_USE,
    REPO_ROOT,
    STOPPED,
    ServiceError,
    data_dir_from_env,
    ensure_postgres,
    ensure_redis,
    shown_url,
    stop_postgres,
    stop_redis,
)

QUEUES = "realtime,bookings,webhooks,notifications,scheduled"
DEMO_TENANT_SLUG = "bella-hair-salon"
CELERY_APP = "workers.celery_app"
# The plaintext demo key, in the data folder, so that `up` can show the same key every time.
DEMO_KEY_FILE = "demo-api-key"
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# SIGTERM gives the worker Celery's warm shutdown: it finishes its running tasks, which the hard time limit
# (JobTask.time_limit, 40 s) bounds. Killed sooner, a booking would be cut off and run again (docs/operations.md).
STOP_GRACE_SECONDS = 45.0
# Tools of the virtual environment this command runs from (not whatever is first on PATH).
VENV_BIN = Path(sys.executable).parent


class CommandError(Exception):
    """A problem the operator can fix; printed as one line, exit status 2."""


def main() -> None:
    try:
        cli.main(prog_name="voiceappoint")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except (ServiceError, CommandError) as exc:
        _fail(str(exc))
    except ValidationError as exc:
        from core.config import describe

        _fail(describe(exc))
    except DBAPIError as exc:
        # Operational (no server), programming (no table) or data errors (`SET ROLE` to a role that does
        # not exist yet): an operator's fix, told in one line.
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc).splitlines()[0]
        # A missing table or role is what an unmigrated database looks like; a value too long is not.
        missing = not isinstance(exc, OperationalError) and "does not exist" in detail
        hint = " (has `voiceappoint migrate` run?)" if missing else ""
        _fail(f"database error: {detail}{hint}")


def _fail(message: str) -> None:
    click.echo(f"voiceappoint: error: {' '.join(message.split())}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """VoiceAppoint back end: `up` runs everything, `test` checks everything.

    `ops/voiceappoint refresh-constraints` (the shell wrapper, not this command) moves .venv and
    ops/constraints.txt to the newest versions pyproject.toml allows.
    """


# --- services and settings --------------------------------------------------------------------------


def _settings():
    from core.config import get_settings

    get_settings.cache_clear()
    return get_settings()


def _point_at(database_url: str | None = None, redis_url: str | None = None) -> None:
    """Make this process and every child it starts use these servers."""
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    if redis_url:
        os.environ["REDIS_URL"] = redis_url
    _settings()
    _close_database_connections()


def _close_database_connections() -> None:
    """Close this process's pooled connections (the next unit of work opens new ones)."""
    from core import db as core_db

    core_db.dispose_engine(close=True)


@contextlib.contextmanager
def _services(*, with_redis: bool) -> Iterator[tuple[str, str | None]]:
    """The database (and Redis) URLs to use for the block; private servers are released afterwards."""
    settings = _settings()
    data_dir = data_dir_from_env()
    with contextlib.ExitStack() as cleanup:
        database_url, started = ensure_postgres(settings.database_url, data_dir)
        if started:
            cleanup.callback(_release, stop_postgres, data_dir, "PostgreSQL")
        redis_url = None
        if with_redis:
            redis_url, started = ensure_redis(settings.redis_url, data_dir)
            if started:
                cleanup.callback(_release, stop_redis, data_dir, "Redis")
        _point_at(database_url, redis_url)
        try:
            yield database_url, redis_url
        finally:
            _close_database_connections()  # before the server may stop


def _release(stop, data_dir: Path, name: str) -> None:
    outcome = stop(data_dir)
    if outcome == STOPPED:
        click.echo(f"stopped the private {name}", err=True)
    elif outcome == IN_USE:
        click.echo(f"left the private {name} running: another voiceappoint command still uses it", err=True)
    else:
        click.echo(
            f"the private {name} had stopped already (killed, or it crashed; its log is under {data_dir})",
            err=True,
        )


# --- migrate, seed, apikey --------------------------------------------------------------------------


def _migrate(database_url: str, downgrade_to: str | None = None) -> None:
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.util import CommandError as AlembicCommandError
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from ops.database import alembic_config, create_database_if_missing

    database = make_url(database_url).database
    if create_database_if_missing(database_url):
        click.echo(f"created database {database}", err=True)
    config = alembic_config(database_url)
    try:
        if downgrade_to:
            command.downgrade(config, downgrade_to)
        else:
            command.upgrade(config, "head")
    except AlembicCommandError as exc:
        # Most often the database is at a revision this code does not have: newer code migrated it.
        raise CommandError(
            f"cannot migrate database {database}: {exc} (`alembic_version` names a revision of newer code,"
            " or --downgrade names none of migrations/versions)"
        ) from None
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            revision = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    click.echo(f"database {database} is at revision {revision or 'base (empty)'}", err=True)


def _seed(demo: bool) -> None:
    from core import seed
    from core.db import UnitOfWork

    with UnitOfWork(system=True) as uow:  # plans and system templates belong to no tenant
        summary = seed.seed_all(uow, demo=demo)
        uow.commit()
    click.echo(f"seeded: {summary}", err=True)


def _tenant_id(slug: str):
    from core.db import UnitOfWork

    with UnitOfWork(system=True) as uow:  # the slug is all we know; row-level security needs a tenant
        tenant_id = uow.session.execute(
            text("SELECT id FROM tenants WHERE slug = :slug"), {"slug": slug}
        ).scalar()
    if tenant_id is None:
        hint = " (run `voiceappoint seed --demo` first)" if slug == DEMO_TENANT_SLUG else ""
        raise CommandError(f"no tenant with slug '{slug}'{hint}")
    return tenant_id


def _create_api_key(slug: str, name: str) -> str:
    from core.auth import create_api_key
    from core.db import UnitOfWork
    from core.plans import BOOKABLE_TENANT_STATUSES

    tenant_id = _tenant_id(slug)
    with UnitOfWork(system=True) as uow:
        deleted_at, subscription_status = uow.session.execute(
            text("SELECT deleted_at, subscription_status FROM tenants WHERE id = :id"), {"id": tenant_id}
        ).one()
    if deleted_at is not None:
        # tenant_for_api_key refuses every key of a deleted tenant: the key printed would only ever get 401.
        raise CommandError(f"the tenant '{slug}' was deleted on {deleted_at:%Y-%m-%d}; its keys are refused")
    if subscription_status not in BOOKABLE_TENANT_STATUSES:
        click.echo(
            f"warning: the tenant '{slug}' is {subscription_status}: until it is reactivated its requests"
            " get 403 tenant_inactive",
            err=True,
        )
    with UnitOfWork(tenant_id=tenant_id) as uow:
        key = create_api_key(uow, tenant_id, name)
        uow.commit()
    return key


def _demo_api_key(key_file: Path, slug: str = DEMO_TENANT_SLUG) -> str:
    """The key in `key_file` if it still authenticates for the tenant; otherwise a new key, saved there."""
    from core.auth import tenant_for_api_key
    from core.clock import utcnow
    from core.db import UnitOfWork
    from core.errors import Unauthorized

    tenant_id = _tenant_id(slug)
    with contextlib.suppress(OSError, Unauthorized):
        key = key_file.read_text().strip()
        # The row may have been revoked, or the database recreated since the file was written.
        with UnitOfWork(system=True) as uow:
            if tenant_for_api_key(uow, key, utcnow()) == tenant_id:
                return key
    key = _create_api_key(slug, f"demo key (voiceappoint up {datetime.now():%Y-%m-%d %H:%M})")
    key_file.parent.mkdir(parents=True, exist_ok=True)
    with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        os.fchmod(handle.fileno(), 0o600)  # a file left by an older run may be readable by others
        handle.write(f"{key}\n")
    return key


@cli.command()
@click.option(
    "--downgrade", "downgrade_to", metavar="REV", help="Downgrade to this revision instead (e.g. base, -1)."
)
def migrate(downgrade_to: str | None) -> None:
    """Create the database if it is missing and migrate it to the latest revision."""
    with _services(with_redis=False) as (database_url, _):
        _migrate(database_url, downgrade_to)


@cli.command()
@click.option(
    "--demo", is_flag=True, help="Also the demo tenant Bella Hair Salon with its services and staff."
)
def seed(demo: bool) -> None:
    """Insert the plans and system notification templates (idempotent)."""
    with _services(with_redis=False):
        _seed(demo)


@cli.group()
def apikey() -> None:
    """Per-tenant API keys for upstream apps."""


@apikey.command("create")
@click.option("--tenant", "tenant_slug", required=True, metavar="SLUG", help="The tenant's slug.")
@click.option("--name", default="default", show_default=True, help="What the key is for.")
def apikey_create(tenant_slug: str, name: str) -> None:
    """Create an API key and print it. It is shown this once: only its hash is stored."""
    with _services(with_redis=False):
        key = _create_api_key(tenant_slug, name)
    click.echo(key)


@apikey.command("list")
@click.option("--tenant", "tenant_slug", required=True, metavar="SLUG", help="The tenant's slug.")
def apikey_list(tenant_slug: str) -> None:
    """The tenant's keys: prefix, name, created, last used, revoked (never the keys themselves)."""
    from core.auth import KEY_SCHEME, list_api_keys
    from core.db import UnitOfWork

    with _services(with_redis=False):
        tenant_id = _tenant_id(tenant_slug)
        with UnitOfWork(tenant_id=tenant_id) as uow:
            keys = list_api_keys(uow)
    for key in keys:
        when = [
            f"{label} {moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
            for label, moment in (
                ("created", key.created_at),
                ("used", key.last_used_at),
                ("REVOKED", key.revoked_at),
            )
            if moment is not None
        ]
        click.echo(f"{KEY_SCHEME}{key.key_prefix}  {key.name}  ({', '.join(when)})")


@apikey.command("revoke")
@click.option("--tenant", "tenant_slug", required=True, metavar="SLUG", help="The tenant's slug.")
@click.argument("key")
def apikey_revoke(tenant_slug: str, key: str) -> None:
    """Revoke KEY at once: the whole key, or its `va_live_<prefix>` as `apikey list` shows it."""
    from core.auth import KEY_SCHEME, key_prefix_of, revoke_api_key
    from core.clock import utcnow
    from core.db import UnitOfWork

    with _services(with_redis=False):
        tenant_id = _tenant_id(tenant_slug)
        with UnitOfWork(tenant_id=tenant_id) as uow:
            revoked = revoke_api_key(uow, key, utcnow())
            uow.commit()
    if not revoked:
        shown = f"{KEY_SCHEME}{key_prefix_of(key)}"  # never the secret part, which would land in logs
        raise CommandError(f"'{tenant_slug}' has no live key {shown}; see `voiceappoint apikey list`")
    click.echo("revoked: requests with that key now get 401 invalid_api_key", err=True)


# --- the long-running processes ---------------------------------------------------------------------


def _api_argv(host: str, port: int) -> list[str]:
    log_level = _settings().log_level.lower()
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "api.app:create_app",
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        "--log-level",
        log_level,
    ]


def _worker_argv(queues: str, concurrency: int | None) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        CELERY_APP,
        "worker",
        "-Q",
        queues,
        "-l",
        _settings().log_level,
    ]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    return argv


def _beat_argv() -> list[str]:
    data_dir = data_dir_from_env()
    data_dir.mkdir(parents=True, exist_ok=True)
    # Beat remembers when each job last ran; keep that file in the git-ignored data folder.
    schedule = data_dir / "celerybeat-schedule"
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        CELERY_APP,
        "beat",
        "-s",
        str(schedule),
        "-l",
        _settings().log_level,
    ]


def _flower_argv(address: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        CELERY_APP,
        "flower",
        f"--address={address}",
        f"--port={port}",
    ]


# Flower keeps every task it has seen in memory, about 6 KB each, up to its max_tasks: 100000 by default, some
# 600 MB more than it starts with, reached after a few hours of steady bookings (a soak test, 2026-11-27: +2.2 MB a
# minute at 6 jobs/s). Ten thousand tasks are hours of history at most businesses' pace, for ~60 MB.
FLOWER_MAX_TASKS = 10_000


def _flower_env() -> dict[str, str]:
    # Flower reads FLOWER_* variables as options; passing the password this way keeps it out of `ps`.
    settings = _settings()
    return {
        "FLOWER_MAX_TASKS": str(FLOWER_MAX_TASKS),  # an operator's own FLOWER_MAX_TASKS wins
        **os.environ,
        "FLOWER_BASIC_AUTH": f"{settings.flower_user}:{settings.flower_password}",
    }


def _exec(argv: list[str], env: dict[str, str] | None = None) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env if env is not None else os.environ)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def api(host: str, port: int) -> None:
    """Run the HTTP API (uvicorn, factory api.app:create_app)."""
    _exec(_api_argv(host, port))


@cli.command()
@click.option("--queues", "-Q", default=QUEUES, show_default=True, help="Comma-separated queues to consume.")
@click.option("--concurrency", "-c", type=int, default=None, help="Worker processes (default: one per CPU).")
def worker(queues: str, concurrency: int | None) -> None:
    """Run a Celery worker."""
    _exec(_worker_argv(queues, concurrency))


@cli.command()
def beat() -> None:
    """Run Celery Beat (the schedule is in beat_schedule.py)."""
    _exec(_beat_argv())


@cli.command()
@click.option("--address", default="127.0.0.1", show_default=True)
@click.option("--port", default=5555, show_default=True, type=int)
def flower(address: str, port: int) -> None:
    """Run Flower, the Celery monitor, behind basic auth (VOICEAPPOINT_FLOWER_USER/PASSWORD)."""
    _exec(_flower_argv(address, port), _flower_env())


# --- up ---------------------------------------------------------------------------------------------


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec function after which the child gets SIGTERM when we die, even by SIGKILL (Linux only).

    Without it a `kill -9` of `up` would leave the children running: they are in sessions of their own.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child should do as little as it can
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before the prctl: no signal will come
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class Supervisor:
    """Runs named child processes, prefixes their output with their name, and stops them all together."""

    def __init__(self) -> None:
        self.children: dict[str, subprocess.Popen] = {}
        self._output_lock = threading.Lock()

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        # A session of its own: a Ctrl-C in the terminal reaches only us, and we stop the children in order.
        process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
        self.children[name] = process
        threading.Thread(target=self._relay, args=(name, process), daemon=True).start()

    def _relay(self, name: str, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for raw in iter(process.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            with self._output_lock:
                click.echo(f"{name:<7}| {line}")

    def first_exited(self) -> tuple[str, int] | None:
        for name, process in self.children.items():
            code = process.poll()
            if code is not None:
                return name, code
        return None

    def stop_all(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        # Reverse start order: Flower and Beat go first, so nothing new is scheduled while the worker drains.
        for name, process in reversed(self.children.items()):
            if process.poll() is None:
                click.echo(f"stopping {name} (pid {process.pid})", err=True)
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        for name, process in self.children.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                click.echo(f"{name} did not stop within {grace_seconds:.0f} s; killing it", err=True)
            # Kill whatever is left in its process group (a worker's pool processes, say).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _check_port_free(host: str, port: int, option: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
        )  # as uvicorn does: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError:
            raise CommandError(f"{host}:{port} is already in use; pick another port with {option}") from None


def _wait_for_port(
    host: str,
    port: int,
    supervisor: Supervisor,
    timeout: float = 60.0,
    stopping: Callable[[], bool] = lambda: False,
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and supervisor.first_exited() is None and not stopping():
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return True
        time.sleep(0.2)
    return False


def _next_weekday(today: date) -> date:
    day = today + timedelta(days=1)
    while day.weekday() >= 5:  # Saturday, Sunday: pick a day María works the whole morning
        day += timedelta(days=1)
    return day


def _how_it_ended(returncode: int) -> str:
    # Popen gives -N for a child killed by signal N.
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:  # a real-time signal between SIGRTMIN and SIGRTMAX has no name of its own
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _http_url(host: str, port: int) -> str:
    # An IPv6 address goes in brackets (RFC 3986): curl refuses `http://::1:8000`.
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _demo_booking_start(now: datetime) -> datetime | None:
    """The demo's first free haircut in the next two weeks, if any: the demo's database outlives runs, and the
    banner's booking of a fixed time was taken by the run before (`slot_taken`)."""
    from core import availability, seed
    from core.db import UnitOfWork

    today = now.astimezone(ZoneInfo(seed.DEMO_TIMEZONE)).date()
    with UnitOfWork(seed.DEMO_TENANT_ID, read_only=True) as uow:
        found = availability.find_slots(
            uow, seed.DEMO_SERVICE_IDS["haircut"], today, today + timedelta(days=13), now
        )
    return found.slots[0].start if found.slots else None


def _banner(
    api_url: str, flower_url: str, api_key: str | None, started: datetime, booking_start: datetime | None
) -> str:
    from core import seed

    settings = _settings()
    zone = ZoneInfo(seed.DEMO_TIMEZONE)
    if booking_start is None:  # nothing free: the booking's answer will offer alternatives
        ten = datetime.min.time().replace(hour=10)
        booking_start = datetime.combine(_next_weekday(datetime.now(zone).date()), ten, zone)
    local_start = booking_start.astimezone(zone)
    day, start = local_start.date(), local_start.isoformat()
    # A key of this run's own: a key names one request for good, and the demo's database outlives runs.
    idempotency_key = f"demo-{started:%Y%m%dT%H%M%S}"
    key = api_key or "<run: voiceappoint apikey create --tenant bella-hair-salon>"
    auth = f'-H "Authorization: Bearer {key}"'
    booking = (
        f'{{"service_id": "{seed.DEMO_SERVICE_IDS["haircut"]}", "start": "{start}", '
        '"client": {"first_name": "Ana", "last_name": "López", "phone": "+34600111222", "email": "ana@example.com"}}'
    )
    return "\n".join(
        [
            "",
            "VoiceAppoint is running (Ctrl-C stops everything):",
            f"  API      {api_url}   (OpenAPI docs at {api_url}/docs)",
            f"  Flower   {flower_url}   (user '{settings.flower_user}', password from VOICEAPPOINT_FLOWER_PASSWORD)",
            f"  Database {shown_url(settings.database_url)}",
            f"  Redis    {shown_url(settings.redis_url)}",
            f"  Demo tenant '{DEMO_TENANT_SLUG}', API key (the next `up` shows it again): {key}",
            "",
            "Try:",
            f'  curl {auth} "{api_url}/v1/availability?service_id={seed.DEMO_SERVICE_IDS["haircut"]}&from={day}&to={day}"',
            f"  curl {auth} -H 'Content-Type: application/json' -H 'Idempotency-Key: {idempotency_key}' \\",
            f"       -d '{booking}' {api_url}/v1/bookings",
            f'  curl {auth} "{api_url}/v1/jobs/<job_id from the answer above>"',
            "",
        ]
    )


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the API and Flower listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="API port.")
@click.option("--flower-port", default=5555, show_default=True, type=int)
@click.option("--concurrency", "-c", type=int, default=2, show_default=True, help="Worker processes.")
def up(host: str, port: int, flower_port: int, concurrency: int) -> None:
    """Services, migrations, demo data and a demo API key, then the API, a worker, Beat and Flower."""
    stop_requested: list[int] = []

    def request_stop(signum, _frame) -> None:
        stop_requested.append(signum)

    previous_handlers = {
        sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    if port == flower_port:
        raise CommandError(f"--port and --flower-port are both {port}; give Flower another port")
    _check_port_free(host, port, "--port")
    _check_port_free(host, flower_port, "--flower-port")
    supervisor = Supervisor()
    exit_code = 0
    try:
        with _services(with_redis=True) as (database_url, _):
            _migrate(database_url)
            _seed(demo=True)
            try:
                api_key = _demo_api_key(data_dir_from_env() / DEMO_KEY_FILE)
            except CommandError as exc:
                click.echo(f"no demo API key: {exc}", err=True)
                api_key = None
            booking_start = _demo_booking_start(datetime.now(UTC))
            # The children open their own; one idle for the whole run would be a connection nobody counts.
            _close_database_connections()
            if stop_requested:
                return
            supervisor.start("api", _api_argv(host, port))
            supervisor.start("worker", _worker_argv(QUEUES, concurrency))
            supervisor.start("beat", _beat_argv())
            supervisor.start("flower", _flower_argv(host, flower_port), _flower_env())
            if _wait_for_port(host, port, supervisor, stopping=lambda: bool(stop_requested)):
                click.echo(
                    _banner(
                        _http_url(host, port),
                        _http_url(host, flower_port),
                        api_key,
                        datetime.now(UTC),
                        booking_start,
                    )
                )
            while not stop_requested:
                exited = supervisor.first_exited()
                if exited is not None:
                    name, code = exited
                    click.echo(f"{name} {_how_it_ended(code)}; stopping the others", err=True)
                    exit_code = 1
                    break
                time.sleep(0.3)
            supervisor.stop_all()
    finally:
        supervisor.stop_all()  # again, in case we left the block early; a no-op for stopped children
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    sys.exit(exit_code)


# --- test -------------------------------------------------------------------------------------------


def _pytest_args(user_args: tuple[str, ...]) -> list[str]:
    args = ["-q"]
    wants_own_parallelism = any(
        arg == "-n" or arg.startswith(("-n", "--numprocesses", "--dist")) or arg == "no:xdist"
        for arg in user_args
    )
    if not wants_own_parallelism:
        args += ["-n", "2"]
    return args + list(user_args)


def _run_step(name: str, argv: list[str]) -> int:
    """Run one step and return its exit status.

    A Ctrl-C in the terminal reaches the step too (same process group), and pytest then tears its session down:
    it drops the run's databases and Redis keys. subprocess.call would kill it 0.25 s later and leave them on the
    server, so the first Ctrl-C waits for the step to end by itself; a second one kills it.
    """
    process = subprocess.Popen(argv, cwd=REPO_ROOT)
    interrupted = False
    while True:
        try:
            code = process.wait()
            break
        except KeyboardInterrupt:
            if interrupted:
                process.kill()
                process.wait()
                raise
            interrupted = True
            click.echo(f"waiting for {name} to clean up (Ctrl-C again to kill it)", err=True)
    if interrupted:
        raise KeyboardInterrupt
    return code


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def test(pytest_args: tuple[str, ...]) -> None:
    """Lint (ruff), check the import contracts (import-linter) and run pytest with PYTEST_ARGS.

    Uses the configured PostgreSQL and Redis, or private ones under .data/ when they do not answer.
    Every step runs even if an earlier one failed; the exit status is 1 if any failed.
    """
    # A SIGTERM (a CI timeout) unwinds like Ctrl-C, so private servers are released and the child killed.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with _services(with_redis=True):
            steps = [
                ("ruff check", [str(VENV_BIN / "ruff"), "check", "."]),
                ("ruff format --check", [str(VENV_BIN / "ruff"), "format", "--check", "."]),
                ("lint-imports", [str(VENV_BIN / "lint-imports"), "--no-logo", "--no-cache"]),
                ("pytest", [sys.executable, "-m", "pytest", *_pytest_args(pytest_args)]),
            ]
            failed = []
            for name, argv in steps:
                click.echo(f"==> {name}", err=True)
                code = _run_step(name, argv)
                if name == "pytest" and code == 5:
                    click.echo("pytest collected no tests: that counts as a failure", err=True)
                if code != 0:
                    failed.append(f"{name} (exit {code})")
        if failed:
            click.echo(f"FAILED: {', '.join(failed)}", err=True)
            sys.exit(1)
        click.echo("all checks passed", err=True)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
