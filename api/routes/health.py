from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.errors import problem
from core.db import get_engine
from workers.celery_app import app as celery_app

router = APIRouter(tags=["health"])


@router.get("/health", summary="The process is up")
def health() -> dict:
    return {"status": "ok"}


@router.get(
    "/ready", summary="The database and the broker answer", responses={503: {"description": "Not ready"}}
)
def ready() -> JSONResponse:
    checks = {"database": "ok", "broker": "ok"}
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:
        checks["database"] = "unavailable"
    try:
        with celery_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception:
        checks["broker"] = "unavailable"
    if all(value == "ok" for value in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    failing = ", ".join(name for name, value in checks.items() if value != "ok")
    return problem(503, "not_ready", "Not ready", f"Unavailable: {failing}.", checks=checks)
