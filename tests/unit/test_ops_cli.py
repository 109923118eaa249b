"""The voiceappoint command's own behaviour: one-line errors, pytest arguments, child supervision."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

from ops.cli import (
    FLOWER_MAX_TASKS,
    STOP_GRACE_SECONDS,
    Supervisor,
    _banner,
    _flower_env,
    _how_it_ended,
    _http_url,
    _pytest_args,
    _wait_for_port,
)
from ops.services import REPO_ROOT
from tests.commands import run_voiceappoint


def _voiceappoint(*args: str, **env: str) -> subprocess.CompletedProcess:
    return run_voiceappoint(*args, timeout=60, **env)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DATABASE_URL": "mysql://root@127.0.0.1:3306/voiceappoint"}, "must be a PostgreSQL URL"),
        (
            {"DATABASE_URL": "postgresql+psycopg://postgres@db.invalid:5432/x"},
            "cannot resolve host 'db.invalid'",
        ),
        ({"VOICEAPPOINT_DEFAULT_SLOT_STEP_MINUTES": "often"}, "VOICEAPPOINT_DEFAULT_SLOT_STEP_MINUTES"),
        # A rule over several settings: its message names them, and no made-up VOICEAPPOINT_SETTINGS.
        ({"VOICEAPPOINT_ENV": "production"}, "bad configuration: in production set"),
        (
            {
                "VOICEAPPOINT_ENV": "production",
                "VOICEAPPOINT_SECRET_KEY": "s3cret-for-this-test",
                "VOICEAPPOINT_FLOWER_PASSWORD": "pa55-for-this-test",
                "VOICEAPPOINT_DB_APP_ROLE": "",
            },
            "in production set VOICEAPPOINT_DB_APP_ROLE",
        ),
        # Flower splits FLOWER_BASIC_AUTH on commas: "Xk9,p2Lq" let in "p2Lq" alone, and not itself.
        ({"VOICEAPPOINT_FLOWER_PASSWORD": "Xk9,p2Lq"}, "VOICEAPPOINT_FLOWER_PASSWORD may not contain ','"),
        ({"VOICEAPPOINT_FLOWER_USER": "ops:night"}, "VOICEAPPOINT_FLOWER_USER may not contain ',' or ':'"),
    ],
)
def test_an_operator_error_is_one_line_and_exit_status_2(env, expected):
    result = _voiceappoint("migrate", **env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("voiceappoint: error:")
    assert expected in lines[0]


def test_up_refuses_a_port_that_is_taken_before_starting_anything():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _voiceappoint("up", "--port", str(port))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"voiceappoint: error: 127.0.0.1:{port} is already in use; pick another port with --port"
    )


def test_pytest_runs_quietly_on_two_workers_unless_told_otherwise():
    assert _pytest_args(()) == ["-q", "-n", "2"]
    assert _pytest_args(("-k", "seed or ops")) == ["-q", "-n", "2", "-k", "seed or ops"]
    assert _pytest_args(("-n", "0", "tests/unit")) == ["-q", "-n", "0", "tests/unit"]
    assert _pytest_args(("-p", "no:xdist")) == ["-q", "-p", "no:xdist"]


def test_flower_keeps_a_bounded_number_of_tasks_unless_the_operator_says_otherwise(monkeypatch):
    # Flower's default (100000 tasks, ~6 KB each) let it grow by ~600 MB over a few hours of bookings.
    monkeypatch.delenv("FLOWER_MAX_TASKS", raising=False)
    assert _flower_env()["FLOWER_MAX_TASKS"] == str(FLOWER_MAX_TASKS) == "10000"
    monkeypatch.setenv("FLOWER_MAX_TASKS", "2500")
    assert _flower_env()["FLOWER_MAX_TASKS"] == "2500"


def test_the_supervisor_notices_a_dead_child_and_stops_the_rest(capsys):
    supervisor = Supervisor()
    supervisor.start(
        "sleeper", [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
    )
    supervisor.start("crasher", [sys.executable, "-c", "import sys; sys.exit(3)"])
    deadline = time.monotonic() + 20
    while supervisor.first_exited() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert supervisor.first_exited() == ("crasher", 3)

    started = time.monotonic()
    supervisor.stop_all(grace_seconds=5)
    assert supervisor.children["sleeper"].returncode is not None
    assert time.monotonic() - started < 5
    time.sleep(0.2)  # let the relay thread print what it read
    assert "sleeper| up" in capsys.readouterr().out


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period():
    supervisor = Supervisor()
    supervisor.start(
        "stubborn",
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)",
        ],
    )
    time.sleep(0.5)  # let it install its handler
    started = time.monotonic()
    supervisor.stop_all(grace_seconds=1)
    assert supervisor.children["stubborn"].returncode is not None
    assert time.monotonic() - started < 5


def _running(pid: int) -> bool:
    # A zombie has exited; it lingers only until whoever adopted it reaps it.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_the_children_get_sigterm_when_up_is_killed():
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from ops.cli import Supervisor; supervisor = Supervisor();"
            " supervisor.start('sleeper', [sys.executable, '-c', 'import time; time.sleep(60)']);"
            " print(supervisor.children['sleeper'].pid, flush=True); time.sleep(60)",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    child = None
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _running(child)
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 5
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(child)
    finally:
        parent.kill()
        parent.wait(timeout=10)
        if child is not None and _running(child):
            os.killpg(child, signal.SIGKILL)  # the child leads a session of its own


def test_compose_gives_the_worker_time_to_finish_its_tasks_and_bounds_its_pool():
    # Compose's default is SIGKILL after 10 s: tasks running then (up to the hard limit) would be cut off
    # and their messages left unacknowledged for the visibility timeout.
    import yaml

    from workers.base import JobTask

    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    worker = compose["services"]["worker"]
    grace = worker["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > JobTask.time_limit
    # Celery's default pool is the CPU count the container sees: one database connection each.
    assert "--concurrency" in worker["command"]


def test_up_gives_the_worker_time_to_finish_its_tasks_too():
    # It killed after 15 s: a booking running then was cut off and run again (found in review).
    from workers.base import JobTask

    assert JobTask.time_limit < STOP_GRACE_SECONDS


def test_the_banners_urls_and_curl_lines_work_for_an_ipv6_host():
    # `up --host ::1` printed http://::1:8000, which curl refuses (found in review).
    assert _http_url("::1", 8000) == "http://[::1]:8000"
    assert _http_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert _http_url("localhost", 5555) == "http://localhost:5555"


def test_each_run_of_up_shows_a_booking_with_an_idempotency_key_of_its_own():
    # The key was the day's: the next `up` that day showed the same key, and its booking answered with the old
    # job (found in review).
    first, second = (
        _banner(
            "http://127.0.0.1:8000",
            "http://127.0.0.1:5555",
            "va_live_x",
            datetime(2026, 12, 1, 9, 0, s, tzinfo=UTC),
            None,
        )
        for s in (1, 2)
    )
    key_lines = [
        [line for line in banner.splitlines() if "Idempotency-Key" in line] for banner in (first, second)
    ]
    assert len(key_lines[0]) == 1 and key_lines[0] != key_lines[1]


def test_a_child_killed_by_a_signal_is_said_so():
    assert _how_it_ended(-9) == "was killed by SIGKILL"
    assert _how_it_ended(3) == "exited with status 3"
    # (review) A real-time signal has no name in signal.Signals: ValueError, and `up` died with a traceback.
    assert _how_it_ended(-40) == "was killed by signal 40"


def test_a_ctrl_c_during_the_tests_lets_pytest_clean_up_before_the_command_ends(tmp_path):
    # The terminal's Ctrl-C reaches the whole process group. subprocess.call killed the step 0.25 s after it,
    # and an interrupted pytest never dropped its databases (they stayed on the shared server).
    cleaned, ready = tmp_path / "cleaned", tmp_path / "ready"
    step = (
        "import pathlib, time\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "try:\n    time.sleep(30)\n"
        f"except KeyboardInterrupt:\n    time.sleep(1); pathlib.Path({str(cleaned)!r}).touch(); raise SystemExit(2)\n"
    )
    command = subprocess.Popen(
        [
            sys.executable,
            "-c",
            # A Ctrl-C raises KeyboardInterrupt, as in a terminal: pytest-xdist's workers, whose children these
            # are, ignore SIGINT, and an ignored signal stays ignored in a child.
            "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            f"from ops.cli import _run_step; _run_step('pytest', [sys.executable, '-c', {step!r}])",
        ],
        cwd=REPO_ROOT,
        start_new_session=True,  # a process group of its own, as a terminal gives a command
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(command.pid, signal.SIGINT)
    _, stderr = command.communicate(timeout=20)
    assert cleaned.exists(), stderr
    assert "waiting for pytest to clean up" in stderr


def test_a_stop_asked_while_up_waits_for_the_api_ends_the_wait_at_once():
    supervisor = Supervisor()
    started = time.monotonic()
    assert not _wait_for_port("127.0.0.1", _closed_port(), supervisor, timeout=30, stopping=lambda: True)
    assert time.monotonic() - started < 1


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
