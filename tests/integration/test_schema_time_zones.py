"""The time zones of tenants and users (revision 018, docs/schema.md): a zone PostgreSQL cannot convert
with is refused, so the reporting views keep working for every tenant; the models take only a zone
Python knows by that name; and the upgrade stops on a stored zone it cannot convert with, naming it."""

from __future__ import annotations

import uuid

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from core.errors import InvalidRequest
from core.models import Tenant, User
from ops.database import alembic_config, create_database_if_missing, drop_database
from tests import factories


@pytest.mark.parametrize(
    ("table", "insert"),
    [
        ("tenants", "INSERT INTO tenants (slug, name, business_type, timezone) VALUES ('tz-probe', 'T', 'salon', :z)"),
        ("users", "INSERT INTO users (email, password_hash, first_name, last_name, timezone)"
                  " VALUES ('tz@example.com', 'x', 'T', 'U', :z)"),
    ],
)  # fmt: skip
def test_a_time_zone_postgresql_does_not_know_is_refused(db, table, insert):
    with pytest.raises(DBAPIError) as caught, db.begin_nested():
        db.execute(text(insert), {"z": "Europe/Madird"})
    assert caught.value.orig.sqlstate == "23514"
    assert caught.value.orig.diag.constraint_name == f"{table}_timezone_known"
    assert 'time zone "Europe/Madird" is not known' in str(caught.value.orig)


def test_a_tenant_cannot_be_moved_to_an_unknown_time_zone_and_the_views_keep_working(db):
    tenant = factories.make_tenant(db)
    with pytest.raises(DBAPIError) as caught, db.begin_nested():
        db.execute(text("UPDATE tenants SET timezone = 'Mars/Olympus' WHERE id = :id"), {"id": tenant.id})
    assert caught.value.orig.sqlstate == "23514"
    # One misspelt zone used to make these fail for every tenant.
    assert (
        db.scalar(text("SELECT count(*) FROM tenant_dashboard WHERE tenant_id = :id"), {"id": tenant.id}) == 1
    )
    db.execute(text("SELECT * FROM appointment_stats")).all()


def test_a_user_cannot_be_moved_to_an_unknown_time_zone(db):
    user = factories.make_user(db)
    with pytest.raises(DBAPIError) as caught, db.begin_nested():
        db.execute(text("UPDATE users SET timezone = 'Mars/Olympus' WHERE id = :id"), {"id": user.id})
    assert caught.value.orig.diag.constraint_name == "users_timezone_known"


@pytest.mark.parametrize("zone", ["Europe/Madird", "europe/madrid", "UTC+3", "", "../etc/passwd", "Europe"])
def test_the_models_take_only_a_zone_python_knows_by_that_name(zone):
    # PostgreSQL converts with "europe/madrid" and "UTC+3" too; the core's zoneinfo does not.
    for model in (Tenant, User):
        with pytest.raises(InvalidRequest) as caught:
            model(timezone=zone)
        assert caught.value.code == "unknown_time_zone"
    assert Tenant(timezone="America/New_York").timezone == "America/New_York"


def test_the_upgrade_stops_on_a_stored_zone_it_cannot_convert_with_and_names_it(database_url):
    url = make_url(database_url).set(database=f"va_rev018_{uuid.uuid4().hex[:12]}").render_as_string(False)
    create_database_if_missing(url)
    try:
        config = alembic_config(url)
        command.upgrade(config, "017")
        engine = create_engine(url)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO tenants (slug, name, business_type, timezone)"
                    " VALUES ('bad-zone', 'T', 'salon', 'Europe/Madird'), ('good-zone', 'T', 'salon', 'UTC')"
                )
            )
        engine.dispose()
        with pytest.raises(
            DBAPIError, match=r"tenants: unknown time zones Europe/Madird; correct them first"
        ):
            command.upgrade(config, "018")
    finally:
        drop_database(url)
