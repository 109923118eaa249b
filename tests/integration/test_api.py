"""The intake API in process (TestClient) on the real database: authentication, validation and
problem+json errors. Nothing a rejected request sends may leave a row behind."""

from __future__ import annotations

import ast
import io
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text, update

from api import schemas as api_schemas
from api.app import create_app
from api.routes import catalog as catalog_routes
from api.routes import health
from core import availability, intake
from core import db as core_db
from core import errors as core_errors
from core import logging as app_logging
from core.models import ApiKey, Client, IntakeJob, ServiceResource
from tests import factories
from tests.scenarios import book, build_salon, committed_salon, request, rows
from tests.statements import statements_sent
from workers.celery_app import app as celery_app

REPO = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC)
DAY = (NOW + timedelta(days=2)).date()


@pytest.fixture
def salon(db):
    return build_salon(db, with_api_key=True)


@pytest.fixture
def client(db, redis_prefix, salon):
    # Jobs this module accepts go to this run's own key prefix, never to a shared queue.
    assert celery_app.conf.broker_transport_options.get("global_keyprefix") == redis_prefix
    with TestClient(create_app(), headers={"Authorization": f"Bearer {salon.api_key}"}) as test_client:
        yield test_client


def booking_body(salon, **changes):
    body = {
        "service_id": str(salon.haircut.id),
        "start": salon.at(DAY, "10:00").isoformat(),
        "client": {"first_name": "Lucía", "phone": "612 345 678"},
    }
    body.update(changes)
    return body


def assert_problem(response, status, code):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == code
    assert problem["status"] == status
    assert problem["title"] and problem["detail"] and problem["type"].endswith(code)
    return problem


def test_health_and_openapi(client):
    assert client.get("/health").json() == {"status": "ok"}
    spec = client.get("/openapi.json").json()
    assert "/v1/bookings" in spec["paths"]
    assert spec["components"]["schemas"]["BookingIn"]["examples"]


def test_the_openapi_contract_documents_every_error_as_problem_json(client):
    spec = client.get("/openapi.json").json()
    problem = {"$ref": "#/components/schemas/Problem"}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status[0] in "45" and response.get("content"):
                    assert response["content"] == {"application/problem+json": {"schema": problem}}, (
                        method,
                        path,
                        status,
                    )
    assert {"400", "404", "409", "413", "422"} <= set(spec["paths"]["/v1/bookings"]["post"]["responses"])
    assert "404" in spec["paths"]["/v1/availability"]["get"]["responses"]
    # What ?wait= answers when the job succeeded.
    assert "201" in spec["paths"]["/v1/bookings"]["post"]["responses"]
    assert "200" in spec["paths"]["/v1/appointments/{appointment_id}/cancel"]["post"]["responses"]
    # ...and when it failed with internal_error.
    for path in (
        "/v1/bookings",
        *(f"/v1/appointments/{{appointment_id}}/{change}" for change in ("reschedule", "cancel")),
    ):
        assert "500" in spec["paths"][path]["post"]["responses"], path
    # Any /v1 operation refuses a query parameter it does not take (422 unknown_field), /v1/services too.
    assert set(spec["paths"]["/v1/services"]["get"]["responses"]) == {"200", "401", "422", "429", "503"}
    assert_problem(client.get("/v1/services", params={"page": 2}), 422, "unknown_field")
    # The probes take any parameter (a monitor's cache-buster): nothing there can fail validation.
    assert "422" not in spec["paths"]["/health"]["get"]["responses"]
    assert "422" in spec["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]
    assert spec["components"]["schemas"]["ClientIn"]["anyOf"] == [
        {"required": ["phone"]},
        {"required": ["email"]},
    ]


def test_a_method_the_path_does_not_have_is_405_with_allow(client):
    response = client.delete("/v1/services")
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET"


def test_ready_checks_the_database_and_the_broker(client):
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_the_probes_answer_head_as_they_answer_get(client):
    # Some load balancers and uptime monitors probe with HEAD.
    for path in ("/health", "/ready"):
        response = client.head(path)
        assert (response.status_code, response.content) == (200, b"")


def test_services_lists_the_tenants_active_services(client, salon):
    services = client.get("/v1/services").json()["services"]
    assert [s["name"] for s in services] == ["Haircut"]
    assert services[0]["price"] == "25.00"
    assert set(services[0]["resource_ids"]) == {str(r.id) for r in salon.stylists + salon.chairs}
    # What a client may choose, and the rules a booking meets, before any refusal says them.
    resources = {r["resource_id"]: r for r in services[0]["resources"]}
    assert {r: (v["name"], v["choosable"]) for r, v in resources.items()} == {
        **{str(s.id): (s.name, True) for s in salon.stylists},
        **{str(c.id): (c.name, False) for c in salon.chairs},
    }
    rules = {name: services[0][name] for name in ("min_advance_booking_hours", "max_advance_booking_days")}
    assert rules == {"min_advance_booking_hours": 0, "max_advance_booking_days": 60}
    assert (services[0]["allows_cancellation"], services[0]["cancellation_policy_hours"]) == (True, 24)
    assert services[0]["requires_confirmation"] is False


def test_services_lists_only_whats_offered_in_the_businesss_order_with_its_own_rules(db, client, salon):
    # What the booking page shows: switched-off or deleted services and resources are not offered; services
    # in the business's order (sort_order, then name); stylists in their order of preference; each service
    # with its own rules.
    now = datetime.now(UTC)
    colour = factories.make_service(
        db, salon.tenant, name="Colour", sort_order=-1, requires_confirmation=True, allows_cancellation=False
    )
    factories.make_service(db, salon.tenant, name="Beard", sort_order=-1)
    factories.make_service(db, salon.tenant, name="Old perm", is_active=False)
    factories.make_service(db, salon.tenant, name="Gone", deleted_at=now)
    away = factories.make_resource(db, salon.tenant, "staff", name="On leave", is_active=False)
    gone = factories.make_resource(db, salon.tenant, "staff", name="Left us", deleted_at=now)
    for resource in (away, gone):
        factories.link_service_resource(db, salon.haircut, resource, is_required=False)
    salon.haircut.sort_order = -2  # first, whatever its name
    first, second = salon.stylists
    db.execute(
        update(ServiceResource)
        .where(ServiceResource.service_id == salon.haircut.id, ServiceResource.resource_id == first.id)
        .values(preference_order=5)
    )
    db.flush()

    services = {s["name"]: s for s in client.get("/v1/services").json()["services"]}
    assert list(services) == ["Haircut", "Beard", "Colour"]
    haircut_stylists = [r["name"] for r in services["Haircut"]["resources"] if r["choosable"]]
    assert haircut_stylists == [second.name, first.name]
    assert (services["Colour"]["requires_confirmation"], services["Colour"]["allows_cancellation"]) == (
        True,
        False,
    )
    assert services["Colour"]["service_id"] == str(colour.id)


def test_availability_answers_in_the_tenants_time_zone(client, salon):
    day = (NOW + timedelta(days=2)).date()
    response = client.get(
        "/v1/availability",
        params={"service_id": str(salon.haircut.id), "from": day.isoformat(), "to": day.isoformat()},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["timezone"] == "Europe/Madrid"
    assert body["slots"][0]["start"] == salon.at(DAY, "09:00").isoformat()
    assert body["slots"][-1]["end"] == salon.at(DAY, "18:00").isoformat()


def test_availability_is_planned_after_its_connection_is_given_back(client, salon, monkeypatch):
    open_units, open_while_planning = [], []
    enter, leave, plan = core_db.UnitOfWork.__enter__, core_db.UnitOfWork.__exit__, availability.plan_window

    def entering(uow):
        open_units.append(uow)
        return enter(uow)

    def leaving(uow, *exc_info):
        open_units.remove(uow)
        return leave(uow, *exc_info)

    def planning(*args):
        open_while_planning.append(len(open_units))
        return plan(*args)

    monkeypatch.setattr(core_db.UnitOfWork, "__enter__", entering)
    monkeypatch.setattr(core_db.UnitOfWork, "__exit__", leaving)
    monkeypatch.setattr(availability, "plan_window", planning)
    response = client.get(
        "/v1/availability",
        params={"service_id": str(salon.haircut.id), "from": DAY.isoformat(), "to": DAY.isoformat()},
    )
    assert response.status_code == 200, response.text
    assert response.json()["slots"]
    assert open_while_planning == [0]


def test_availability_over_62_days_is_refused(client, salon):
    response = client.get(
        "/v1/availability",
        params={
            "service_id": str(salon.haircut.id),
            "from": DAY.isoformat(),
            "to": (DAY + timedelta(days=62)).isoformat(),
        },
    )
    assert_problem(response, 422, "range_too_long")


def test_a_booking_is_accepted_as_a_queued_job(db, client, salon):
    response = client.post("/v1/bookings", json=booking_body(salon), headers={"Idempotency-Key": "k-1"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["links"]["self"] == f"/v1/jobs/{job['job_id']}"
    # The answer reads as GET /v1/jobs/{id} does, the replay's too (the same fields, times in one format).
    assert client.get(f"/v1/jobs/{job['job_id']}").json() == job
    replayed = client.post("/v1/bookings", json=booking_body(salon), headers={"Idempotency-Key": "k-1"})
    assert (replayed.status_code, replayed.json()) == (202, job)
    stored = db.scalar(select(IntakeJob).where(IntakeJob.id == job["job_id"]))
    assert stored.payload["client"]["phone"] == "612 345 678" and stored.idempotency_key == "k-1"


def test_a_replay_without_wait_answers_202_with_the_job_however_it_ended(db, client, salon):
    # docs/api.md: a repeated Idempotency-Key returns the first job (202, same job_id), even if that job
    # failed; 201 and the job's problem are what `?wait=` answers.
    def run(job_id):
        with core_db.UnitOfWork(system=True) as uow:
            intake.run(uow, job_id, datetime.now(UTC))

    outcomes = {}
    for key, phone in (("won", "612 345 678"), ("lost", "612 345 679")):  # the second finds 10:00 taken
        body = booking_body(salon, client={"first_name": "Lucía", "phone": phone})
        first = client.post("/v1/bookings", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == 202, first.text
        run(first.json()["job_id"])
        replayed = client.post("/v1/bookings", json=body, headers={"Idempotency-Key": key})
        assert replayed.status_code == 202, replayed.text
        assert replayed.headers["content-type"] == "application/json"
        assert replayed.headers["location"] == f"/v1/jobs/{first.json()['job_id']}"
        assert replayed.json()["job_id"] == first.json()["job_id"]
        outcomes[key] = replayed.json()["status"], (replayed.json()["error"] or {}).get("code")
    assert outcomes == {"won": ("succeeded", None), "lost": ("failed", "slot_taken")}


@pytest.mark.parametrize(
    ("action", "body"), [("reschedule", {"start": "{later}"}), ("cancel", {"reason": "Client is ill"})]
)
def test_a_move_or_cancellation_seen_to_succeed_with_wait_is_200_not_201(db, client, salon, action, body):
    # docs/api.md: `200` with `wait` when moved or cancelled; nothing new was created, so the Location is the job.
    booked = book(salon, request(salon, day=DAY, clock="11:00"), now=NOW)
    body = {name: value.format(later=salon.at(DAY, "15:00").isoformat()) for name, value in body.items()}
    path = f"/v1/appointments/{booked.appointment_id}/{action}"
    accepted = client.post(path, json=body, headers={"Idempotency-Key": f"{action}-1"})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    with core_db.UnitOfWork(system=True) as uow:
        intake.run(uow, job_id, datetime.now(UTC))
    # The same request again, waiting: its job has ended, so it is answered at once with the outcome.
    waited = client.post(f"{path}?wait=5", json=body, headers={"Idempotency-Key": f"{action}-1"})
    assert waited.status_code == 200, waited.text
    assert waited.json()["status"] == "succeeded"
    assert waited.headers["location"] == f"/v1/jobs/{job_id}"
    assert "content-location" not in waited.headers


def test_a_retry_giving_the_same_start_with_another_offset_is_the_same_request(db, client, salon):
    local = salon.at(DAY, "10:00")
    first = client.post("/v1/bookings", json=booking_body(salon), headers={"Idempotency-Key": "k-tz"})
    in_utc = local.astimezone(UTC).isoformat().replace("+00:00", "Z")
    again = client.post(
        "/v1/bookings", json=booking_body(salon, start=in_utc), headers={"Idempotency-Key": "k-tz"}
    )
    assert (again.status_code, again.json()) == (202, first.json())
    # Another instant under the same key is another request.
    later = salon.at(DAY, "10:15").isoformat()
    other = client.post(
        "/v1/bookings", json=booking_body(salon, start=later), headers={"Idempotency-Key": "k-tz"}
    )
    assert_problem(other, 409, "idempotency_key_reused")
    stored = db.scalar(select(IntakeJob).where(IntakeJob.id == first.json()["job_id"]))
    assert stored.payload["start"] == local.astimezone(UTC).isoformat()  # kept in one form: UTC


def test_a_retry_with_an_empty_list_of_resources_is_the_same_request(client, salon):
    # [] and a missing resource_ids both mean "no preference": the retry was refused 409 (found in review).
    first = client.post("/v1/bookings", json=booking_body(salon), headers={"Idempotency-Key": "k-none"})
    for resource_ids in ([], None):
        again = client.post(
            "/v1/bookings",
            json=booking_body(salon, resource_ids=resource_ids),
            headers={"Idempotency-Key": "k-none"},
        )
        assert (again.status_code, again.json()) == (202, first.json())
    # A preference is another request.
    chosen = booking_body(salon, resource_ids=[str(salon.stylists[0].id)])
    other = client.post("/v1/bookings", json=chosen, headers={"Idempotency-Key": "k-none"})
    assert_problem(other, 409, "idempotency_key_reused")


def test_a_retry_naming_the_same_resources_in_another_order_is_the_same_request(client, salon):
    # A stylist and the chair each serve in their own role: their order means nothing (found in review).
    stylist_and_chair = [str(salon.stylists[0].id), str(salon.chairs[0].id)]
    first = client.post(
        "/v1/bookings",
        json=booking_body(salon, resource_ids=stylist_and_chair),
        headers={"Idempotency-Key": "k"},
    )
    assert first.status_code == 202, first.text
    for resource_ids in (stylist_and_chair[::-1], stylist_and_chair * 2):
        again = client.post(
            "/v1/bookings",
            json=booking_body(salon, resource_ids=resource_ids),
            headers={"Idempotency-Key": "k"},
        )
        assert (again.status_code, again.json()) == (202, first.json())


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"service_id": "6f1c1c1e-0000-4000-8000-000000000000"}, 404, "service_not_found"),
        ({"start": "OFF_GRID"}, 422, "off_grid"),
        ({"start": "NAIVE"}, 422, "validation_error"),
        ({"start": "tomorrow at ten"}, 422, "validation_error"),
        ({"client": {"first_name": "Lucía", "phone": "12"}}, 422, "invalid_phone"),
        ({"client": {"first_name": "Lucía"}}, 422, "contact_required"),
        ({"colour": "blue"}, 422, "unknown_field"),
        ({"start": "PAST"}, 422, "start_in_past"),
        ({"service_id": "not-a-uuid"}, 422, "validation_error"),
        ({"start": "MISSING"}, 422, "validation_error"),
    ],
)
def test_bad_bookings_get_a_code_and_leave_no_row(db, client, salon, change, status, code):
    starts = {
        "OFF_GRID": salon.at(DAY, "10:07").isoformat(),
        "NAIVE": salon.at(DAY, "10:00").replace(tzinfo=None).isoformat(),
        "PAST": salon.at(DAY - timedelta(days=5), "10:00").isoformat(),
    }
    if "start" in change:
        change = {"start": starts.get(change["start"], change["start"])}
    body = booking_body(salon, **change)
    if body["start"] == "MISSING":
        del body["start"]
    response = client.post("/v1/bookings", json=body)
    problem = assert_problem(response, status, code)
    if code in ("validation_error", "unknown_field"):
        assert problem["errors"]
        # In words a person reads, not pydantic's "Value error, ..." (found in review).
        assert not any(error["message"].startswith("Value error") for error in problem["errors"]), problem
    assert rows(db, IntakeJob, salon) == 0
    assert rows(db, Client, salon) == 0


def test_a_body_over_64_kib_is_refused(db, client, salon):
    huge = booking_body(salon, notes="x" * (65 * 1024))
    assert_problem(client.post("/v1/bookings", json=huge), 413, "payload_too_large")
    assert rows(db, IntakeJob, salon) == 0


def test_a_missing_or_wrong_key_is_refused(db, client, salon):
    assert_problem(
        client.post("/v1/bookings", json=booking_body(salon), headers={"Authorization": ""}),
        401,
        "missing_api_key",
    )
    assert_problem(
        client.get("/v1/services", headers={"Authorization": "Bearer va_live_abc_def"}),
        401,
        "invalid_api_key",
    )
    assert_problem(
        client.get("/v1/services", headers={"Authorization": "Basic Zm9vOmJhcg=="}), 401, "invalid_api_key"
    )
    assert rows(db, IntakeJob, salon) == 0


def test_a_keys_use_is_recorded_once_a_minute_for_apikey_list(db, client, salon):
    # `voiceappoint apikey list` shows each key's last use to the minute (docs/operations.md).
    def last_used():
        db.expire_all()
        return db.scalars(select(ApiKey.last_used_at).where(ApiKey.tenant_id == salon.tenant.id)).one()

    assert last_used() is None
    before = datetime.now(UTC)
    assert client.get("/v1/services").status_code == 200
    first = last_used()
    assert first is not None and before - timedelta(seconds=5) <= first <= datetime.now(UTC)
    assert client.get("/v1/services").status_code == 200
    assert last_used() == first  # within the minute: not written again
    db.execute(
        update(ApiKey)
        .where(ApiKey.tenant_id == salon.tenant.id)
        .values(last_used_at=first - timedelta(minutes=5))
    )
    assert client.get("/v1/services").status_code == 200
    assert last_used() >= before


def test_the_keys_of_a_deleted_business_no_longer_authenticate(db, client, salon):
    # A business deleted (soft-deleted: its rows stay) keeps no access through its keys: 401, as any key
    # that is not live.
    assert client.get("/v1/services").status_code == 200
    salon.tenant.deleted_at = datetime.now(UTC)
    db.flush()
    assert_problem(client.get("/v1/services"), 401, "invalid_api_key")
    assert_problem(client.post("/v1/bookings", json=booking_body(salon)), 401, "invalid_api_key")
    assert rows(db, IntakeJob, salon) == 0


def test_a_request_reads_its_key_and_business_in_one_statement(db, client):
    """Every request of the API begins with it."""
    assert client.get("/v1/services").status_code == 200  # the first request of a key records its use
    with statements_sent(db.get_bind().engine) as sent:
        assert client.get("/v1/services").status_code == 200
    assert len([statement for statement in sent if "tenants" in statement or "api_keys" in statement]) == 1, (
        sent
    )


def test_another_tenants_rows_are_not_found(db, client, salon):
    other = build_salon(db, with_api_key=True)
    accepted = client.post("/v1/bookings", json=booking_body(salon)).json()
    with TestClient(create_app(), headers={"Authorization": f"Bearer {other.api_key}"}) as other_client:
        assert_problem(other_client.get(f"/v1/jobs/{accepted['job_id']}"), 404, "job_not_found")
        assert_problem(other_client.post("/v1/bookings", json=booking_body(salon)), 404, "service_not_found")


def test_no_answer_may_be_kept_by_a_cache(client, salon):
    # Answers hold clients' names and phones and depend on the key: a shared cache must not serve them again.
    answers = {
        "services": client.get("/v1/services"),
        "job": client.post(
            "/v1/bookings", json=booking_body(salon), headers={"Idempotency-Key": "no-store-1"}
        ),
        "wrong key": client.get("/v1/services", headers={"Authorization": "Bearer va_live_abc_def"}),
        "too large": client.post("/v1/bookings", content=b"x" * (65 * 1024)),
        "health": client.get("/health"),
    }
    assert {name: answer.headers.get("cache-control") for name, answer in answers.items()} == {
        name: "no-store" for name in answers
    }
    assert [answer.status_code for answer in answers.values()] == [200, 202, 401, 413, 200]


def test_unknown_routes_are_problems_too(client):
    assert_problem(client.get("/v1/nothing-here"), 404, "not_found")


def test_an_unreachable_database_is_a_503_not_a_500(salon, redis_prefix, monkeypatch):
    # A pool pointing at a closed port: what the API meets when PostgreSQL is down.
    monkeypatch.setattr(core_db, "_session_factory", None)
    monkeypatch.setattr(
        core_db,
        "_engine",
        core_db.make_engine("postgresql+psycopg://postgres@127.0.0.1:9/x", pool_pre_ping=False),
    )
    with TestClient(create_app(), headers={"Authorization": f"Bearer {salon.api_key}"}) as test_client:
        response = test_client.get("/v1/services")
    assert_problem(response, 503, "database_unavailable")
    assert response.headers["retry-after"] == "1"


def test_a_write_refused_by_a_read_only_database_is_a_503_not_a_500(
    committed_engine, redis_prefix, monkeypatch
):
    # During a failover the old primary, now a standby, refuses writes (25006) until the pool finds the new one.
    salon = committed_salon(committed_engine, with_api_key=True)
    standby = core_db.make_engine(
        committed_engine.url.render_as_string(hide_password=False),
        connect_args={"options": "-c default_transaction_read_only=on"},
    )
    monkeypatch.setattr(core_db, "_session_factory", None)
    monkeypatch.setattr(core_db, "_engine", standby)
    try:
        with TestClient(create_app(), headers={"Authorization": f"Bearer {salon.api_key}"}) as test_client:
            response = test_client.post("/v1/bookings", json=booking_body(salon))
    finally:
        standby.dispose()
    assert_problem(response, 503, "database_unavailable")
    assert response.headers["retry-after"] == "1"


# --- found in review: a 500 that lost its request id, a refused production setting that printed other
# secrets, an undocumented code, long request ids replaced, OpenAPI without the API key or /ready's problem


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


def test_every_code_the_core_can_give_is_documented():
    """Every DomainError raised names its code, and every code written as `code="..."` (to an error or to
    the look-ups that raise one, `uow.get(..., code=...)`) is in docs/api.md's tables."""
    error_classes = {name for name, value in vars(core_errors).items() if isinstance(value, type)}
    codes, unnamed = set(), []
    for path in [
        *(REPO / "core").rglob("*.py"),
        *(REPO / "api").rglob("*.py"),
        *(REPO / "tasks").rglob("*.py"),
    ]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            code = next((keyword.value for keyword in node.keywords if keyword.arg == "code"), None)
            if code is None and getattr(node.func, "id", None) in error_classes:
                unnamed.append(f"{path.relative_to(REPO)}:{node.lineno}")
            elif isinstance(code, ast.JoinedStr):  # f"{action}_window_passed": a cancel's or a move's
                suffix = "".join(part.value for part in code.values if isinstance(part, ast.Constant))
                codes |= {f"{action}{suffix}" for action in ("cancel", "reschedule")}
            elif isinstance(code, ast.Constant):
                codes.add(code.value)  # (a Name is a code passed on from its caller's literal)
    assert unnamed == []
    # Raised by the models for tenants and users, which no API request writes.
    codes.discard("unknown_time_zone")
    assert sorted(codes - documented_codes()) == []


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


def test_ready_names_a_full_pool_as_the_database_and_its_probes_do_not_pile_up(database_url, monkeypatch):
    """Every pooled connection busy: /ready answers within its limit that the database is unavailable, the
    broker still ok, and probes arriving meanwhile share the one check that waits for a connection instead
    of each holding a thread of their own."""
    from api.routes import health
    from core import db as core_db
    from core.config import get_settings

    monkeypatch.setenv("VOICEAPPOINT_DB_POOL_SIZE", "1")
    monkeypatch.setenv("VOICEAPPOINT_DB_MAX_OVERFLOW", "0")
    monkeypatch.setenv("VOICEAPPOINT_DB_POOL_TIMEOUT_SECONDS", "5")
    monkeypatch.setattr(health, "READY_TIMEOUT_SECONDS", 0.2)
    started = []
    database_answers = health._database.probe
    monkeypatch.setattr(health._database, "probe", lambda: started.append(1) or database_answers())
    get_settings.cache_clear()
    core_db.dispose_engine()
    held = core_db.get_engine().connect()  # the pool's only connection
    try:
        with TestClient(create_app()) as client:
            answers = [client.get("/ready") for _ in range(8)]
    finally:
        held.close()
        monkeypatch.undo()
        get_settings.cache_clear()
        core_db.dispose_engine()
    assert [answer.status_code for answer in answers] == [503] * 8
    assert answers[-1].json()["checks"] == {"database": "unavailable", "broker": "ok"}
    assert len(started) == 1


def test_every_example_in_the_openapi_document_fits_its_schema(client):
    # Client generators and mock servers take the examples as true: each must validate as its model.
    spec = client.get("/openapi.json").json()
    checked = []
    for name, schema in spec["components"]["schemas"].items():
        for example in schema.get("examples", []):
            getattr(api_schemas, name).model_validate(example)
            checked.append(name)
    assert {"BookingIn", "AvailabilityOut", "JobOut"} <= set(checked)


def test_availability_for_a_chosen_stylist_lists_only_her_slots(client, salon):
    stylist = salon.stylists[1]
    response = client.get(
        "/v1/availability",
        params={
            "service_id": str(salon.haircut.id),
            "from": DAY.isoformat(),
            "to": DAY.isoformat(),
            "resource_id": str(stylist.id),
        },
    )
    assert response.status_code == 200, response.text
    slots = response.json()["slots"]
    assert slots and all(str(stylist.id) in slot["resource_ids"] for slot in slots)


def test_an_appointment_reads_as_its_schema_says(client, salon):
    booked = book(salon, request(salon, day=DAY, clock="11:00"), now=NOW)
    response = client.get(f"/v1/appointments/{booked.appointment_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == set(api_schemas.AppointmentOut.model_fields)
    assert body["start"] == salon.at(DAY, "11:00").isoformat()
    assert body["client"]["phone"] == "+34612345678"
    assert body["service"]["name"] == "Haircut"
    assert {resource["resource_id"] for resource in body["resources"]} == {
        str(resource_id) for resource_id in booked.resource_ids
    }


def test_an_appointment_is_found_by_the_reference_read_out_over_the_phone(db, client, salon):
    booked = book(salon, request(salon, day=DAY, clock="12:00"), now=NOW)
    said = " ".join(booked.booking_reference.lower()[i : i + 3] for i in (0, 3))  # "ekh 74w"
    found = client.get("/v1/appointments", params={"reference": said})
    assert found.status_code == 200, found.text
    [appointment] = found.json()["appointments"]
    assert appointment["appointment_id"] == str(booked.appointment_id)
    assert appointment["booking_reference"] == booked.booking_reference
    # Unknown, or another business's: nothing, not an error.
    other = build_salon(db, with_api_key=True)
    theirs = book(other, request(other, day=DAY, clock="12:00", phone="612 000 111"), now=NOW)
    for reference in ("ZZZZZZ", theirs.booking_reference):
        nothing = client.get("/v1/appointments", params={"reference": reference})
        assert (nothing.status_code, nothing.json()) == (200, {"appointments": [], "links": {}})
    assert_problem(client.get("/v1/appointments"), 422, "validation_error")
    # A filter sent with a reference would be ignored: refused, as an unknown parameter is (found in review).
    filtered = client.get(
        "/v1/appointments", params={"reference": said, "status": "cancelled", "from": str(DAY)}
    )
    problem = assert_problem(filtered, 422, "validation_error")
    assert sorted(error["field"] for error in problem["errors"]) == ["from", "status"]


def imported_appointment(db, salon, booking_reference, start=None):
    """An appointment written as an importer would, straight into the table, at DAY 10:00 unless told."""
    return factories.make_appointment(
        db,
        salon.tenant,
        salon.haircut,
        factories.make_client(db, salon.tenant),
        start or salon.at(DAY, "10:00"),
        resources=[salon.stylists[0], *salon.chairs],
        booking_reference=booking_reference,
    )


def test_an_appointment_without_a_booking_reference_reads_and_so_does_its_job(db, client, salon):
    # booking_reference is nullable (the seed's schema): an imported appointment has none.
    appointment = imported_appointment(db, salon, booking_reference=None)
    read = client.get(f"/v1/appointments/{appointment.id}")
    assert (read.status_code, read.json()["booking_reference"]) == (200, None), read.text
    with core_db.UnitOfWork(salon.tenant.id) as uow:
        job, _ = intake.submit(
            uow, "cancel", {"appointment_id": str(appointment.id)}, None, NOW, lambda *_: None
        )
    with core_db.UnitOfWork(system=True) as uow:
        intake.run(uow, job.job_id, NOW)
    cancelled = client.get(f"/v1/jobs/{job.job_id}")
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "succeeded"), cancelled.text


def test_availability_of_a_business_that_cannot_book_is_a_documented_403(db, client, salon):
    salon.tenant.subscription_status = "suspended"
    db.flush()
    response = client.get(
        "/v1/availability",
        params={"service_id": str(salon.haircut.id), "from": DAY.isoformat(), "to": DAY.isoformat()},
    )
    assert_problem(response, 403, "tenant_inactive")
    documented = client.get("/openapi.json").json()["paths"]["/v1/availability"]["get"]["responses"]
    assert "403" in documented


def test_an_imported_reference_with_its_own_separators_is_found_as_written(db, client, salon):
    appointment = imported_appointment(db, salon, booking_reference="REF-1042")
    for said in ("REF-1042", "ref-1042"):
        found = client.get("/v1/appointments", params={"reference": said}).json()["appointments"]
        assert [a["appointment_id"] for a in found] == [str(appointment.id)]


def test_a_failed_jobs_error_carries_only_the_members_its_refusal_has(db, client, salon):
    response = client.post("/v1/bookings", json=booking_body(salon), headers={"Idempotency-Key": "bare"})
    job_id = response.json()["job_id"]
    with core_db.UnitOfWork(system=True) as uow:
        uow.session.execute(
            text("UPDATE intake_jobs SET status = 'failed', error = :error WHERE id = :id"),
            {
                "error": json.dumps({"code": "cancel_not_allowed", "message": "Call the business."}),
                "id": job_id,
            },
        )
        uow.commit()
    error = client.get(f"/v1/jobs/{job_id}").json()["error"]
    assert error == {"code": "cancel_not_allowed", "message": "Call the business."}


def test_appointments_are_listed_by_local_date_a_page_at_a_time(db, client, salon):
    booked = [
        book(salon, request(salon, day=DAY, clock=clock, phone=phone), now=NOW)
        for clock, phone in (("10:00", "612 000 001"), ("11:00", "612 000 002"), ("12:00", "612 000 003"))
    ]
    # Just after midnight in Madrid: the local date DAY + 1, still DAY in UTC.
    next_day = DAY + timedelta(days=1)
    after_midnight = imported_appointment(db, salon, "IMPORTED", start=salon.at(next_day, "00:30"))
    other = build_salon(db, with_api_key=True)
    book(other, request(other, day=DAY, clock="10:00"), now=NOW)

    seen, pages = [], 0
    url = f"/v1/appointments?from={DAY}&to={DAY}&limit=2"
    while url and pages < 5:
        page = client.get(url)
        assert page.status_code == 200, page.text
        seen += [a["appointment_id"] for a in page.json()["appointments"]]
        url, pages = page.json()["links"].get("next"), pages + 1
    assert seen == [str(b.appointment_id) for b in booked]  # by start, each once, only this business's
    assert pages == 2
    both_days = client.get("/v1/appointments", params={"from": str(DAY), "to": str(next_day)}).json()
    assert [a["appointment_id"] for a in both_days["appointments"]][-1] == str(after_midnight.id)
    assert both_days["links"] == {}

    cancelled = client.post(f"/v1/appointments/{booked[1].appointment_id}/cancel", json={})
    assert cancelled.status_code == 202
    with core_db.UnitOfWork(system=True) as uow:
        intake.run(uow, cancelled.json()["job_id"], NOW)
    only = client.get("/v1/appointments", params={"from": str(DAY), "to": str(DAY), "status": "cancelled"})
    assert [a["appointment_id"] for a in only.json()["appointments"]] == [str(booked[1].appointment_id)]


def test_a_listing_gives_50_a_page_by_default_and_a_next_link_relative_to_the_api(db, client, salon):
    # docs/api.md: `limit` 50 by default; links are paths (as links.self of a job is), never an address built
    # from the Host header, which behind a TLS proxy would be the internal http:// one.
    for number in range(51):
        imported_appointment(
            db, salon, f"P{number:04d}", start=salon.at(DAY + timedelta(days=number), "10:00")
        )
    first = client.get("/v1/appointments", params={"from": str(DAY), "to": str(DAY + timedelta(days=61))})
    assert first.status_code == 200, first.text
    assert len(first.json()["appointments"]) == 50
    following = first.json()["links"]["next"]
    assert following.startswith("/v1/appointments?"), following
    rest = client.get(following)
    assert [a["booking_reference"] for a in rest.json()["appointments"]] == ["P0050"]
    assert rest.json()["links"] == {}


def test_a_look_up_by_reference_takes_no_cursor_either(client, salon):
    booked = book(salon, request(salon, day=DAY, clock="12:00"), now=NOW)
    problem = assert_problem(
        client.get("/v1/appointments", params={"reference": booked.booking_reference, "after": "abc"}),
        422,
        "validation_error",
    )
    assert [error["field"] for error in problem["errors"]] == ["after"]


@pytest.mark.parametrize(
    ("query", "code", "fields"),
    [
        ("", "validation_error", ["from", "to"]),
        (f"from={DAY}", "validation_error", ["to"]),
        (f"from={DAY}&to={DAY}&after=not-a-cursor", "validation_error", ["after"]),
        (f"from={DAY}&to={DAY}&limit=101", "validation_error", ["limit"]),
        (f"from={DAY}&to={DAY}&status=booked", "validation_error", ["status.0"]),
        (f"from={DAY}&to={DAY + timedelta(days=62)}", "range_too_long", None),
        (f"from={DAY}&to={DAY - timedelta(days=1)}", "invalid_range", None),
    ],
)
def test_a_listing_without_its_dates_or_with_a_bad_page_is_a_clear_422(client, query, code, fields):
    problem = assert_problem(client.get(f"/v1/appointments?{query}"), 422, code)
    if fields is not None:
        assert [error["field"] for error in problem["errors"]] == fields


def test_a_page_of_appointments_costs_as_many_statements_for_eight_as_for_one(engine, client, salon):
    def statements_of_a_listing() -> int:
        with statements_sent(engine) as sent:
            listed = client.get("/v1/appointments", params={"from": str(DAY), "to": str(DAY)})
        assert listed.status_code == 200, listed.text
        return len(sent)

    clocks = ("09:00", "10:00", "11:00", "12:00", "13:00", "14:00", "15:00", "16:00")
    book(salon, request(salon, day=DAY, clock=clocks[0], phone="612 000 100"), now=NOW)
    statements_of_a_listing()  # the first request of a key records its use: one statement more
    for_one = statements_of_a_listing()
    for number, clock in enumerate(clocks[1:], start=1):
        book(salon, request(salon, day=DAY, clock=clock, phone=f"612 000 1{number:02d}"), now=NOW)
    # The service, client and allocations of a page are read together, not once per appointment.
    assert statements_of_a_listing() == for_one


@pytest.mark.parametrize(("zone", "day"), [("Europe/Madrid", "9999-12-31"), ("Asia/Tokyo", "0001-01-01")])
def test_a_listing_at_the_ends_of_the_calendar_is_a_422_not_a_500(db, redis_prefix, zone, day):
    # 9999-12-31 has no next day; 0001-01-01 in Tokyo begins before the year 1 in UTC.
    salon = build_salon(db, with_api_key=True, timezone=zone)
    with TestClient(create_app(), headers={"Authorization": f"Bearer {salon.api_key}"}) as in_zone:
        assert_problem(in_zone.get("/v1/appointments", params={"from": day, "to": day}), 422, "invalid_range")


def test_the_business_endpoint_answers_for_the_keys_own_business(db, client, salon):
    salon.tenant.phone, salon.tenant.city, salon.tenant.postal_code = "+34912345678", "Madrid", "28013"
    salon.tenant.address_line1 = "Calle Gran Vía 1"
    salon.tenant.settings = {"slot_step_minutes": 30}
    other = build_salon(db, with_api_key=True, timezone="America/New_York")
    db.flush()
    answer = client.get("/v1/business")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "name": salon.tenant.name,
        "business_type": salon.tenant.business_type,
        "phone": "+34912345678",
        "email": salon.tenant.email,
        "website_url": None,
        "address": "Calle Gran Vía 1, 28013 Madrid",
        "timezone": "Europe/Madrid",
        "locale": salon.tenant.locale,
        "currency": salon.tenant.currency,
        "slot_step_minutes": 30,
    }
    with TestClient(create_app(), headers={"Authorization": f"Bearer {other.api_key}"}) as theirs:
        assert theirs.get("/v1/business").json()["timezone"] == "America/New_York"
    assert client.get("/v1/business", headers={"Authorization": "Bearer va_live_nope"}).status_code == 401


def test_a_business_without_an_address_answers_null_not_an_empty_line(db, client, salon):
    salon.tenant.address_line1 = salon.tenant.address_line2 = salon.tenant.postal_code = salon.tenant.city = (
        None
    )
    db.flush()
    answer = client.get("/v1/business")
    assert answer.status_code == 200, answer.text
    assert answer.json()["address"] is None


def test_each_request_waits_for_a_thread_twice_at_most(client, salon, monkeypatch):
    # In a burst every wait for one of the process's threads is a turn at the back of one queue: with four
    # per request (sync dependencies, the route, its response's validation), every request of a burst ended
    # near its end. The key's look-up and the request's own work are the two left.
    import anyio.to_thread

    booked = book(salon, request(salon, day=DAY, clock="11:00"), now=NOW)
    job = client.post("/v1/bookings", json=booking_body(salon), headers={"Idempotency-Key": "k-hops"}).json()
    waits = []
    run_sync = anyio.to_thread.run_sync

    async def counted(function, *args, **kwargs):
        waits.append(function)
        return await run_sync(function, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    requests = [
        ("GET", "/v1/business"),
        ("GET", "/v1/services"),
        ("GET", f"/v1/availability?service_id={salon.haircut.id}&from={DAY}&to={DAY}"),
        ("GET", f"/v1/appointments/{booked.appointment_id}"),
        ("GET", f"/v1/appointments?from={DAY}&to={DAY}"),
        ("GET", f"/v1/appointments?reference={booked.booking_reference}"),
        ("GET", f"/v1/jobs/{job['job_id']}"),
        ("POST", "/v1/bookings"),
    ]
    for method, path in requests:
        waits.clear()
        body = booking_body(salon, start=salon.at(DAY, "14:00").isoformat()) if method == "POST" else None
        response = client.request(method, path, json=body, headers={"Idempotency-Key": f"k-{path}"})
        assert response.status_code in (200, 202), (path, response.text)
        assert len(waits) == 2, (path, waits)


@pytest.mark.parametrize(("method", "path"), [("POST", "/health"), ("DELETE", "/ready")])
def test_a_405_on_a_probe_names_both_its_methods(client, method, path):
    # Each probe had a GET and a HEAD route, and Starlette names the methods of the first one (found in review).
    response = client.request(method, path)
    assert_problem(response, 405, "method_not_allowed")
    assert {name.strip() for name in response.headers["allow"].split(",")} == {"GET", "HEAD"}
    assert client.head(path).status_code in (200, 503)


def test_an_empty_first_name_is_invalid_name_as_a_blank_one_is(db, client, salon):
    # The schema's minimum length answered "" with validation_error, and "  " got invalid_name.
    for first_name in ("", "  "):
        body = booking_body(salon, client={"first_name": first_name, "phone": "612 345 678"})
        problem = assert_problem(client.post("/v1/bookings", json=body), 422, "invalid_name")
        assert problem["field"] == "client.first_name"
    assert rows(db, IntakeJob, salon) == 0


@pytest.mark.parametrize("written", [int, str], ids=["number", "digits"])
def test_a_start_written_as_seconds_since_1970_is_refused(db, client, salon, written):
    # Pydantic read it as a UTC instant the caller never wrote in ISO 8601 (found in review).
    seconds = int(salon.at(DAY, "10:00").timestamp())
    response = client.post("/v1/bookings", json=booking_body(salon, start=written(seconds)))
    problem = assert_problem(response, 422, "validation_error")
    assert [error["field"] for error in problem["errors"]] == ["start"]
    assert rows(db, IntakeJob, salon) == 0


@pytest.mark.parametrize("path", ["/v1/availability", "/v1/appointments"])
def test_local_dates_written_as_seconds_since_1970_are_refused(client, salon, path):
    seconds = str(int(datetime.combine(DAY, datetime.min.time(), tzinfo=UTC).timestamp()))
    params = {"from": seconds, "to": seconds}
    if path == "/v1/availability":
        params["service_id"] = str(salon.haircut.id)
    problem = assert_problem(client.get(path, params=params), 422, "validation_error")
    assert [error["field"] for error in problem["errors"]] == ["from", "to"]


def test_an_unexpected_database_error_is_a_500_with_the_request_id_in_the_answer_and_the_log(
    client, monkeypatch
):
    # (review) on_internal_database_error re-raises an InternalError that is not a read-only refusal: it must
    # still be answered by RequestId, logged once with the request's id, not escape as a bare 500.
    stream = io.StringIO()
    app_logging.configure("INFO", json=True, stream=stream)

    def broken(uow):
        raise sa_exc.InternalError("SELECT 1", {}, psycopg.errors.InternalError_("internal"))

    monkeypatch.setattr(catalog_routes.catalog, "list_services", broken)
    response = client.get("/v1/services", headers={"X-Request-ID": "req-500-internal"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "internal_error"
    assert response.headers.get("x-request-id") == "req-500-internal"
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    error_lines = [line for line in lines if line["message"].startswith("unhandled error")]
    assert [line.get("request_id") for line in error_lines] == ["req-500-internal"], lines


def test_a_database_error_that_a_retry_would_meet_again_is_a_500_not_a_503(client, salon, monkeypatch):
    # PostgreSQL reports a program limit exceeded (54000) as an OperationalError, as it does a lost connection;
    # a 503 would tell the client to retry a request that fails the same way each time.
    def exceeds_a_limit(uow):
        uow.session.execute(text("SELECT repeat('x', 1073741824)"))  # requested length too large
        return []

    monkeypatch.setattr(catalog_routes.catalog, "list_services", exceeds_a_limit)
    assert_problem(client.get("/v1/services"), 500, "internal_error")


def test_a_write_in_a_read_only_unit_of_work_is_a_bug_not_an_unavailable_database(client, salon, monkeypatch):
    # (review) A reader refused a write (25006) by its own read-only transaction, the guard core.db describes,
    # is a bug in our code: it must be a 500 with its traceback logged, not a 503 telling the client to retry.
    def writes_while_reading(uow):
        uow.session.execute(text("UPDATE services SET name = name"))
        return []

    monkeypatch.setattr(catalog_routes.catalog, "list_services", writes_while_reading)
    assert_problem(client.get("/v1/services"), 500, "internal_error")
