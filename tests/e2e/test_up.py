"""`voiceappoint up`, the README's first command: the whole stack on this machine with the demo business,
answering a booking end to end, and stopped by one SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

from core import seed
from ops.cli import DEMO_KEY_FILE
from ops.database import drop_database
from tests.e2e.processes import eventually, free_port

REPO = Path(__file__).resolve().parents[2]
STARTED_WITHIN = 120  # migrations of a new database, then four processes on a shared machine


def _postgres_ports_of(pid: int, server_port: int) -> set[int]:
    """The local ports of the process's TCP connections to PostgreSQL's port (from /proc, no extra tools)."""
    inodes = _socket_inodes_of(pid)
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == server_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def _connected_unix_sockets_of(pid: int) -> int:
    """How many of the process's Unix sockets are connected (a PostgreSQL connection over a socket is one)."""
    inodes = _socket_inodes_of(pid)
    lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    # Fields: Num RefCount Protocol Flags Type St Inode [Path]; St 03 is "connected".
    return sum(1 for line in lines if line.split()[5] == "03" and line.split()[6] in inodes)


def _socket_inodes_of(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def test_up_serves_a_booking_of_the_demo_business_and_stops_on_sigterm(database_url, redis_prefix, tmp_path):
    database = f"va_test_up_{uuid.uuid4().hex[:10]}"
    url = make_url(database_url).set(database=database).render_as_string(hide_password=False)
    api_port, flower_port = free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        # Queues of its own: this run's e2e workers must not take its jobs, nor it theirs.
        "VOICEAPPOINT_REDIS_KEY_PREFIX": f"{redis_prefix}up:",
        "VOICEAPPOINT_DATA_DIR": str(tmp_path),
        "VOICEAPPOINT_FLOWER_USER": "ops",
        "VOICEAPPOINT_FLOWER_PASSWORD": "flower-secret",
    }
    argv = ["up", "--port", str(api_port), "--flower-port", str(flower_port), "--concurrency", "1"]
    up = subprocess.Popen(
        [sys.executable, "-c", "from ops.cli import main; main()", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(up.stdout), daemon=True)
    reader.start()
    try:
        assert eventually(lambda: "VoiceAppoint is running" in "".join(output), timeout=STARTED_WITHIN), (
            "".join(output)
        )
        key = (tmp_path / DEMO_KEY_FILE).read_text().strip()
        assert key in "".join(output)  # the banner shows the key it keeps
        haircut = str(seed.DEMO_SERVICE_IDS["haircut"])
        with httpx.Client(
            base_url=f"http://127.0.0.1:{api_port}", headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as api:
            services = api.get("/v1/services").json()["services"]
            assert "Haircut" in {service["name"] for service in services}
            today = date.today()
            slots = api.get(
                "/v1/availability",
                params={"service_id": haircut, "from": str(today), "to": str(today + timedelta(days=13))},
            ).json()["slots"]
            booked = api.post(
                "/v1/bookings?wait=20",
                json={
                    "service_id": haircut,
                    "start": slots[0]["start"],
                    "client": {"first_name": "Ana", "phone": "+34600111222"},
                },
            )
            assert booked.status_code == 201, booked.text  # the worker booked it
            assert booked.json()["result"]["booking_reference"]
        flower = f"http://127.0.0.1:{flower_port}/"
        assert eventually(
            lambda: httpx.get(flower, auth=("ops", "flower-secret"), timeout=5).status_code == 200, timeout=30
        )
        assert httpx.get(flower, timeout=5).status_code == 401
        # While it watches its children, `up` itself holds no database connection (one the operator's
        # connection budget does not count).
        # Over a Unix socket (the private PostgreSQL of `voiceappoint test`) no TCP connection would be seen
        # whatever `up` holds: there, `up` must hold no connected Unix socket at all.
        server = make_url(url)
        if server.host and not server.query.get("host"):
            assert _postgres_ports_of(up.pid, server.port or 5432) == set()
        else:
            assert _connected_unix_sockets_of(up.pid) == 0

        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0, "".join(output)
        reader.join(timeout=10)
        assert "Traceback" not in "".join(output)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        time.sleep(0.5)  # the children's connections close as they exit
        drop_database(url)
