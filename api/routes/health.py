import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.errors import problem
from api.schemas import Problem
from core.db import get_engine
from workers.celery_app import app as celery_app

router = APIRouter(tags=["health"])

# A dependency that has not answered by then counts as unavailable: a probe must get its answer quickly.
READY_TIMEOUT_SECONDS = 3.0


# HEAD too: some load balancers and uptime monitors probe with it (RFC 9110: wherever GET is, HEAD should be).
# The hidden route, registered first, answers both methods, so that a 405 names both in its Allow header
# (Starlette takes the methods of the first route of the path); the GET route only documents it.
@router.get("/health", summary="The process is up")
@router.api_route("/health", methods=["GET", "HEAD"], include_in_schema=False)
async def health() -> dict:
    # Answered on the event loop itself, never queued behind requests waiting for a thread: a liveness
    # probe must not fail because the process is busy.
    return {"status": "ok"}


def _database_answers() -> None:
    with get_engine().connect() as connection:
        connection.execute(text("SELECT 1"))
        connection.commit()  # not a ROLLBACK, which would drop the connection's prepared statements (UnitOfWork.__exit__)


def _broker_answers() -> None:
    with celery_app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)


class Check:
    """One dependency check, run on a thread of its own (never the request threads, which a burst may all
    occupy, nor another check's), at most one at a time: probes arriving while one runs share its answer, so
    a dependency that hangs (a pool with no free connection) holds one thread, not one per probe."""

    def __init__(self, probe: Callable[[], None]):
        self.probe = probe
        self._thread = ThreadPoolExecutor(max_workers=1)
        self._running: Future[None] | None = None

    async def __call__(self) -> str:
        if self._running is None or self._running.done():
            self._running = self._thread.submit(self.probe)
        try:
            # Shielded: a probe that gives up must not cancel the check the next probe will share.
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._running)), READY_TIMEOUT_SECONDS)
        except Exception:
            return "unavailable"
        return "ok"


_database = Check(_database_answers)
_broker = Check(_broker_answers)


@router.get(
    "/ready",
    summary="The database and the broker answer",
    responses={503: {"model": Problem, "description": "Not ready: `checks` names what does not answer"}},
)
@router.api_route("/ready", methods=["GET", "HEAD"], include_in_schema=False)  # as for /health
async def ready() -> JSONResponse:
    database, broker = await asyncio.gather(_database(), _broker())
    checks = {"database": database, "broker": broker}
    if all(value == "ok" for value in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    failing = ", ".join(name for name, value in checks.items() if value != "ok")
    return problem(503, "not_ready", "Not ready", f"Unavailable: {failing}.", checks=checks)
