"""Operator paths found wrong in review: the demo seed on a database without plans, a missing
application role told in one line, a DATABASE_URL whose host is libpq's ?host= parameter, and two
seeds at once."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import make_url, text
from sqlalchemy.orm import sessionmaker

from core import seed
from core.db import UnitOfWork, make_engine
from ops import services
from ops.database import alembic_config, create_database_if_missing, drop_database
from ops.services import ServiceError, ensure_postgres

REPO = Path(__file__).resolve().parents[2]


def test_seed_demo_on_its_own_seeds_the_plans_it_needs(db):
    assert (
        db.execute(text("SELECT count(*) FROM subscription_plans WHERE name = 'Professional'")).scalar() == 0
    )
    with UnitOfWork(system=True) as uow:
        seed.seed_demo(uow)
        uow.commit()


def test_seed_with_an_unusable_app_role_is_one_line_and_exit_2(database_url):
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "VOICEAPPOINT_DB_APP_ROLE": "va_no_such_role",
    }
    done = subprocess.run(
        [sys.executable, "-c", "from ops.cli import main; main()", "seed"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr[-600:]
    assert done.returncode == 2


@pytest.mark.parametrize(
    "url",
    [
        # a remote server given as libpq's host parameter (SQLAlchemy's documented form for psycopg)
        "postgresql+psycopg://app@/voiceappoint?host=db.example.invalid",
        # the shared server itself, which answers, given the same way
        "postgresql+psycopg://postgres@/voiceappoint?host=127.0.0.1",
    ],
)
def test_a_url_with_a_network_host_in_the_query_is_never_replaced(url, monkeypatch, tmp_path):
    started = []

    def fake_start(data_dir):
        started.append(data_dir)
        raise ServiceError("private server would be started here")

    monkeypatch.setattr(services, "_start_private_postgres", fake_start)
    with contextlib.suppress(ServiceError):  # the unreachable host: refused, not replaced
        ensure_postgres(url, tmp_path / "data")
    assert not started, f"{url} was replaced by a private PostgreSQL"


def test_two_seeds_at_once_insert_each_plan_and_template_once(database_url):
    # On a database of its own: the plans must be missing when both start, so that both look for them.
    url = make_url(database_url).set(database=f"va_seed_race_{uuid.uuid4().hex[:12]}")
    url = url.render_as_string(hide_password=False)
    create_database_if_missing(url)
    engine = make_engine(url)
    try:
        command.upgrade(alembic_config(url), "head")
        both_started = threading.Barrier(2)

        def run_seed():
            with UnitOfWork(system=True, factory=sessionmaker(engine, expire_on_commit=False)) as uow:
                both_started.wait()
                seed.seed_all(uow, demo=True)
                uow.commit()

        with ThreadPoolExecutor(2) as pool:
            for seeding in [pool.submit(run_seed) for _ in range(2)]:
                seeding.result(timeout=60)
        with engine.connect() as connection:
            connection.execute(text("SET LOCAL app.system = 'on'"))
            plans = connection.execute(
                text("SELECT count(*), count(DISTINCT name) FROM subscription_plans")
            ).one()
            templates = connection.execute(
                text("SELECT count(*) FROM notification_templates WHERE tenant_id IS NULL")
            ).scalar()
        assert tuple(plans) == (3, 3)
        assert templates == 32
    finally:
        engine.dispose()
        drop_database(url)
