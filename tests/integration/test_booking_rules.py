"""Booking rules on the real database, through core.booking and the jobs that run it, for the salon with an
API key and Spanish email templates: the plan's limit on a reschedule, the one pending confirmation and
the current resources of a changed appointment, and the cancellation of a retired service's appointment."""

from __future__ import annotations

import uuid
from datetime import date

import pytest
from sqlalchemy import select

from core import booking, intake
from core.db import UnitOfWork
from core.errors import LimitReached
from core.models import Appointment, Client, Notification
from tests import factories
from tests.scenarios import DAY, NOW, book, build_emailing_salon, request, rows, run_job, submit_job


@pytest.fixture
def salon(db):
    return build_emailing_salon(db)


def test_the_review_fixture_builds_a_bookable_salon(db, salon):
    # Guards the fixtures above: the tests here must fail for their stated reason, not a broken setup.
    booked = book(salon, request(salon))
    assert booked.appointment_id and rows(db, Client, salon) == 1


def test_a_reschedule_into_a_full_month_is_refused(db, salon):
    plan = factories.make_plan(db, max_appointments_per_month=1)
    factories.make_subscription(db, salon.tenant, plan, status="active")
    march = book(salon, request(salon))
    book(salon, request(salon, date(2027, 4, 1), phone="612 345 679"))  # April is now full
    with pytest.raises(LimitReached), UnitOfWork(salon.tenant.id) as uow:
        booking.reschedule(uow, march.appointment_id, salon.at(date(2027, 4, 2), "10:00"), NOW)
        uow.commit()


def test_a_cancel_after_a_reschedule_reports_the_current_resources_only(db, salon):
    first, second = salon.stylists
    booked = book(salon, request(salon, resource_ids=[first.id]))
    with UnitOfWork(salon.tenant.id) as uow:
        booking.reschedule(uow, booked.appointment_id, salon.at(DAY, "12:00"), NOW, (second.id,))
        cancelled = booking.cancel(uow, booked.appointment_id, None, NOW)
        uow.commit()
    assert set(cancelled.resource_ids) == {second.id, salon.chairs[0].id}


def test_a_reschedule_leaves_one_pending_confirmation(db, salon):
    booked = book(salon, request(salon))
    with UnitOfWork(salon.tenant.id) as uow:
        booking.reschedule(uow, booked.appointment_id, salon.at(DAY, "12:00"), NOW)
        uow.commit()
    pending = db.scalars(
        select(Notification).where(
            Notification.appointment_id == booked.appointment_id,
            Notification.notification_type == "appointment_confirmed",
            Notification.status == "pending",
        )
    ).all()
    assert len(pending) == 1, [n.body for n in pending]


def test_an_appointment_of_a_service_retired_since_can_still_be_cancelled(db, salon):
    booked = run_job(submit_job(salon).job_id)
    assert booked["status"] == "succeeded", booked
    salon.haircut.deleted_at = NOW  # the business retires the service; its appointments remain
    db.flush()
    with UnitOfWork(salon.tenant.id) as uow:
        job, _ = intake.submit(
            uow, "cancel", {"appointment_id": booked["result"]["appointment_id"]}, None, NOW, lambda *_: None
        )
    outcome = run_job(job.job_id)
    assert outcome["status"] == "succeeded", outcome.get("error")
    appointment = db.get(Appointment, uuid.UUID(booked["result"]["appointment_id"]))
    db.refresh(appointment)
    assert appointment.status == "cancelled"


def test_cancelling_a_cancelled_appointment_answers_it_as_it_is(db, salon):
    # A client's retry after a timeout, without its Idempotency-Key: the outcome asked for, not a 409.
    booked = book(salon, request(salon))
    for reason in ("Cannot come", "Retried"):
        with UnitOfWork(salon.tenant.id) as uow:
            cancelled = booking.cancel(uow, booked.appointment_id, reason, NOW)
            uow.commit()
        assert cancelled.status == "cancelled"
    appointment = db.get(Appointment, booked.appointment_id)
    assert appointment.cancellation_reason == "Cannot come"
    told = db.scalars(
        select(Notification).where(
            Notification.appointment_id == booked.appointment_id,
            Notification.notification_type == "appointment_cancelled",
        )
    ).all()
    assert len(told) == len({n.channel for n in told}) >= 1
