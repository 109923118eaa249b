"""What one business (A) could try against another (B), through SQL in its own context, crafted jobs and
the API: B's rows cannot be changed, deleted or copied, B's ids act on nothing and answer exactly as ids
that do not exist, and no malformed key gets past the door."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from api.app import create_app
from core.db import UnitOfWork
from core.models import Appointment, AppointmentResource, IntakeJob
from tests import factories
from tests.integration.test_tenant_isolation import TENANT_ROWS, populate
from tests.scenarios import DAY, NOW, book, build_salon, request, run_job

INSUFFICIENT_PRIVILEGE = "42501"
# Columns a clone of B's row must not repeat, or a unique index would answer before the policy.
UNIQUE_COLUMNS = (
    "key_prefix", "vapi_call_id", "dedupe_key", "booking_reference", "slug", "email", "phone",
    "idempotency_key", "token_jti",
)  # fmt: skip
GENERATED_COLUMNS = {"appointment_resources": ("occupied_until",)}


def _b_rows_sql(table: str) -> str:
    if table == "notification_templates":  # B's own, not the shared system ones
        return "SELECT id FROM notification_templates WHERE tenant_id = :tenant"
    return TENANT_ROWS[table]


@pytest.mark.parametrize("table", sorted(TENANT_ROWS))
def test_a_tenant_can_neither_change_nor_delete_nor_clone_another_tenants_row(db, table):
    factories.make_plan(db)
    a, b = populate(db), populate(db)
    b_id = db.scalars(text(_b_rows_sql(table)), {"tenant": b.tenant.id}).first()
    row = db.execute(text(f"SELECT to_jsonb(t) FROM {table} t WHERE id = :id"), {"id": b_id}).scalar_one()
    clone = {**row, "id": str(uuid.uuid4())}
    for column in UNIQUE_COLUMNS:
        if clone.get(column) is not None:
            clone[column] = factories.unique("z")
    for column in GENERATED_COLUMNS.get(table, ()):
        clone.pop(column)
    columns = ", ".join(f'"{c}"' for c in clone)
    some = [c for c in row if c != "id"][:3]
    with UnitOfWork(a.tenant.id) as uow:
        session = uow.session
        for statement in (
            f"UPDATE {table} SET {', '.join(f'{c} = {c}' for c in some)} WHERE id = :id",
            f"DELETE FROM {table} WHERE id = :id",
        ):
            try:
                with session.begin_nested():
                    assert session.execute(text(statement), {"id": b_id}).rowcount == 0, statement
            except DBAPIError as refused:  # audit_logs: no UPDATE or DELETE at all
                assert refused.orig.sqlstate == INSUFFICIENT_PRIVILEGE
        with pytest.raises(DBAPIError) as refused, session.begin_nested():
            session.execute(
                text(
                    f"INSERT INTO {table} ({columns}) SELECT {columns}"
                    f" FROM jsonb_populate_record(NULL::{table}, CAST(:row AS jsonb))"
                ),
                {"row": json.dumps(clone)},
            )
        assert refused.value.orig.sqlstate == INSUFFICIENT_PRIVILEGE, refused.value
    assert db.execute(text(f"SELECT count(*) FROM {table} WHERE id = :id"), {"id": b_id}).scalar() == 1


def test_jobs_recorded_for_a_with_bs_ids_fail_and_leave_b_untouched(db):
    a, b = build_salon(db), build_salon(db)
    b_booking = book(b, request(b))
    later = b.at(DAY, "15:00").isoformat()
    client = {"first_name": "X", "phone": "+34612345670"}

    def job(kind, payload):
        row = IntakeJob(
            id=uuid.uuid4(), tenant_id=a.tenant.id, kind=kind, request_hash="0" * 64, payload=payload,
            status="queued", created_at=NOW, enqueued_at=NOW,
        )  # fmt: skip
        db.add(row)
        db.flush()
        return row.id

    crafted = {
        "service_not_found": job(
            "booking", {"service_id": str(b.haircut.id), "start": later, "client": client}
        ),
        "resource_not_eligible": job(
            "booking",
            {
                "service_id": str(a.haircut.id),
                "start": later,
                "client": client,
                "resource_ids": [str(b.stylists[0].id)],
            },
        ),  # fmt: skip
        "appointment_not_found": job(
            "reschedule", {"appointment_id": str(b_booking.appointment_id), "start": later}
        ),
    }
    cancel = job("cancel", {"appointment_id": str(b_booking.appointment_id), "reason": "x"})
    for code, job_id in crafted.items():
        outcome = run_job(job_id)
        assert (outcome["status"], outcome["error"]["code"]) == ("failed", code)
    assert run_job(cancel)["error"]["code"] == "appointment_not_found"
    db.expire_all()
    appointment = db.get(Appointment, b_booking.appointment_id)
    assert appointment.status == "confirmed"
    active = select(AppointmentResource.active).where(AppointmentResource.appointment_id == appointment.id)
    assert all(db.scalars(active))


def test_bs_ids_answer_exactly_as_ids_that_do_not_exist(db, redis_prefix):
    now = datetime.now(UTC)
    day = (now + timedelta(days=2)).date()
    a, b = build_salon(db, with_api_key=True), build_salon(db, with_api_key=True)
    b_booking = book(b, request(b, day=day), now=now)
    missing = uuid.uuid4()
    b_job = IntakeJob(tenant_id=b.tenant.id, kind="booking", request_hash="0" * 64, payload={})
    db.add(b_job)
    db.flush()

    def answers(client, service_id, resource_id, appointment_id, reference, job_id):
        booking = {
            "service_id": str(a.haircut.id),
            "start": a.at(day, "10:00").isoformat(),
            "client": {"first_name": "L", "phone": "612 345 678"},
            "resource_ids": [str(resource_id)],
        }
        dates = {"from": str(day), "to": str(day)}
        responses = [
            client.get("/v1/availability", params={"service_id": str(service_id), **dates}),
            client.get("/v1/availability", params={"service_id": str(a.haircut.id), "resource_id": str(resource_id), **dates}),
            client.post("/v1/bookings", json=booking),
            client.get(f"/v1/appointments/{appointment_id}"),
            client.post(f"/v1/appointments/{appointment_id}/cancel"),
            client.get("/v1/appointments", params={"reference": reference}),
            client.get(f"/v1/jobs/{job_id}"),
        ]  # fmt: skip
        masked = [str(x) for x in (service_id, resource_id, appointment_id, job_id)]
        out = []
        for response in responses:
            body = response.text
            for value in masked:
                body = body.replace(value, "<id>")
            out.append((response.status_code, response.headers["content-type"], body))
        return out

    with TestClient(create_app(), headers={"Authorization": f"Bearer {a.api_key}"}) as client:
        of_b = answers(
            client,
            b.haircut.id,
            b.stylists[0].id,
            b_booking.appointment_id,
            b_booking.booking_reference,
            b_job.id,
        )
        of_nobody = answers(client, missing, missing, missing, "ZZZZZZ", missing)
    assert of_b == of_nobody
    assert [status for status, _, _ in of_b] == [404, 422, 422, 404, 404, 200, 404]


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer ", "Bearer va_live_", "Bearer va_live__", "Bearer va_live_" + "a" * 5000 + "_b",
     "Bearer va_live_%_x", "Token {key}", "{key}", "Bearer\t{key}", "Bearer {key} x", "Bearer {upper}",
     "Bearer {key_but_last}"],
)  # fmt: skip
def test_a_malformed_authorization_header_is_a_401_problem(db, redis_prefix, header):
    salon = build_salon(db, with_api_key=True)
    key = salon.api_key
    value = header.format(key=key, upper=key.upper(), key_but_last=key[:-1])
    with TestClient(create_app()) as client:
        response = client.get("/v1/business", headers={"Authorization": value})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] in ("missing_api_key", "invalid_api_key")
