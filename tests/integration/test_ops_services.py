"""The private PostgreSQL and Redis started when the configured ones do not answer, and never in place of
a server the URL names (a network host given as libpq's ?host= parameter)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy.engine import make_url

from ops import services
from ops.services import (
    NOT_RUNNING,
    STOPPED,
    ServiceError,
    _pid_alive,
    ensure_postgres,
    ensure_redis,
    stop_postgres,
    stop_redis,
)


def _closed_port() -> int:
    # Bound and released at once: a port on which nothing listens.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def data_dir():
    """A data folder outside pytest's tmp_path: pytest resets its base folder to mode 0700 whenever an
    xdist worker starts using it, and the private PostgreSQL, run as the user `pgserver` when we are
    root, must be able to traverse every parent of its data folder."""
    path = tempfile.mkdtemp(prefix="va-ops-services-")
    yield Path(path) / "data"
    shutil.rmtree(path, ignore_errors=True)


def _libpq(url: str, database: str) -> str:
    return make_url(url).set(drivername="postgresql", database=database).render_as_string(hide_password=False)


def _wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.1)
    return not _pid_alive(pid)


def test_private_servers_start_when_local_urls_do_not_answer(data_dir):
    database_url = f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/va_private_check"
    redis_url = f"redis://127.0.0.1:{_closed_port()}/2"

    private_db, db_started = ensure_postgres(database_url, data_dir)
    try:
        private_redis, redis_started = ensure_redis(redis_url, data_dir)
        try:
            assert db_started and redis_started
            assert private_db != database_url and private_redis != redis_url
            assert private_redis.endswith("/2")  # the configured database number is kept

            # The private PostgreSQL lives under the data folder and has btree_gist (the booking constraints need it).
            with psycopg.connect(_libpq(private_db, "postgres"), autocommit=True) as connection:
                data_directory = connection.execute("SHOW data_directory").fetchone()[0]
                assert data_directory == str((data_dir / "postgres").resolve())
                connection.execute("CREATE DATABASE va_private_check")
            with psycopg.connect(_libpq(private_db, "va_private_check"), autocommit=True) as connection:
                connection.execute("CREATE EXTENSION btree_gist")
                extensions = [row[0] for row in connection.execute("SELECT extname FROM pg_extension")]
                assert "btree_gist" in extensions

            client = redis.Redis.from_url(private_redis)
            assert client.ping() is True
            client.close()

            # A second caller (another command) adopts the running servers instead of failing on them.
            again_db, again_db_started = ensure_postgres(database_url, data_dir)
            again_redis, _ = ensure_redis(redis_url, data_dir)
            assert (again_db, again_redis) == (private_db, private_redis)
            assert again_db_started
        finally:
            redis_pid = int((data_dir / "redis" / "redis.pid").read_text())
            assert stop_redis(data_dir) == STOPPED
            assert _wait_gone(redis_pid)
    finally:
        postgres_pid = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        assert stop_postgres(data_dir) == STOPPED
        assert _wait_gone(postgres_pid)

    # Stopped servers leave their data behind, and a later run starts them again on it.
    private_db_again, started_again = ensure_postgres(database_url, data_dir)
    try:
        assert started_again
        with psycopg.connect(_libpq(private_db_again, "va_private_check"), autocommit=True) as connection:
            assert (
                connection.execute(
                    "SELECT count(*) FROM pg_extension WHERE extname = 'btree_gist'"
                ).fetchone()[0]
                == 1
            )
    finally:
        assert stop_postgres(data_dir) == STOPPED


def test_a_claim_of_a_dead_process_does_not_keep_the_server(data_dir):
    redis_url = f"redis://127.0.0.1:{_closed_port()}/0"
    ensure_redis(redis_url, data_dir)
    claims = data_dir / "redis" / ".claims"
    # A run that was killed (kill -9) leaves its pid behind; pid 2**22+1 is above Linux's pid_max.
    claims.write_text(claims.read_text() + f"{2**22 + 1}\n")
    assert stop_redis(data_dir) == STOPPED


def test_a_private_server_that_died_meanwhile_is_reported_as_such(data_dir):
    ensure_redis(f"redis://127.0.0.1:{_closed_port()}/0", data_dir)
    redis_pid = int((data_dir / "redis" / "redis.pid").read_text())
    os.kill(redis_pid, signal.SIGKILL)  # as an OOM kill would
    assert _wait_gone(redis_pid)
    assert stop_redis(data_dir) == NOT_RUNNING


def test_answering_servers_are_used_as_they_are(tmp_path):
    database_url = os.environ.get("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/voiceappoint")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    assert ensure_postgres(database_url, tmp_path) == (database_url, False)
    assert ensure_redis(redis_url, tmp_path) == (redis_url, False)
    assert not (tmp_path / "postgres").exists()


@pytest.mark.parametrize(
    ("database_url", "expected"),
    [
        ("not a url", "DATABASE_URL is not a valid URL"),
        ("mysql://root@127.0.0.1:3306/voiceappoint", "must be a PostgreSQL URL"),
        ("postgresql+psycopg://postgres@db.invalid:5432/voiceappoint", "cannot resolve host 'db.invalid'"),
    ],
)
def test_unusable_database_urls_fail_with_one_clear_line(tmp_path, database_url, expected):
    started = time.monotonic()
    with pytest.raises(ServiceError) as raised:
        ensure_postgres(database_url, tmp_path)
    message = str(raised.value)
    assert expected in message
    assert "\n" not in message
    assert time.monotonic() - started < 5
    assert not (tmp_path / "postgres").exists()  # nothing was started for a URL we cannot use


@pytest.mark.parametrize(
    ("redis_url", "expected"),
    [
        ("redis://127.0.0.1:notaport/0", "REDIS_URL is not a valid URL"),
        ("mysql://root@127.0.0.1:3306/0", "must be a Redis URL"),
        ("redis://db.invalid:6379/0", "cannot resolve host 'db.invalid'"),
    ],
)
def test_unusable_redis_urls_fail_with_one_clear_line(tmp_path, redis_url, expected):
    with pytest.raises(ServiceError) as raised:
        ensure_redis(redis_url, tmp_path)
    assert expected in str(raised.value)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "redis").exists()


def test_a_server_that_answers_but_refuses_is_an_error_not_a_fallback(tmp_path):
    database_url = os.environ.get("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/voiceappoint")
    wrong_role = make_url(database_url).set(username="va_no_such_role", password=None)
    with pytest.raises(ServiceError) as raised:
        ensure_postgres(wrong_role.render_as_string(hide_password=False), tmp_path)
    assert "answered but refused" in str(raised.value)
    assert not (tmp_path / "postgres").exists()


@pytest.mark.parametrize(
    "url",
    [
        # a remote server given as libpq's host parameter (SQLAlchemy's documented form for psycopg)
        "postgresql+psycopg://app@/voiceappoint?host=db.example.invalid",
        # the shared server itself, which answers, given the same way
        "postgresql+psycopg://postgres@/voiceappoint?host=127.0.0.1",
    ],
)
def test_a_url_with_a_network_host_in_the_query_is_never_replaced(url, monkeypatch, tmp_path):
    started = []

    def fake_start(data_dir):
        started.append(data_dir)
        raise ServiceError("private server would be started here")

    monkeypatch.setattr(services, "_start_private_postgres", fake_start)
    with contextlib.suppress(ServiceError):  # the unreachable host: refused, not replaced
        ensure_postgres(url, tmp_path / "data")
    assert not started, f"{url} was replaced by a private PostgreSQL"


def test_a_port_where_something_else_listens_is_said_so(tmp_path):
    # An HTTP server on DATABASE_URL's port: libpq's last line was a tab-indented hint ("before or while
    # processing the request."), shown as if PostgreSQL had "answered but refused the connection".
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_as_http() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = listener.accept()
                with connection:
                    connection.recv(1024)
                    connection.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    threading.Thread(target=answer_as_http, daemon=True).start()
    try:
        with pytest.raises(ServiceError) as raised:
            ensure_postgres(f"postgresql+psycopg://postgres@127.0.0.1:{port}/x", tmp_path)
    finally:
        listener.close()
    message = str(raised.value)
    assert "something listens at" in message and "does not answer as PostgreSQL" in message, message
    assert "answered but refused" not in message
    assert not (tmp_path / "postgres").exists()
