"""A PostgreSQL server of a test's own, for tests that stop it or need another version or other roles than the
machine's shared server offers (which is never stopped). It is pgserver's, as `voiceappoint` starts when no
server answers: PostgreSQL 18 on a socket in the test's directory, its superuser `postgres`."""

from __future__ import annotations

import shutil
import signal
import tempfile
import warnings
from pathlib import Path

from sqlalchemy.engine import URL

from ops.services import _import_pgserver, _stop_pid


class PrivatePostgres:
    """Started on creation; `with PrivatePostgres() as server:` stops it and removes its files at the end."""

    def __init__(self) -> None:
        # Outside pytest's tmp_path, whose base folder pytest resets to mode 0700 whenever an xdist worker starts
        # using it: run as root, pgserver runs PostgreSQL as the user `pgserver`, which must traverse every
        # parent of the data folder (its initdb failed with "Permission denied" on pg_control).
        self.directory = Path(tempfile.mkdtemp(prefix="va-test-postgres-"))
        data = self.directory / "data"
        data.mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs, when XDG_RUNTIME_DIR is unset
            self.server = _import_pgserver().PostgresServer(data, cleanup_mode=None)
        self.url = self.url_for("postgres", "voiceappoint")

    def __enter__(self) -> PrivatePostgres:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def url_for(self, user: str, database: str) -> str:
        socket_dir = self.server.get_postmaster_info().socket_dir
        return URL.create(
            "postgresql+psycopg", username=user, database=database, query={"host": str(socket_dir)}
        ).render_as_string(hide_password=False)

    def crash_and_restart(self) -> None:
        """An immediate shutdown (every backend killed, no checkpoint: what a crash leaves), then a start,
        which recovers from the write-ahead log."""
        self.stop(signal.SIGQUIT)
        self.server._postmaster_info = None  # pgserver starts the server again only if it knows none
        self.server.ensure_postgres_running()

    def stop(self, how: signal.Signals = signal.SIGINT) -> None:
        """SIGINT is PostgreSQL's fast shutdown, SIGQUIT its immediate one."""
        pid = self.server.get_postmaster_info().pid
        if pid is not None:
            _stop_pid(pid, how, "the test's private PostgreSQL")
