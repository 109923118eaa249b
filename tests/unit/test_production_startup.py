"""What a process started the way docs/operations.md says does with a bad configuration, and what it logs.

Found by running the documented production layout (2026-11-28): a `celery -A workers.celery_app worker` with a
refused setting ran against Celery's default broker, amqp://guest@localhost:5672, without a word; a malformed
DATABASE_URL or REDIS_URL let every process start and fail every request or job; a killed pool process was
reported as a bare line in the JSON log.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from core import logging as app_logging
from core.config import Settings, describe

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("database_url", "expected"),
    [
        ("postgressql+psycopg://app@db:5432/voiceappoint", "must be a PostgreSQL URL"),
        ("postgresql+psycopg2://app@db:5432/voiceappoint", "uses the driver 'psycopg2'"),
        ("postgresql+psycopg://app@db:54x2/voiceappoint", "not a valid URL"),
        ("postgresql+psycopg://app@db:5432", "names no database"),
    ],
)
def test_a_database_url_the_processes_cannot_use_is_refused_at_start(database_url, expected):
    with pytest.raises(ValidationError) as refused:
        Settings(database_url=database_url)
    line = describe(refused.value)
    assert line.startswith("bad configuration: DATABASE_URL: ") and expected in line
    assert "\n" not in line


@pytest.mark.parametrize(
    ("redis_url", "expected"),
    [
        ("reddis://:pw@cache:6379/0", "must be a Redis URL"),
        ("redis://cache:63x9/0", "not a valid URL"),
        ("redis:///0", "names no host"),
    ],
)
def test_a_redis_url_the_processes_cannot_use_is_refused_at_start(redis_url, expected):
    with pytest.raises(ValidationError) as refused:
        Settings(redis_url=redis_url)
    line = describe(refused.value)
    assert line.startswith("bad configuration: REDIS_URL: ") and expected in line
    assert "pw" not in line  # never the value, which may carry a password


@pytest.mark.parametrize(
    "database_url",
    [
        "postgresql://app:secret@db:5432/voiceappoint",
        "postgres://app:secret@db:5432/voiceappoint",
        "postgresql+psycopg://app:secret@db:5432/voiceappoint",
    ],
)
def test_a_plain_postgresql_url_means_psycopg_3_as_it_does_for_migrate(database_url):
    # SQLAlchemy reads postgresql:// as psycopg2, which is not installed: every request was a 500.
    assert Settings(database_url=database_url).database_url == (
        "postgresql+psycopg://app:secret@db:5432/voiceappoint"
    )


def test_a_socket_directory_is_kept_as_written():
    url = "postgresql+psycopg://postgres@/voiceappoint?host=/srv/app/.data/postgres"
    assert Settings(database_url=url).database_url == url


def test_a_celery_command_with_a_refused_setting_stops_with_one_line(tmp_path):
    # The command operations.md gives for several workers on one host, and its `inspect ping`, load the app
    # through Celery, not through `voiceappoint`.
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("VOICEAPPOINT_") and key not in ("DATABASE_URL", "REDIS_URL")
    }
    environment.update(
        VOICEAPPOINT_ENV="production",
        VOICEAPPOINT_FLOWER_PASSWORD="a-real-password-for-this-test",
        PYTHONPATH=str(REPO),
        # Were the fallback still taken, it would meet nothing here rather than a RabbitMQ of the machine's.
        CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:9//",
    )
    result = subprocess.run(
        [sys.executable, "-c", "from workers.celery_app import app; print(app.conf.result_backend)"],
        cwd=tmp_path,  # no .env
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "voiceappoint: error: bad configuration: in production set VOICEAPPOINT_SECRET_KEY"
        " (the development defaults are public)"
    ]


@pytest.fixture
def logging_restored():
    loggers = [logging.getLogger(), logging.getLogger(app_logging.POOL_LOGGER)]
    saved = [(logger, list(logger.handlers), logger.level, logger.propagate) for logger in loggers]
    yield
    for logger, handlers, level, propagate in saved:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def test_a_killed_pool_process_is_one_json_line(logging_restored):
    from billiard import util

    stream = io.StringIO()
    app_logging.configure("INFO", json=True, stream=stream)
    util.get_logger()  # as the pool does; it makes the logger stop propagating
    util.info("child process %s calling self.run()", 4242)  # once per pool process: not at INFO
    util.error("Process %r pid:%r exited with %r", "ForkPoolWorker-1", 4242, "signal 9 (SIGKILL)")

    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "ERROR"
    assert entry["message"] == "Process 'ForkPoolWorker-1' pid:4242 exited with 'signal 9 (SIGKILL)'"
