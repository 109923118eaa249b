"""End-to-end fixtures: real worker and API processes on this run's database and Redis key prefix.

processes      the ProcessHarness (start_worker / start_api / start_beat), everything stopped at the end
worker         two real worker processes consuming every queue (a list of WorkerProcess)
api_server     the API under uvicorn on a free port (ApiProcess: .base_url, .client())
celery_client  a Celery app configured for this run's prefix, to send tasks and inspect workers
"""

from __future__ import annotations

import gc
import importlib.util
import os
from pathlib import Path

import pytest

from core.config import DEFAULT_REDIS_URL
from tests.e2e.processes import ProcessEnvironment, ProcessHarness, client_app


def pytest_collection_modifyitems(items):
    # Every test under tests/e2e is marked, so `-m "not e2e"` skips the slow ones.
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def no_cyclic_collection_during_a_test():
    """Celery's AsyncResult.__del__ unsubscribes from its result channel; run by the cyclic collector in the
    middle of a send's subscribe on the same Redis connection, the two deadlock (seen here: a test hung in
    `send_task`). These tests wait on results, so they collect only between tests, where no Redis call is in
    flight. (The application itself never waits on a result: every task it sends ignores its result.)"""
    gc.collect()
    gc.disable()
    yield
    gc.enable()
    gc.collect()


@pytest.fixture(scope="session")
def process_environment(database_url, redis_prefix, tmp_path_factory) -> ProcessEnvironment:
    return ProcessEnvironment(
        database_url=database_url,
        redis_url=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
        redis_prefix=redis_prefix,
        log_dir=tmp_path_factory.mktemp("process-logs"),
    )


@pytest.fixture(scope="session")
def celery_client(process_environment):
    app = client_app(process_environment)
    assert app.conf.broker_transport_options["global_keyprefix"] == process_environment.redis_prefix
    yield app
    app.close()


@pytest.fixture(scope="session")
def processes(process_environment, celery_client):
    harness = ProcessHarness(process_environment, client=celery_client)
    yield harness
    harness.stop_all()


@pytest.fixture(scope="session")
def worker(processes):
    """Two real worker processes (prefork, two pool processes each) on every queue."""
    return [processes.start_worker(name="e2e-worker", concurrency=2) for _ in range(2)]


@pytest.fixture(scope="session")
def api_server(processes):
    if importlib.util.find_spec("api.app") is None:
        pytest.skip("api/app.py (the FastAPI factory create_app) does not exist yet")
    return processes.start_api()
