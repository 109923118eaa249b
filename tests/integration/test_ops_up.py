"""`voiceappoint up` keeps one demo API key for as long as it still authenticates, and its banner shows a booking
that can succeed."""

from __future__ import annotations

import stat
from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from core import booking, seed
from core.booking import BookingRequest
from core.clients import ClientDetails
from core.db import UnitOfWork
from core.models import ApiKey
from ops.cli import _demo_api_key, _demo_booking_start
from tests.factories import make_tenant


@pytest.fixture
def tenant(committed_engine):
    # A tenant of the test's own: the seeded demo tenant belongs to tests/integration/test_seed.py.
    with Session(committed_engine, expire_on_commit=False) as session:
        tenant = make_tenant(session)
        session.commit()
    return tenant


def _key_rows(engine, tenant) -> list[ApiKey]:
    with Session(engine) as session:
        return list(session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.id)))


def _prefix(key: str) -> str:
    return key.split("_")[2]


def test_the_demo_key_is_reused_until_it_no_longer_authenticates(committed_engine, tenant, tmp_path):
    key_file = tmp_path / "data" / "demo-api-key"

    first = _demo_api_key(key_file, tenant.slug)
    assert _demo_api_key(key_file, tenant.slug) == first
    assert key_file.read_text() == f"{first}\n"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [row.key_prefix for row in _key_rows(committed_engine, tenant)] == [_prefix(first)]

    with Session(committed_engine) as session:
        session.execute(update(ApiKey).where(ApiKey.tenant_id == tenant.id).values(revoked_at=func.now()))
        session.commit()
    second = _demo_api_key(key_file, tenant.slug)
    assert second != first
    assert key_file.read_text() == f"{second}\n"
    live = [row.key_prefix for row in _key_rows(committed_engine, tenant) if row.revoked_at is None]
    assert live == [_prefix(second)]

    # As after the database was recreated: the file names a key no row knows.
    with Session(committed_engine) as session:
        session.execute(delete(ApiKey).where(ApiKey.tenant_id == tenant.id))
        session.commit()
    third = _demo_api_key(key_file, tenant.slug)
    assert third not in (first, second)
    assert key_file.read_text() == f"{third}\n"
    assert [row.key_prefix for row in _key_rows(committed_engine, tenant)] == [_prefix(third)]


def test_the_banners_booking_is_free_however_many_runs_booked_theirs(db):
    # The banner booked the next weekday at 10:00 on every run, and the demo's database outlives runs: once that
    # hour's stylists were taken, the booking the banner showed answered slot_taken (found in review).
    with UnitOfWork(system=True) as uow:  # as `up` seeds
        seed.seed_all(uow, demo=True)
        uow.commit()
    now = datetime.now(UTC)
    for run in range(4):
        start = _demo_booking_start(now)
        details = ClientDetails(first_name="Ana", phone=f"+3460011122{run}")
        with UnitOfWork(seed.DEMO_TENANT_ID) as uow:
            booking.book(uow, BookingRequest(seed.DEMO_SERVICE_IDS["haircut"], start, details), now)
            uow.commit()
