"""The API's edges found wrong in review: a 500 that lost its request id, a refused production setting that
printed other secrets, an undocumented code for an unknown path, long request ids replaced instead of cut, an
OpenAPI document without the API key, and /ready's 503 undocumented."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.routes import catalog as catalog_routes
from api.routes import health
from core import logging as app_logging
from tests.scenarios import build_salon
from workers.celery_app import app as celery_app

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def salon(db):
    return build_salon(db, with_api_key=True)


@pytest.fixture
def client(db, redis_prefix, salon):
    assert celery_app.conf.broker_transport_options.get("global_keyprefix") == redis_prefix
    # raise_server_exceptions=False: the test sees the 500 the caller would get, not the traceback.
    with TestClient(
        create_app(), headers={"Authorization": f"Bearer {salon.api_key}"}, raise_server_exceptions=False
    ) as test_client:
        yield test_client


def documented_codes() -> set[str]:
    """Every `code` in the two error tables of docs/api.md."""
    text = (REPO / "docs" / "api.md").read_text()
    tables = text.split("## Error codes", 1)[1]
    return {
        code
        for line in tables.splitlines()
        if line.startswith("| `")
        for code in re.findall(r"`([a-z_]+)`", line.split("|")[1])
    }


def test_an_unexpected_error_keeps_the_request_id_in_the_answer_and_the_log(client, monkeypatch):
    stream = io.StringIO()
    app_logging.configure("INFO", json=True, stream=stream)

    def broken(uow):  # any bug in a route: the generic problem+json 500 path
        raise RuntimeError("boom")

    monkeypatch.setattr(catalog_routes.catalog, "list_services", broken)
    response = client.get("/v1/services", headers={"X-Request-ID": "req-500-abc"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    error_line = next(line for line in lines if line["message"].startswith("unhandled error"))
    found = {
        "x-request-id header": response.headers.get("x-request-id"),
        "request_id in the ERROR line": error_line.get("request_id"),
        "tenant_id in the ERROR line": error_line.get("tenant_id"),
    }
    assert None not in found.values(), found


def test_refusing_a_weak_production_setting_does_not_print_other_secrets(tmp_path):
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO),
        "VOICEAPPOINT_ENV": "production",
        # The operator set a real Flower password but forgot the secret key: start-up is refused...
        "VOICEAPPOINT_FLOWER_PASSWORD": "Fl0wer-Pa55",
    }
    # ...by the very command operations.md says `voiceappoint api` runs (a supervisor may run it directly).
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--port", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "VOICEAPPOINT_SECRET_KEY" in result.stderr
    assert "Fl0wer-Pa55" not in result.stderr, result.stderr.strip().splitlines()[-2]


def test_an_unknown_path_answers_a_documented_code(client):
    response = client.get("/v1/booking")  # a typo of /v1/bookings
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    code = response.json()["code"]
    assert code in documented_codes(), f"{code!r} is not in docs/api.md's error tables"


def test_a_long_request_id_is_cut_to_64_characters_as_documented(client):
    offered = "order-4711-" + "x" * 60  # 71 characters, all of them allowed ones
    response = client.get("/health", headers={"X-Request-ID": offered})
    assert response.headers["x-request-id"] == offered[:64]


def test_the_openapi_document_declares_the_bearer_api_key(client):
    spec = client.get("/openapi.json").json()
    schemes = spec.get("components", {}).get("securitySchemes", {})
    assert any(s.get("scheme", "").lower() == "bearer" for s in schemes.values()), "no securitySchemes"
    operation = spec["paths"]["/v1/services"]["get"]
    assert operation.get("security"), "GET /v1/services declares no security requirement"


def test_ready_503_is_documented_as_the_problem_it_is(client, monkeypatch):
    def down():
        raise OSError("database down")

    monkeypatch.setattr(health, "_database", health.Check(down))
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    documented = client.get("/openapi.json").json()["paths"]["/ready"]["get"]["responses"]["503"]
    assert "application/problem+json" in documented.get("content", {}), documented
